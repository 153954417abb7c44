"""Without detectron2 (CI, a fresh environment) the project imports, its detectron2 tools say how to install it, and
the detectron2 tests skip with that reason. detectron2 is hidden from child processes by a ``sitecustomize`` that
marks it absent, so these checks run whether or not it is installed here."""
import os
import subprocess
import sys

import pytest

from conftest import REPO, run_tool

HIDE = "import sys\nsys.modules['detectron2'] = None  # import fails, importlib.util.find_spec returns None\n"


@pytest.fixture
def no_detectron2(tmp_path):
    (tmp_path / "sitecustomize.py").write_text(HIDE)
    return {"PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])}


def test_project_imports_and_reports_the_install_command(no_detectron2, tmp_path):
    code = (
        "import transfer, transfer.convert, transfer.detection as d2, transfer.detection.convert as c\n"
        "assert not d2.detectron2_available()\n"
        "from pretrain.methods.mae import create_mae\n"
        "m = create_mae('mae_vit_pico_patch8', img_size=32, decoder_depth=1, decoder_embed_dim=16,"
        " decoder_num_heads=2)\n"
        "assert c.load_converted({'model': m.state_dict()})[0]['sslkit']['pretrain'] == 'mae'  # pure torch\n"
        "try:\n"
        "    d2.require_detectron2()\n"
        "except ImportError as e:\n"
        "    print(e)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env={**os.environ, **no_detectron2},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "detectron2 is not installed" in proc.stdout and "git+https://github.com/facebookresearch" in proc.stdout


def test_tools_exit_with_the_install_command(no_detectron2, tmp_path):
    proc = run_tool("tools/train_net.py", "--config-file", "configs/detectron2/tiny/mask_rcnn_vitdet_pico.py",
                    env=no_detectron2, check=False)
    assert proc.returncode != 0 and "detectron2 is not installed" in proc.stderr
    assert "Traceback" not in proc.stderr

    from pretrain.checkpoint import save_atomic
    from pretrain.methods.mae import create_mae

    mae = create_mae("mae_vit_pico_patch8", img_size=32, decoder_depth=1, decoder_embed_dim=16, decoder_num_heads=2)
    src = save_atomic({"model": mae.state_dict()}, tmp_path / "mae.pth")
    proc = run_tool("tools/convert_checkpoint.py", src, tmp_path / "out.pkl", "--to", "detectron2",
                    env=no_detectron2, check=False)
    assert proc.returncode != 0 and "detectron2 is not installed" in proc.stderr
    assert not (tmp_path / "out.pkl").exists()


D2_TESTS = ("tests/test_detectron2_convert.py", "tests/test_detectron2_configs.py", "tests/test_detectron2_train.py")


def child_pytest(env, *args):
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_detectron2_tests_skip_with_the_reason(no_detectron2):
    env = {k: v for k, v in os.environ.items() if k != "SSLKIT_REQUIRE_DETECTRON2"}
    proc = child_pytest({**env, **no_detectron2}, *D2_TESTS)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "passed" not in proc.stdout and "failed" not in proc.stdout
    assert "SKIPPED" in proc.stdout and "detectron2 is not installed" in proc.stdout
    assert "SSLKIT_DETECTRON2=<wheel folder>" in proc.stdout  # the reason says how to install it


def test_detectron2_tests_fail_where_required(no_detectron2):
    """CI sets SSLKIT_REQUIRE_DETECTRON2 where a wheel exists: a missing detectron2 fails the run, not skips."""
    proc = child_pytest({**os.environ, **no_detectron2, "SSLKIT_REQUIRE_DETECTRON2": "1"},
                        "tests/test_detectron2_convert.py")
    assert proc.returncode == 1, proc.stdout[-3000:]
    summary = proc.stdout.splitlines()[-1]  # failures in set-up count as errors
    assert "skipped" not in summary and "passed" not in summary and " error" in summary, summary
    assert "detectron2 is not installed" in proc.stdout and "SSLKIT_REQUIRE_DETECTRON2 is set" in proc.stdout


@pytest.mark.detectron2
def test_broken_detectron2_fails_instead_of_skipping(tmp_path):
    """An installed detectron2 whose compiled ops do not load (built against another torch) is a failure."""
    (tmp_path / "sitecustomize.py").write_text("import sys\nsys.modules['detectron2._C'] = None\n")
    env = {k: v for k, v in os.environ.items() if k != "SSLKIT_REQUIRE_DETECTRON2"}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), str(REPO)])
    proc = child_pytest(env, "tests/test_detectron2_convert.py")
    assert proc.returncode == 1, proc.stdout[-3000:]
    assert "detectron2 is installed but does not import" in proc.stdout
