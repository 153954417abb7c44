"""The project's tools run in processes forked from one that has already imported torch, torchvision and timm.

A ladder runs many short jobs, each ``python tools/<tool>.py ...``, and a fresh interpreter spends seconds
importing the libraries before the job does anything (7 s on these 2-core machines, longer than most of a
quick suite's jobs). ``WarmStarter`` keeps one server process that imports them once and runs no tensor code (so it holds no OpenMP threads or CUDA context a child could inherit badly) and forks
one child per job. The child is what the subprocess would have been: the tool's file run as ``__main__``
with the job's argv, working directory and environment, stdout and stderr on the job's log, its exit code
the tool's (``sys.exit`` / an exception's 1), ``atexit`` handlers run.

What is read at import time (OpenMP's and BLAS's thread settings) is the server's: it starts with the first
job's environment, and a job whose such variables differ runs as a plain subprocess. ``SSLKIT_WARM_START=0``
turns it off (every job a subprocess).
"""
from __future__ import annotations

import atexit
import json
import os
import runpy
import signal
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Mapping, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]

PRELOAD = ["torch", "torchvision", "timm"]
IMPORT_TIME_ENV = ("OMP_", "GOMP_", "KMP_", "MKL_", "OPENBLAS_", "PYTHON")  # read when the libraries load


def _import_time_env(env: Mapping[str, str]) -> dict:
    return {k: v for k, v in env.items() if k.startswith(IMPORT_TIME_ENV)}


def _run_tool(argv: Sequence[str], log_path: str, env: Mapping[str, str], cwd: str) -> None:
    """In the forked child: become ``python argv[0] argv[1:]`` with its output on ``log_path``."""
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)  # not the server's request pipe
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    sys.argv = list(argv)
    sys.path.insert(0, str(Path(argv[0]).resolve().parent))  # as `python TOOL` puts the tool's folder first
    code = 0
    try:
        runpy.run_path(argv[0], run_name="__main__")
    except SystemExit as e:
        if e.code is not None and not isinstance(e.code, int):
            print(e.code, file=sys.stderr)
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException as e:  # noqa: BLE001  (as the interpreter does: the traceback from the tool on, exit 1)
        tb, tool = e.__traceback__, os.path.abspath(argv[0])
        while tb is not None and os.path.abspath(tb.tb_frame.f_code.co_filename) != tool:
            tb = tb.tb_next
        traceback.print_exception(type(e), e, tb or e.__traceback__)
        code = 1
    finally:
        try:
            atexit._run_exitfuncs()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
    os._exit(code)


class WarmStarter:
    """Runs ``[python, TOOL.py, args...]`` commands in forked children of a warm server (see the module):
    ``python -m transfer.warm_start`` holding the libraries, one JSON request per job on its stdin, the
    child's pid and then its exit code back on its stdout. Jobs run one at a time."""

    def __init__(self, env: Mapping[str, str]):
        self.server_env = _import_time_env(env)
        self.server = subprocess.Popen([sys.executable, "-m", "transfer.warm_start"], cwd=REPO, env=dict(env),
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)

    @staticmethod
    def enabled() -> bool:
        return os.environ.get("SSLKIT_WARM_START", "1") != "0" and hasattr(os, "fork")

    def takes(self, cmd: Sequence[str], env: Mapping[str, str]) -> bool:
        """A single-process tool run (not torchrun), whose import-time environment is the server's."""
        return (self.server.poll() is None and len(cmd) >= 2 and cmd[0] == sys.executable
                and cmd[1].endswith(".py") and _import_time_env(env) == self.server_env)

    def run(self, cmd: Sequence[str], log_path, env: Mapping[str, str], cwd) -> int:
        self.server.stdin.write(json.dumps({"argv": list(cmd[1:]), "log": str(log_path), "env": dict(env),
                                            "cwd": str(cwd)}) + "\n")
        self.server.stdin.flush()
        pid = self._reply()["pid"]
        try:
            return self._reply()["rc"]
        except BaseException:  # interrupted: the job goes too, as a subprocess would with its parent's Ctrl-C
            os.kill(pid, signal.SIGTERM)
            raise

    def _reply(self) -> dict:
        line = self.server.stdout.readline()
        if not line:
            raise RuntimeError(f"the warm-start server exited (code {self.server.wait()}); "
                               f"SSLKIT_WARM_START=0 runs every job as a subprocess")
        return json.loads(line)

    def close(self) -> None:
        self.server.stdin.close()
        self.server.wait()


def serve() -> None:
    """The server: import the libraries, then fork one child per request and report its pid and exit code."""
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)
    requests, replies = sys.stdin, sys.stdout
    for line in requests:
        job = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _run_tool(job["argv"], job["log"], job["env"], job["cwd"])
        replies.write(json.dumps({"pid": pid}) + "\n")
        replies.flush()
        _, status = os.waitpid(pid, 0)
        # as subprocess.call reports it: the exit code, or -N for signal N
        replies.write(json.dumps({"rc": os.waitstatus_to_exitcode(status)}) + "\n")
        replies.flush()


def call(cmd: Sequence[str], log, env: Mapping[str, str], cwd, warm: Optional[WarmStarter]) -> int:
    """``subprocess.call(cmd)`` with its output on the open file ``log``, through ``warm`` where it takes it."""
    if warm is not None and warm.takes(cmd, env):
        log.flush()
        return warm.run(cmd, log.name, env, cwd)
    return subprocess.call(cmd, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, env=dict(env))


if __name__ == "__main__":
    serve()
