"""Several checkpoints through one ``tools/evaluate.py`` call (transfer/ladder/compare.py): each one's ladder, the
baseline's jobs run once for checkpoints of one backbone, and one comparison report."""
from __future__ import annotations

import json

import pytest

from conftest import run_tool


def write_folders(root, per_class, seed):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c, colour in enumerate([(200, 40, 40), (40, 40, 200), (40, 200, 40)]):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(per_class):
            img = np.clip(rng.normal(colour, 60, (32, 32, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / f"c{c}" / f"{i}.png")


def mae_file(path, seed):
    import torch

    from pretrain.checkpoint import save_atomic
    from pretrain.methods.mae import create_mae

    torch.manual_seed(seed)
    model = create_mae("mae_vit_pico_patch8", img_size=32, decoder_depth=1, decoder_embed_dim=32, decoder_num_heads=2)
    return save_atomic({"model": model.state_dict(), "epoch": 1}, path)


def test_baselines_are_shared_only_between_the_same_jobs(tmp_path):
    from transfer import ladder
    from transfer.ladder.compare import share_baselines, unique_jobs

    def plan(name, arch, baseline_arg):
        info = ladder.CheckpointInfo(f"/{name}.pth", name * 64, "vit", arch.replace("mae_", ""), arch, "mae")
        p = ladder.Plan(info, "random", 1, f"/out/{name}")
        for role, arg in (("pretrained", f"/{name}.pth"), ("baseline", baseline_arg)):
            folder = f"/out/{name}/knn/{role}/seed0"
            p.jobs.append(ladder.Job("knn", ladder.Subject(role, None), 0, folder,
                                     ["tools/knn_eval.py", arg, "--out", folder], 1, 0.2, "knn"))
        return p

    a, b = plan("a", "mae_vit_pico_patch8", "--random-init"), plan("b", "mae_vit_pico_patch8", "--random-init")
    c = plan("c", "mae_vit_base_patch16", "--random-init")  # another backbone: its own random twin
    d = plan("d", "mae_vit_pico_patch8", "/other_baseline.pth")  # another baseline: not the same job
    assert share_baselines([a, b, c, d]) == 1
    assert b.jobs[1] is a.jobs[1] and c.jobs[1].folder == "/out/c/knn/baseline/seed0"
    assert d.jobs[1].folder == "/out/d/knn/baseline/seed0"
    assert len(unique_jobs([a, b, c, d])) == 7


@pytest.mark.slow
def test_three_checkpoints_one_comparison(tmp_path):
    """Three ViT-pico checkpoints, kNN with 2 seeds against one random twin: the twin's jobs run once, every
    checkpoint has its report, and the comparison has every checkpoint's row, the baseline's and every pair's
    verdict, with a chart."""
    data = tmp_path / "data"
    write_folders(data / "train", 8, 0)
    write_folders(data / "val", 4, 1)
    ckpts = [mae_file(tmp_path / f"{name}.pth", seed) for name, seed in (("first", 0), ("second", 1), ("third", 2))]
    out = tmp_path / "ladder"
    args = [*ckpts, "--rungs", "knn", "--seeds", "2", "--baseline", "random", "--out", out, "--data",
            f"imagenet={data}", "--rung-args", "knn=--img-size 32 --num-workers 0"]
    dry = run_tool("tools/evaluate.py", *args, "--dry-run")
    assert "all 3 checkpoints: 8 jobs (4 baseline jobs shared)" in dry.stdout
    proc = run_tool("tools/evaluate.py", *args, env={"OMP_NUM_THREADS": "1"})
    assert proc.stdout.count("knn/baseline/seed0: starting") == 1  # run once, for the first checkpoint
    assert proc.stdout.count("knn/baseline/seed0: done earlier, skipped") == 2
    comparison = next(out.glob("comparison-*"))
    report = (comparison / "report.md").read_text()
    for name in ("first.pth", "second.pth", "third.pth"):
        assert f"| {name} | mae | vit_pico_patch8 |" in report
    assert report.count("| baseline: random (vit_pico_patch8) |") == 1
    verdicts = [line for line in report.splitlines() if line.startswith("- ")]
    assert [line.split(":")[0] for line in verdicts] == [
        "- first.pth vs second.pth", "- first.pth vs third.pth", "- second.pth vs third.pth"]
    assert (comparison / "comparison.png").stat().st_size > 1000
    assert (comparison / "knn.csv").read_text().count("\n") == 5  # header, 3 checkpoints, the baseline
    # The numbers are each checkpoint's own ladder's: the comparison reads the same results.
    first_plan = json.loads(next(out.glob("first-*/plan.json")).read_text())
    top1 = [json.loads((out / j["folder"] / "results.json").read_text())["metrics"]["top1"]
            for j in first_plan["jobs"] if j["subject"]["role"] == "pretrained"]
    assert f"{sum(top1) / 2:.2f} ±" in next(line for line in report.splitlines() if line.startswith("| first.pth"))
