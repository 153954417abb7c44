"""The command-line flags the training tools share, one spelling for all four.

tools/pretrain_net.py, tools/train_cls.py, tools/train_net.py (detectron2) and
tools/train_seg.py (mmseg) take:

  --output-dir DIR        where the run writes its checkpoints, logs and results.json
  --max-iters N           how many optimizer steps / iterations it runs, ending with a checkpoint
  --resume [auto|PATH]    continue a run: auto (the flag alone) = the newest checkpoint of the
                          output folder; PATH = that checkpoint
  --eval-only             evaluate a trained model and write results (not pretraining, which
                          has no evaluation of its own: tools/evaluate.py measures its checkpoints)

Each tool writes them into its own config keys and says which in its --help.
Former spellings (train_net's --max-iter, train_seg's --work-dir and --iters)
stay accepted, hidden from the help, so that existing scripts keep running.

And every tool ends the same way (:func:`run_tool`): a user error (``pretrain.errors``) is one
``error: ...`` line on stderr and exit status 2, as argparse does for a bad flag; a bug keeps its traceback.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

from .errors import UserError

__all__ = ["USER_ERROR_EXIT", "add_run_args", "is_key_value", "non_negative_int", "positive_float", "positive_int",
           "resume_override",
           "run_overrides", "run_tool"]

USER_ERROR_EXIT = 2  # argparse's status for a bad command line; the same for every input a user can fix


def run_tool(main: Callable, argv: Optional[Sequence[str]] = None):
    """``main(argv)`` as a tool's entry point: a :class:`pretrain.errors.UserError` (a disk full included)
    ends it with ``error: <message>`` on stderr and :data:`USER_ERROR_EXIT`, any other exception keeps
    its traceback (a bug), Ctrl-C ends it quietly with 130."""
    try:
        return main(argv)
    except UserError as e:
        message = " ".join(str(e).split("\n")).strip() or type(e).__name__
        print(f"error: {message}", file=sys.stderr, flush=True)
        raise SystemExit(USER_ERROR_EXIT) from None
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr, flush=True)
        raise SystemExit(130) from None


def positive_int(text: str) -> int:
    """An argparse ``type`` for counts (iterations, epochs, GPUs, seeds): checked where it is parsed."""
    return _checked_number(text, int, "a positive integer", lambda v: v >= 1)


def non_negative_int(text: str) -> int:
    """An argparse ``type`` for a count that may be 0 (0: off, or the config as it is)."""
    return _checked_number(text, int, "a non-negative integer", lambda v: v >= 0)


def positive_float(text: str) -> float:
    """An argparse ``type`` for a rate or a temperature: a finite number > 0."""
    return _checked_number(text, float, "a positive number", lambda v: v > 0 and math.isfinite(v))


def _checked_number(text: str, cast, expected: str, ok):
    """``cast(text)``, refused with "expected <expected>" when it does not parse or ``ok`` rejects it."""
    try:
        value = cast(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if not ok(value):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {value}")
    return value


def add_run_args(parser: argparse.ArgumentParser, *, output_dir: str, max_iters: str, resume: str,
                 eval_only: Optional[str] = None, output_dir_aliases: Sequence[str] = (),
                 max_iters_aliases: Sequence[str] = ()) -> None:
    """Add the shared flags to a tool's parser; the strings are their help, naming the tool's config
    keys. A tool without ``eval_only`` has no --eval-only. The aliases are the tool's former spellings."""
    parser.add_argument("--output-dir", metavar="DIR", help=output_dir)
    parser.add_argument("--max-iters", type=positive_int, metavar="N", help=max_iters)
    parser.add_argument("--resume", nargs="?", const="auto", metavar="auto|PATH", help=resume)
    if eval_only:
        parser.add_argument("--eval-only", action="store_true", help=eval_only)
    for flag in output_dir_aliases:
        parser.add_argument(flag, dest="output_dir", help=argparse.SUPPRESS)
    for flag in max_iters_aliases:
        parser.add_argument(flag, dest="max_iters", type=positive_int, help=argparse.SUPPRESS)


def is_key_value(value: str) -> bool:
    return "=" in value


def resume_override(resume: Optional[str], is_override: Callable[[str], bool] = is_key_value
                    ) -> Tuple[Optional[str], List[str]]:
    """``--resume a.b=c``: the flag's optional value took a config override for a path. Returns
    ('auto', [the override]) then, else (resume, []); an existing file is always a path."""
    if resume and resume != "auto" and is_override(resume) and not Path(resume).exists():
        return "auto", [resume]
    return resume, []


def run_overrides(args: argparse.Namespace) -> List[str]:
    """--output-dir / --max-iters as ``train.output_dir`` / ``train.max_iters`` overrides (pretraining and
    classification configs, whose ``train`` sections share these keys)."""
    return ([f"train.output_dir={args.output_dir}"] if args.output_dir is not None else []) + (
        [f"train.max_iters={args.max_iters}"] if args.max_iters is not None else [])
