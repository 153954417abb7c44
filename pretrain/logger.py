"""Run logs: a JSON-lines file (one record per logged step), TensorBoard scalars, and progress displays.

Only the main process writes; other ranks get a logger that does nothing.
"""
from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Callable, Dict, Optional


def setup_logging(output_dir: Optional[str] = None, is_main: bool = True, name: str = "log.txt"):
    """Console (main process) and ``output_dir/log.txt`` logging for the stdlib logger."""
    root = logging.getLogger()
    root.setLevel(logging.INFO if is_main else logging.WARNING)
    fmt = logging.Formatter("[%(asctime)s %(name)s] %(levelname)s %(message)s", "%m/%d %H:%M:%S")
    for h in list(root.handlers):
        if getattr(h, "_sslkit", False):
            root.removeHandler(h)
    handlers = [logging.StreamHandler(sys.stderr)]
    if output_dir and is_main:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(Path(output_dir) / name))
    for h in handlers:
        h.setFormatter(fmt)
        h._sslkit = True
        root.addHandler(h)


class MetricLogger:
    """Appends ``{"step": ..., **scalars}`` to ``metrics.jsonl`` and mirrors it to TensorBoard."""

    def __init__(self, output_dir: Optional[str], enabled: bool = True, tensorboard: bool = True):
        self.enabled = enabled and output_dir is not None
        self._tb = None
        if not self.enabled:
            return
        self.dir = Path(output_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._file = open(self.dir / "metrics.jsonl", "a", buffering=1)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.dir / "tb"))
            except ImportError:
                logging.getLogger(__name__).warning("tensorboard is not installed: no TensorBoard scalars")

    def log(self, step: int, prefix: str = "train", **scalars):
        if not self.enabled:
            return
        record = {"step": step, "time": round(time.time(), 3), **{k: _plain(v) for k, v in scalars.items()}}
        self._file.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for k, v in scalars.items():
                if isinstance(v, (int, float)):
                    self._tb.add_scalar(f"{prefix}/{k}", v, step)

    def close(self):
        if self.enabled:
            self._file.close()
            if self._tb is not None:
                self._tb.close()


def _plain(v):
    if hasattr(v, "item"):
        return v.item()
    return v


def progress(total: int, desc: str, initial: int = 0, enabled: bool = True, stream=None,
             clock: Callable[[], float] = time.monotonic, every_s: float = 30.0, marks: int = 10):
    """A progress display with tqdm's ``update`` / ``set_postfix`` / ``close``: a live bar on a terminal;
    elsewhere (a log file, SLURM, CI) plain lines, as a bar's carriage-return redraws would pile up there
    into single lines of tens of kilobytes. ``stream`` defaults to stderr, where tqdm writes."""
    stream = sys.stderr if stream is None else stream
    if not enabled or stream.isatty():
        from tqdm import tqdm

        return tqdm(total=total, initial=initial, desc=desc, file=stream, disable=not enabled,
                    dynamic_ncols=True, leave=False)
    return PlainProgress(total, desc, initial, stream, clock, every_s, marks)


class PlainProgress:
    """Writes ``desc: n/total (p%) key=value ...`` at every 1/``marks`` of ``total``, after ``every_s``
    seconds without a line, and at ``close`` (unless that position was just written)."""

    def __init__(self, total: int, desc: str, initial: int, stream, clock: Callable[[], float],
                 every_s: float, marks: int):
        self.total, self.desc, self.n, self.stream = total, desc, initial, stream
        self.clock, self.every_s, self.marks = clock, every_s, marks
        self.postfix: Dict[str, object] = {}
        self._last_time, self._last_n = clock(), initial
        self._last_mark = self._mark(initial)

    def _mark(self, n: int) -> int:
        return n * self.marks // self.total if self.total else 0

    def update(self, n: int = 1):
        self.n += n
        mark = self._mark(self.n)
        if mark > self._last_mark or self.clock() - self._last_time >= self.every_s:
            self._last_mark = mark
            self._write()

    def set_postfix(self, **values):
        self.postfix = values

    def close(self):
        if self.n != self._last_n:
            self._write()

    def _write(self):
        line = f"{self.desc}: {self.n}/{self.total}"
        if self.total:
            line += f" ({self.n / self.total:.0%})"
        line += "".join(f" {k}={v}" for k, v in self.postfix.items())
        self.stream.write(line + "\n")
        self.stream.flush()
        self._last_time, self._last_n = self.clock(), self.n
