"""The ladder's warm start: a job forked from the server is what its subprocess would have been."""
import os
import subprocess
import sys

import pytest

from transfer.warm_start import WarmStarter, call

SCRIPT = """
import atexit, os, sys
print("argv", sys.argv[1:], "cwd", os.getcwd(), "env", os.environ.get("JOB_VALUE"), "torch" in sys.modules)
print("to stderr", file=sys.stderr)
atexit.register(lambda: print("atexit ran"))
mode = sys.argv[1]
if mode == "raise":
    raise ValueError("broken tool")
if mode == "message":
    sys.exit("bad config: data.path is missing")
if mode == "code":
    sys.exit(3)
if mode == "import_sibling":
    import sibling  # the tool's folder is first on sys.path, as with `python tool.py`
    print("sibling", sibling.VALUE)
"""


def run_both(tmp_path, warm, mode, env):
    """(exit code, log) of the script run warm and as a subprocess."""
    out = []
    for name, server in (("warm", warm), ("cold", None)):
        log_path = tmp_path / f"{mode}-{name}.txt"
        with open(log_path, "w") as log:
            rc = call([sys.executable, str(tmp_path / "tool.py"), mode], log, env, tmp_path, server)
        out.append((rc, log_path.read_text()))
    return out


ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def server():
    warm = WarmStarter(ENV)
    yield warm
    warm.close()


def test_a_forked_job_gives_what_its_subprocess_gives(server, tmp_path):
    (tmp_path / "tool.py").write_text(SCRIPT)
    (tmp_path / "sibling.py").write_text("VALUE = 42\n")
    env = {**ENV, "JOB_VALUE": "seven"}
    assert server.takes([sys.executable, str(tmp_path / "tool.py")], env)
    logs = {}
    for mode, rc in (("ok", 0), ("raise", 1), ("message", 1), ("code", 3), ("import_sibling", 0)):
        (warm_rc, warm_log), (cold_rc, cold_log) = run_both(tmp_path, server, mode, env)
        assert warm_rc == cold_rc == rc, mode
        lines = lambda log: sorted(log.splitlines())  # noqa: E731  (stdout and stderr interleave by buffering)
        # The same lines; the warm child has torch imported already, the one difference it shows.
        assert lines(warm_log.replace("True", "False")) == lines(cold_log), mode
        assert f"argv ['{mode}'] cwd {tmp_path} env seven True" in warm_log and "to stderr" in warm_log
        assert "atexit ran" in warm_log
        logs[mode] = warm_log
    assert "ValueError: broken tool" in logs["raise"] and "bad config: data.path is missing" in logs["message"]
    assert "sibling 42" in logs["import_sibling"]


def test_what_the_server_cannot_take_runs_as_a_subprocess(server, tmp_path):
    """Thread settings are read when the libraries load (the server's); torchrun is its own launcher."""
    env = {**ENV, "OMP_NUM_THREADS": "7"}
    assert not server.takes([sys.executable, "tools/knn_eval.py"], env)
    assert not server.takes([sys.executable, "-m", "torch.distributed.run", "tools/train_cls.py"], ENV)
    (tmp_path / "threads.py").write_text("import os; print(os.environ['OMP_NUM_THREADS'])\n")
    with open(tmp_path / "log.txt", "w") as log:
        assert call([sys.executable, str(tmp_path / "threads.py")], log, env, tmp_path, server) == 0
    assert (tmp_path / "log.txt").read_text().strip() == "7"


def test_a_signal_kills_the_job_not_the_server(server, tmp_path):
    (tmp_path / "die.py").write_text("import os, signal; os.kill(os.getpid(), signal.SIGKILL)\n")
    with open(tmp_path / "log.txt", "w") as log:
        assert call([sys.executable, str(tmp_path / "die.py")], log, ENV, tmp_path, server) == -9  # as subprocess
    assert subprocess.call([sys.executable, str(tmp_path / "die.py")]) == -9
    with open(tmp_path / "log.txt", "w") as log:  # still serving
        assert server.takes([sys.executable, "x.py"], ENV) and call([sys.executable, str(tmp_path / "die.py")], log,
                                                                      ENV, tmp_path, server) == -9
