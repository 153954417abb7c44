"""The GPU check on a cluster node without network (tools/gpu_check_wheels.py): the folder it prepares installs
the check over a site's PyTorch with ``pip install --no-index`` alone, and the check runs from the folder."""
import importlib.metadata as metadata
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("gpu_check_wheels", REPO / "tools" / "gpu_check_wheels.py")
gpu_check_wheels = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu_check_wheels)


def test_requirements_are_resolved_for_the_target_python_not_this_one():
    """What a node needs follows its Python, its machine and the extras asked for, not this interpreter's."""
    py310, py312 = (gpu_check_wheels.marker_environment(v, "x86_64") for v in ("3.10", "3.12"))
    backport = Requirement('tomli>=1.1; python_version < "3.11"')
    assert gpu_check_wheels.applies(backport, py310) and not gpu_check_wheels.applies(backport, py312)
    x86 = Requirement('turbojpeg; platform_machine == "x86_64"')
    assert gpu_check_wheels.applies(x86, py312)
    assert not gpu_check_wheels.applies(x86, gpu_check_wheels.marker_environment("3.12", "aarch64"))
    seg = Requirement('mmengine==0.10.7; extra == "seg"')
    assert not gpu_check_wheels.applies(seg, py312) and gpu_check_wheels.applies(seg, py312, ["seg"])


def test_platform_tags_include_every_older_glibc():
    """pip download takes exactly the platform tags it is given: a glibc 2.28 node also runs the many wheels
    tagged only manylinux2014 (glibc 2.17), which must be asked for by name."""
    tags = gpu_check_wheels.manylinux_platforms("2.28", "x86_64")
    assert tags[0] == "manylinux_2_28_x86_64" and "manylinux_2_17_x86_64" in tags
    assert "manylinux2014_x86_64" in tags and "manylinux_2_29_x86_64" not in tags
    with pytest.raises(ValueError):
        gpu_check_wheels.manylinux_platforms("2.12", "x86_64")


# ------------------------------------------------------------- end to end
SITE = ("torch", "torchvision", "timm")  # what the simulated site installation provides


def site_distributions(names):
    """``names`` and their requirements (this environment's), as installed here."""
    todo, seen = list(names), {}
    while todo:
        name = canonicalize_name(todo.pop())
        if name in seen:
            continue
        seen[name] = dist = metadata.distribution(name)
        todo += [r.name for r in map(Requirement, dist.requires or [])
                 if r.marker is None or r.marker.evaluate({"extra": ""})]
    return list(seen.values())


def make_site(root: Path, names) -> Path:
    """A site installation of ``names`` and what they require, and nothing else: links to the top-level
    modules and the metadata of each distribution, in one folder (a .pth file puts it on a venv's path)."""
    root.mkdir()
    for dist in site_distributions(names):
        tops = {f.parts[0] for f in dist.files or [] if f.parts[0] not in ("..", "__pycache__")}
        for top in tops:
            target = Path(dist.locate_file(top))
            if target.exists() and not (root / top).exists():
                (root / top).symlink_to(target)
    return root


def run(cmd, **kw):
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


@pytest.mark.slow
def test_a_venv_from_the_wheel_folder_alone_runs_the_check(tmp_path):
    """The offline procedure end to end: the folder (built here; PyPI through pip's cache), a second venv whose
    torch / torchvision / timm come from a simulated site installation and everything else from the folder
    with --no-index, and the folder's copy of gpu_check.py --cpu --tiny run in it outside the checkout."""
    folder = tmp_path / "gpu_check_wheels"
    run([sys.executable, str(REPO / "tools" / "gpu_check_wheels.py"), "--python", "3.11", "--out", str(folder)],
        timeout=600)
    wheels = sorted(p.name for p in folder.glob("*.whl"))
    assert any(w.startswith("sslkit-") for w in wheels) and any(w.startswith("simplejpeg-") for w in wheels)
    assert not any(w.split("-")[0] in ("torch", "torchvision", "timm", "numpy") for w in wheels), wheels

    site = make_site(tmp_path / "site", SITE)
    venv = tmp_path / "node_env"
    run([sys.executable, "-m", "venv", str(venv)])
    python = str(venv / "bin" / "python")
    purelib = run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    Path(purelib, "site_pytorch.pth").write_text(f"{site}\n")

    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON"))}
    env.update(PIP_CONFIG_FILE=os.devnull, OMP_NUM_THREADS="1")
    run([python, "-m", "pip", "install", "-q", "--no-index", "--find-links", str(folder), "-r",
         str(folder / "requirements.txt")], env=env, cwd=tmp_path, timeout=300)
    installed = run([python, "-c", "import torch, pretrain; print(torch.__file__); print(pretrain.__file__)"],
                    env=env, cwd=tmp_path).stdout.split()
    assert installed[0].startswith(str(site)) and installed[1].startswith(purelib), installed

    proc = run([python, str(folder / "check" / "benchmarks" / "gpu_check.py"), "--cpu", "--tiny"],
               env=env, cwd=tmp_path, timeout=600)
    table = proc.stdout
    assert f"sslkit from {purelib}" in table, table
    rows = {line.split(" | ")[0].lstrip("| "): line for line in table.splitlines() if line.startswith("| ")}
    for name in ("MAE mae_vit_pico_patch8 pretraining, project, eager",
                 "MAE mae_vit_pico_patch8 pretraining, project, compiled",
                 "MAE mae_vit_pico_patch8 pretraining, authors (re-derived), eager",
                 "MAE mae_vit_pico_patch8 pretraining, authors (re-derived), compiled",
                 "MoCo v2 resnet18", "data path, MAE: loader per core", "data path, MoCo v2 two views: loader per core",
                 "data path, MoCo v2 device part"):
        assert name in rows and "images/s" in rows[name], (name, table)
    # Neither detectron2 nor mmcv is in the site or the folder: their rows say so, and the check passes.
    assert "skipped: detectron2 is not installed" in rows["ViTDet-B Mask R-CNN"], table
    assert "skipped: mmcv is not installed" in rows["UperNet MAE ViT-B"], table
    assert "FAILED" not in table
