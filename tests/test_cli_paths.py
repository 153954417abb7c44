"""tools/evaluate.py from the user's side (issue 22, part 3): ``--launcher slurm`` refuses where there is no
SLURM instead of submitit's silent run-it-here fallback, and every path a user gives is taken against the
user's directory, not the repository's (where the ladder's jobs run)."""
import os
import shlex
import stat
from pathlib import Path

import pytest
import torch

from conftest import REPO, run_tool

EVALUATE = REPO / "tools" / "evaluate.py"
TWIN = "resnet18-f37072fd.pth"  # the supervised ResNet-18's file name, as torch.hub caches it


@pytest.fixture(scope="module")
def user_dir(tmp_path_factory):
    """A user's working directory outside the repository: a MoCo ResNet-18 checkpoint, an ImageNet-style
    folder, a weights folder with the supervised twin, and a data file, all named relative to it."""
    from pretrain.methods.moco import build_moco, moco_checkpoint

    root = tmp_path_factory.mktemp("user")
    (root / "ckpts").mkdir()
    torch.save(moco_checkpoint(build_moco("resnet18", K=64, mlp=True), "resnet18", epoch=1),
               root / "ckpts" / "moco_r18.pth.tar")
    for d in ("data/imagenet/train", "data/imagenet/val", "weights"):
        (root / d).mkdir(parents=True)
    torch.save({}, root / "weights" / TWIN)  # only its presence matters to the plan
    (root / "data.yaml").write_text("imagenet: data/imagenet\n")
    return root


def planned_commands(stdout):
    """The first seed's command of each (rung, subject) row of ``--dry-run``'s table."""
    rows = {}
    for line in stdout.splitlines():
        if "  tools/" in line:
            rung, role = line.split()[:2]
            rows[(rung, role)] = shlex.split(line[line.index("  tools/"):])
    return rows


def value_after(cmd, flag):
    return cmd[cmd.index(flag) + 1]


def value_of(cmd, key):
    return next(arg.split("=", 1)[1] for arg in cmd if arg.startswith(key + "="))


@pytest.mark.parametrize("data", [["--data", "imagenet=data/imagenet"], ["--data-file", "data.yaml"]])
def test_relative_paths_are_the_callers(user_dir, data):
    proc = run_tool(EVALUATE, "ckpts/moco_r18.pth.tar", "--rungs", "knn,linear", "--seeds", "1", "--weights",
                    "weights", *data, "--dry-run", cwd=user_dir)
    out_root = user_dir / "output" / "ladder"  # the default --out, in the caller's directory
    assert f"output: {out_root}/moco_r18-" in proc.stdout
    rows = planned_commands(proc.stdout)
    assert set(rows) == {(r, s) for r in ("knn", "linear") for s in ("pretrained", "baseline")}
    ckpt, twin = str(user_dir / "ckpts" / "moco_r18.pth.tar"), str(user_dir / "weights" / TWIN)
    imagenet = user_dir / "data" / "imagenet"
    for (rung, role), cmd in rows.items():
        subject = ckpt if role == "pretrained" else twin
        if rung == "knn":
            assert cmd[1] == subject
            assert value_after(cmd, "--train") == str(imagenet / "train")
            assert value_after(cmd, "--val") == str(imagenet / "val")
            out = value_after(cmd, "--out")
        else:
            assert value_after(cmd, "--checkpoint") == subject
            assert value_of(cmd, "data.path") == str(imagenet)
            out = value_of(cmd, "train.output_dir")
        assert Path(subject).is_file() and Path(out).is_absolute()
        assert Path(out).is_relative_to(out_root) and not Path(out).is_relative_to(REPO)


def test_relative_out_and_baseline_are_the_callers(user_dir):
    proc = run_tool(EVALUATE, "ckpts/moco_r18.pth.tar", "--rungs", "knn", "--seeds", "1", "--baseline",
                    "ckpts/moco_r18.pth.tar", "--data", "imagenet=data/imagenet", "--out", "runs", "--dry-run",
                    cwd=user_dir)
    cmd = planned_commands(proc.stdout)[("knn", "baseline")]
    assert cmd[1] == str(user_dir / "ckpts" / "moco_r18.pth.tar")
    assert Path(value_after(cmd, "--out")).is_relative_to(user_dir / "runs")


def fake_sbatch(folder):
    folder.mkdir(exist_ok=True)
    sbatch = folder / "sbatch"
    sbatch.write_text("#!/bin/sh\nexit 1\n")
    sbatch.chmod(sbatch.stat().st_mode | stat.S_IXUSR)
    return folder


def test_slurm_launcher_refuses_without_slurm(user_dir, tmp_path):
    no_slurm = tmp_path / "bin"
    no_slurm.mkdir()
    out = tmp_path / "ladder"
    proc = run_tool(EVALUATE, "ckpts/moco_r18.pth.tar", "--rungs", "knn", "--baseline", "random", "--out", out,
                    "--launcher", "slurm", cwd=user_dir, env={"PATH": str(no_slurm)}, check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]  # one line
    assert proc.stderr.startswith("error: --launcher slurm: no SLURM here (sbatch not found")
    assert not out.exists()  # refused before anything was written


def test_require_slurm_follows_sbatch_on_path(user_dir, tmp_path, monkeypatch):
    from transfer import ladder

    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(ladder.NoSlurm, match="sbatch not found"):
        ladder.require_slurm()
    p = ladder.plan(user_dir / "ckpts" / "moco_r18.pth.tar", tmp_path / "ladder", ["knn"],
                    {"imagenet": str(user_dir / "data" / "imagenet")}, 1, "random")
    with pytest.raises(ladder.NoSlurm):  # run_slurm itself: no silent local fallback either
        ladder.run_slurm(p, echo=lambda line: None)
    assert not (tmp_path / "ladder").exists()
    monkeypatch.setenv("PATH", os.pathsep.join([str(fake_sbatch(tmp_path / "slurm")), os.environ["PATH"]]))
    ladder.require_slurm()  # sbatch found: SLURM is there


def test_slurm_dry_run_and_report_only_need_no_slurm(user_dir, tmp_path):
    """They submit nothing: a plan or a report from a laptop works without SLURM."""
    for flag in ("--dry-run", "--report-only"):
        proc = run_tool(EVALUATE, "ckpts/moco_r18.pth.tar", "--rungs", "knn", "--baseline", "random", "--out",
                        tmp_path / "ladder", "--launcher", "slurm", flag, cwd=user_dir,
                        env={"PATH": str(tmp_path / "empty")})
        assert "error:" not in proc.stderr
