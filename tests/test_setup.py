"""The installable project: set-up script, collection hygiene, environment report."""
import os
import subprocess
import sys
import textwrap

from conftest import REPO, run_tool

HEAVY = ("detectron2", "mmseg", "mmcv", "mmengine")


def test_collecting_tests_imports_no_heavy_framework(tmp_path):
    """pytest --collect-only must not import detectron2 / mmseg / mmcv / mmengine."""
    plugin = tmp_path / "report_modules.py"
    plugin.write_text(textwrap.dedent(f"""
        import sys
        def pytest_collection_finish(session):
            with open({str(tmp_path / 'modules.txt')!r}, "w") as f:
                f.write("\\n".join(sorted(sys.modules)))
    """))
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "report_modules", "tests"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    loaded = set((tmp_path / "modules.txt").read_text().split())
    assert "pretrain" in loaded  # the plugin really ran after collection
    assert not [m for m in loaded if m.split(".")[0] in HEAVY], sorted(m for m in loaded if m.split(".")[0] in HEAVY)


def test_packages_import_without_detectron2():
    code = ("import sys; sys.modules['detectron2'] = None\n"  # makes `import detectron2` fail
            "import pretrain, transfer, transfer.detection, transfer.convert, transfer.results\n"
            "from transfer.detection import detectron2_available, require_detectron2\n"
            "assert not detectron2_available()\n"
            "try:\n    require_detectron2()\nexcept ImportError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "pip install --no-build-isolation" in out and "detectron2.git" in out


def test_setup_script_names_the_failing_step(tmp_path):
    env = {**os.environ, "SSLKIT_VENV": str(tmp_path / "venv"), "SSLKIT_PYTHON": str(tmp_path / "no-such-python")}
    proc = subprocess.run(["bash", "tools/setup_env.sh"], cwd=REPO, env=env, capture_output=True, text=True)
    assert proc.returncode != 0
    assert "FAILED at step: python interpreter" in proc.stderr
    assert not (tmp_path / "venv").exists()


def test_setup_script_pins_and_caches():
    script = (REPO / "tools" / "setup_env.sh").read_text()
    assert "torch==2.9.1 torchvision==0.24.1" in script and 'MMCV_VERSION="2.1.0"' in script
    assert "--no-build-isolation" in script and "setuptools<70" in script
    reqs = (REPO / "requirements.txt").read_text()
    for pin in ("mmengine==0.10.7", "mmsegmentation==1.2.2", "ftfy==", "regex==", "timm==", "fvcore==",
                "pycocotools=="):
        assert pin in reqs
    ci = (REPO / ".ci" / "run").read_text()
    readme = (REPO / "README.md").read_text()
    assert "make test" in ci and readme.index("make test") < readme.index("## ")  # the README's first commands


def test_collect_env_reports_versions():
    out = run_tool("tools/collect_env.py").stdout
    for name in ("python", "torch", "torchvision", "timm", "mmcv", "mmcv ops", "mmengine", "mmseg", "detectron2",
                 "CUDA available"):
        assert any(line.startswith(name + " ") for line in out.splitlines()), name
    assert "compiled ops load" in out
