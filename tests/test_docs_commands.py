"""Every command of README.md and docs/*.md runs as written: the documentation cannot drift from the tools.

The commands are the lines of the ```bash blocks (line continuations joined, comments dropped, bash arrays
expanded, ``VAR=value`` prefixes set aside). Each is checked as written: it runs the project's venv
(``.venv/bin/python``, ``.venv/bin/torchrun``), elides no argument (``...``), names configs that exist;
and each run of a script of the repository (``tools/*.py``, ``benchmarks/*.py``) must be accepted by that
script's own argument parser, and torchrun's options by torchrun's. Parse-only: nothing is built, loaded,
trained or written (a tool's ``parse_args(argv)`` where it has one, else its ``main`` stopped as soon as its
parser has parsed).
"""
import argparse
import ast
import functools
import importlib
import importlib.util
import inspect
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import pytest

from conftest import REPO

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
VENV = ".venv/bin/"
SHELL_FENCES = ("```bash", "```sh", "```shell", "```console")
PYTHON_FENCES = ("```python",)
SEPARATORS = {"&&", "||", ";", "|"}
ENV_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")
ARRAY_START = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)=\((.*)$")
ARRAY_USE = re.compile(r'"\$\{([A-Za-z_][A-Za-z0-9_]*)\[@\]\}"')
PROJECT_PACKAGES = ("pretrain", "transfer")
# tools/gpu_check_wheels.py copies the check's scripts into <out>/check/; the README runs that copy on the node.
SCRIPT_COPIES = {"gpu_check_wheels/check/": ""}
# Checks of files a tool makes at parse time, which a documented path (an earlier run's output, a
# placeholder) cannot pass here: the flags have all parsed when these are reached, so the message is accepted.
FILE_CHECKS_AT_PARSE = {"tools/train_net.py": "--resume: checkpoint not found"}


@dataclass(frozen=True)
class Command:
    where: str  # file:line of the command's first line
    argv: Tuple[str, ...]  # the words, without VAR=value prefixes

    @property
    def program(self) -> str:
        return Path(self.argv[0]).name

    def script(self) -> Optional[Tuple[Tuple[str, ...], str, Tuple[str, ...]]]:
        """(the launcher's own options, the script, its arguments) when the command runs a Python script
        (``python SCRIPT``, ``torchrun [OPTIONS] SCRIPT``), else None."""
        if self.program in ("python", "python3") and len(self.argv) > 1 and not self.argv[1].startswith("-"):
            return (), self.argv[1], self.argv[2:]
        if self.program == "torchrun":
            for i, word in enumerate(self.argv[1:], 1):
                if word.endswith(".py"):
                    return self.argv[1:i], word, self.argv[i + 1:]
        return None

    def python_option(self, option: str) -> Optional[Tuple[str, ...]]:
        """(the value, then the rest) of ``python -m MODULE ...`` / ``python -c CODE ...``, else None."""
        if self.program in ("python", "python3") and len(self.argv) > 2 and self.argv[1] == option:
            return self.argv[2:]
        return None


def fenced_blocks(text: str, name: str, fences=SHELL_FENCES) -> Iterator[Tuple[int, List[str]]]:
    """(line number of the block's first line, its lines) for each block fenced as one of ``fences``."""
    block, start = None, 0
    for number, line in enumerate(text.splitlines(), 1):
        fence = line.strip()
        if block is None and fence in fences:
            block, start = [], number + 1
        elif block is not None and fence == "```":
            yield start, block
            block = None
        elif block is not None:
            block.append(line)
    assert block is None, f"{name}: the block opened at line {start - 1} is never closed"


def commands_in(text: str, name: str) -> Iterator[Command]:
    """The commands of a Markdown document's shell blocks; ``name`` names it in their ``where``."""
    arrays: Dict[str, List[str]] = {}  # name=(words ...), expanded where "${name[@]}" is used

    def expand(use: re.Match) -> str:
        assert use.group(1) in arrays, f"{name}: ${{{use.group(1)}[@]}} is used before it is defined"
        return shlex.join(arrays[use.group(1)])

    for start, lines in fenced_blocks(text, name):
        i = 0
        while i < len(lines):
            number, line = start + i, lines[i]
            while line.endswith("\\") and i + 1 < len(lines):  # bash drops the backslash and the newline
                i += 1
                line = line[:-1] + lines[i]
            i += 1
            array = ARRAY_START.match(line)
            if array:  # maybe over several lines, up to its ")"
                body = array.group(2)
                while not body.rstrip().endswith(")") and i < len(lines):
                    body, i = body + " " + lines[i], i + 1
                arrays[array.group(1)] = shlex.split(body.rstrip()[:-1], comments=True)
                continue
            words = shlex.split(ARRAY_USE.sub(expand, line), comments=True)
            segment: List[str] = []
            for word in [*words, ";"]:
                if word not in SEPARATORS:
                    segment.append(word)
                    continue
                while segment and ENV_ASSIGNMENT.match(segment[0]):
                    segment.pop(0)
                if segment:
                    yield Command(f"{name}:{number}", tuple(segment))
                segment = []


COMMANDS = [command for doc in DOCS for command in commands_in(doc.read_text(), doc.relative_to(REPO).as_posix())]
REPO_SCRIPTS = ("tools/", "benchmarks/", *SCRIPT_COPIES)
SCRIPT_RUNS = [c for c in COMMANDS if c.script() and c.script()[1].startswith(REPO_SCRIPTS)]


def ids(commands):
    return [c.where for c in commands]


def test_the_collection_finds_the_commands():
    """A broken collector must not pass by finding nothing."""
    assert len(COMMANDS) > 60, len(COMMANDS)
    assert len(SCRIPT_RUNS) > 40, len(SCRIPT_RUNS)
    assert len(SNIPPETS) >= 6, SNIPPETS
    for doc in DOCS:
        assert any(c.where.startswith(doc.relative_to(REPO).as_posix() + ":") for c in SCRIPT_RUNS), doc
    tools = {Path(c.script()[1]).name for c in SCRIPT_RUNS}
    assert {"pretrain_net.py", "train_cls.py", "train_net.py", "train_seg.py", "evaluate.py", "knn_eval.py",
            "dense_probe.py", "convert_checkpoint.py", "report.py"} <= tools, tools


def test_the_collector_reads_bash_as_bash():
    doc = ("text\n```bash\n# a comment\nOMP_NUM_THREADS=1 .venv/bin/python tools/x.py a \\\n"
           "    --flag 'b c'   # why\nargs=(--one 1\n      --two 2)\n"
           '.venv/bin/torchrun --nproc_per_node 2 tools/y.py "${args[@]}" --three && make demo\n'
           "```\n```\nnot a command\n```\n")
    commands = list(commands_in(doc, "doc.md"))
    assert [(c.where, c.argv) for c in commands] == [
        ("doc.md:4", (".venv/bin/python", "tools/x.py", "a", "--flag", "b c")),
        ("doc.md:8", (".venv/bin/torchrun", "--nproc_per_node", "2", "tools/y.py", "--one", "1", "--two", "2",
                      "--three")),
        ("doc.md:8", ("make", "demo")),
    ]
    assert commands[1].script() == (("--nproc_per_node", "2"), "tools/y.py", ("--one", "1", "--two", "2", "--three"))


@pytest.mark.parametrize("command", COMMANDS, ids=ids(COMMANDS))
def test_command_as_written(command):
    """The venv's interpreters, every argument given, every named file of the repository present."""
    words = " ".join(command.argv)
    assert not any("..." in word for word in command.argv), f"an elided argument (...) in: {words}"
    if command.program in ("python", "python3", "torchrun", "pip"):
        system_venv = command.program.startswith("python") and command.argv[1:3] == ("-m", "venv")
        assert "/" in command.argv[0] or system_venv, (
            f"{command.argv[0]} is whatever is on PATH: write {VENV}{command.program}")
    run = command.script()
    if run and run[1].startswith(("tools/", "benchmarks/")):
        assert command.argv[0] in (VENV + "python", VENV + "torchrun"), (
            f"the project's scripts run in its venv: {VENV}python or {VENV}torchrun, not {command.argv[0]}")
    for word in command.argv:
        for path in re.findall(r"(?:^|[=:,])(configs/[^\s,:'\"]+)", word):
            assert (REPO / path).exists(), f"{path} does not exist"
    if command.program == "bash":
        assert (REPO / command.argv[1]).is_file(), command.argv[1]
    if command.program == "make":
        targets = set(re.findall(r"^([\w.-]+):", (REPO / "Makefile").read_text(), re.M))
        assert set(command.argv[1:]) <= targets, f"not a Makefile target: {set(command.argv[1:]) - targets}"


class Parsed(BaseException):
    """Raised by the parser once a tool's arguments have parsed, so that main() goes no further (a
    BaseException: a tool's ``except Exception`` does not catch it)."""


@functools.lru_cache(maxsize=None)
def script_module(path: Path):
    spec = importlib.util.spec_from_file_location(f"docs_{path.parent.name}_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse_only(path: Path, args: List[str], monkeypatch) -> argparse.Namespace:
    """The script's arguments as its parser reads them: its ``parse_args(argv)``, or its ``main`` stopped
    at the parser's return (``main(argv)``, or ``main()`` reading ``sys.argv``)."""
    module = script_module(path)
    if callable(getattr(module, "parse_args", None)):
        return module.parse_args(args)

    def stop_after(parse):
        def parsed(self, *a, **k):
            raise Parsed(parse(self, *a, **k))

        return parsed

    for name in ("parse_args", "parse_intermixed_args"):
        monkeypatch.setattr(argparse.ArgumentParser, name, stop_after(getattr(argparse.ArgumentParser, name)))
    try:
        if inspect.signature(module.main).parameters:
            module.main(args)
        else:
            monkeypatch.setattr(sys, "argv", [str(path), *args])
            module.main()
    except Parsed as done:
        return done.args[0]
    raise AssertionError(f"{path.name}: main() returned without parsing its arguments")


@pytest.mark.parametrize("command", SCRIPT_RUNS, ids=ids(SCRIPT_RUNS))
def test_tool_accepts_the_arguments(command, monkeypatch, capsys):
    launcher_options, script, args = command.script()
    for copy, original in SCRIPT_COPIES.items():
        if script.startswith(copy):
            script = original + script[len(copy):]
    path = REPO / script
    assert path.is_file(), f"{script} does not exist"
    if command.program == "torchrun":
        from torch.distributed.run import get_args_parser

        try:
            get_args_parser().parse_args([*launcher_options, script, *args])
        except SystemExit:
            pytest.fail(f"torchrun refuses its options: {capsys.readouterr().err.strip()}")
    monkeypatch.chdir(REPO)  # the documented relative paths are the repository's
    try:
        parse_only(path, list(args), monkeypatch)
    except SystemExit as e:
        message = capsys.readouterr().err.strip()
        accepted = FILE_CHECKS_AT_PARSE.get(script)
        if e.code == 0 or (accepted and accepted in message):
            return
        pytest.fail(f"{script} refuses the documented arguments {list(args)}:\n{message}")


# Python code: ``python -c CODE`` commands and ```python blocks, as (file:line, code).
SNIPPETS = [(c.where, c.python_option("-c")[0]) for c in COMMANDS if c.python_option("-c")] + [
    (f"{doc.relative_to(REPO).as_posix()}:{start}", "\n".join(lines))
    for doc in DOCS for start, lines in fenced_blocks(doc.read_text(), doc.name, PYTHON_FENCES)]
MODULE_RUNS = [c for c in COMMANDS if c.python_option("-m")]


@pytest.mark.parametrize("code", [code for _, code in SNIPPETS], ids=[where for where, _ in SNIPPETS])
def test_python_code_compiles_and_its_imports_exist(code):
    """Valid Python, and what it imports from the project exists (nothing of it runs)."""
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.ImportFrom) and node.module.split(".")[0] in PROJECT_PACKAGES:
            try:
                module = importlib.import_module(node.module)
            except ImportError as e:
                if e.name and e.name.split(".")[0] == "detectron2":  # optional (tests/test_detectron2_optional.py)
                    pytest.skip(f"{node.module} needs detectron2, which is not installed")
                raise
            missing = [a.name for a in node.names if not hasattr(module, a.name)]
            assert not missing, f"{node.module} has no {missing}"


@pytest.mark.parametrize("command", MODULE_RUNS, ids=ids(MODULE_RUNS))
def test_python_module_exists(command):
    name = command.python_option("-m")[0]
    if name.split(".")[0] in PROJECT_PACKAGES:
        assert importlib.util.find_spec(name) is not None, name
