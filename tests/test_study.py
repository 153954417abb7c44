"""Studies (transfer/ladder/study.py, tools/study.py): the shipped ones plan and price, a CPU one runs end to end."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import run_tool
from transfer.published import STUDY_SERIES
from transfer.ladder.study import STUDIES, Point, Study, point_label, shipped

SHIPPED = shipped()


def test_studies_are_shipped():
    assert len(SHIPPED) >= 8 and {"mae_mask_sampling", "mae_target", "moco_momentum"} <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_study_loads_and_its_series_name_its_points(name):
    """The contract of a study file: it loads (every point's config too), and each value of its paper's
    series belongs to one of its points, on a rung it runs."""
    study = Study.load(STUDIES / f"{name}.yaml")
    labels = {p.label for p in study.grid()}
    for key in study.series:
        series = STUDY_SERIES[key]
        assert set(series.values) <= labels, (key, set(series.values) - labels)
        assert series.rung in study.rungs and series.source


@pytest.mark.slow
@pytest.mark.parametrize("name", SHIPPED)
def test_dry_run_of_every_shipped_study_prints_its_gpu_hours(name, tmp_path):
    proc = run_tool("tools/study.py", name, "--data", "imagenet=/data/imagenet", "--dry-run", "--out", tmp_path)
    last = proc.stdout.strip().splitlines()[-1]
    assert "GPU-hours" in last and f"{name}:" in last
    hours = float(last.split(": ")[-1].split(" GPU-hours")[0])
    assert hours > 100  # ImageNet pretraining of every point
    assert not any(tmp_path.iterdir())  # a dry run writes nothing


def test_points_of_a_grid_and_of_a_list(tmp_path):
    grid = Study(name="g", base="configs/pretrain/mae_vit_tiny_cpu.yaml",
                 sweep={"model.mask_ratio": [0.5, 0.75], "model.mask_sampling": ["random", "block"]})
    assert [p.label for p in grid.grid()] == [
        "mask_ratio=0.5,mask_sampling=random", "mask_ratio=0.5,mask_sampling=block",
        "mask_ratio=0.75,mask_sampling=random", "mask_ratio=0.75,mask_sampling=block"]
    listed = Study(name="l", base="configs/pretrain/mae_vit_tiny_cpu.yaml",
                   points=[{"model.encoder_mask_tokens": True}, {"model.encoder_mask_tokens": False}])
    assert [p.label for p in listed.grid()] == ["encoder_mask_tokens=true", "encoder_mask_tokens=false"]
    assert Point("x", {"model.mask_ratio": 0.5}).x == 0.5 and point_label({"a.b": "c/d"}) == "b=c_d"


@pytest.mark.parametrize("text, says", [
    ("base: configs/pretrain/mae_vit_tiny_cpu.yaml\n", "either sweep"),
    ("base: configs/pretrain/nope.yaml\nsweep: {model.mask_ratio: [0.5]}\n", "base config not found"),
    ("base: configs/pretrain/mae_vit_tiny_cpu.yaml\nsweep: {model.mask_ratio: [0.5]}\nrungs: [knn, dance]\n",
     "unknown rungs"),
    ("base: configs/pretrain/mae_vit_tiny_cpu.yaml\nsweep: {model.mask_ratoi: [0.5]}\n", "mask_ratoi"),
    ("base: configs/pretrain/mae_vit_tiny_cpu.yaml\nsweep: {model.mask_ratio: [0.5]}\nseries: [nope]\n", "nope"),
    ("base: configs/pretrain/mae_vit_tiny_cpu.yaml\nsweep: {model.mask_ratio: [0.5]}\nsweeps: 1\n",
     "unknown study keys"),
])
def test_bad_study_files_are_refused_before_anything_runs(text, says, tmp_path):
    from pretrain.errors import UserError

    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match=says):
        Study.load(path)


def write_class_folders(root: Path, per_class: int, seed: int) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c, colour in enumerate([(200, 40, 40), (40, 40, 200)]):
        folder = root / f"class{c}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            img = np.clip(rng.normal(colour, 40, (32, 32, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(folder / f"{i}.png")


@pytest.mark.slow
def test_a_cpu_study_end_to_end_resumes_skips_and_reports(tmp_path):
    """2 points x 2 seeds of kNN on a pretrained ViT-pico: one point's pretraining interrupted first
    (resumed by the study), then a rerun that skips everything, then --report-only."""
    data = tmp_path / "data"
    write_class_folders(data / "train", 6, 0)
    write_class_folders(data / "val", 3, 1)
    study_file = tmp_path / "tiny_study.yaml"
    study_file.write_text(
        "paper: a CPU test\n"
        "base: configs/pretrain/mae_vit_tiny_cpu.yaml\n"
        "overrides: [model.decoder_depth=1, model.decoder_embed_dim=32, model.decoder_num_heads=2, data.img_size=32,\n"
        "            data.synthetic_images=16, data.num_workers=0, train.batch_size=8, train.epochs=2,\n"
        "            optim.warmup_epochs=1, train.progress=false, train.tensorboard=false, train.log_every=1]\n"
        "sweep:\n  model.mask_ratio: [0.5, 0.75]\n"
        "rungs: [knn]\nseeds: 2\nbaseline: none\nreference: mask_ratio=0.75\n")
    out = tmp_path / "out"
    # Interrupt the second point's pretraining after one step, as a killed job would leave it.
    second = out / "tiny_study" / "pretrain" / "mask_ratio=0.75"
    study = Study.load(study_file)
    run_tool("tools/pretrain_net.py", "configs/pretrain/mae_vit_tiny_cpu.yaml", "--max-iters", "1",
             *study.point_overrides(study.grid()[1], second, {}), env={"OMP_NUM_THREADS": "1"})
    env = {"OMP_NUM_THREADS": "1"}
    first = run_tool("tools/study.py", study_file, "--out", out, "--data", f"imagenet={data}", env=env)
    assert "[mask_ratio=0.5] pretraining (starting)" in first.stdout
    assert "[mask_ratio=0.75] pretraining (resuming)" in first.stdout
    assert "2 of 2 points done" in first.stdout
    folder = out / "tiny_study"
    results = json.loads((folder / "results.json").read_text())
    assert [p["status"] for p in results["points"]] == ["done", "done"]
    for p in results["points"]:
        knn = p["rungs"]["knn"]["pretrained"]
        assert knn["n"] == 2 and 0 <= knn["mean"]["top1"] <= 100
        assert p["pretrain"]["images_per_s"] > 0
    table = (folder / "table.md").read_text()
    assert "mask_ratio=0.5" in table and "knn top1" in table and "1.00x" in table  # the reference point
    assert (folder / "table.csv").read_text().count("\n") == 3
    assert (folder / "figure_knn_top1.png").stat().st_size > 1000
    # A rerun: every pretraining and every ladder job skipped.
    again = run_tool("tools/study.py", study_file, "--out", out, "--data", f"imagenet={data}", env=env)
    assert again.stdout.count("pretraining done earlier, skipped") == 2
    assert again.stdout.count("done earlier, skipped (top1") == 4
    (folder / "figure_knn_top1.png").unlink()
    run_tool("tools/study.py", study_file, "--out", out, "--report-only", env=env)
    assert (folder / "figure_knn_top1.png").is_file()


@pytest.mark.slow
def test_a_failed_point_is_shown_and_the_others_go_on(tmp_path):
    data = tmp_path / "data"
    write_class_folders(data / "train", 4, 0)
    write_class_folders(data / "val", 2, 1)
    study_file = tmp_path / "failing.yaml"
    # decoder_embed_dim=30 is not divisible by 4 heads: that point's model cannot be built.
    study_file.write_text(
        "base: configs/pretrain/mae_vit_tiny_cpu.yaml\n"
        "overrides: [model.decoder_depth=1, model.decoder_num_heads=4, data.img_size=32, data.synthetic_images=8,\n"
        "            data.num_workers=0, train.batch_size=8, train.epochs=1, optim.warmup_epochs=0,\n"
        "            train.progress=false, train.tensorboard=false]\n"
        "sweep:\n  model.decoder_embed_dim: [30, 32]\n"
        "rungs: [knn]\nseeds: 1\nbaseline: none\n")
    proc = run_tool("tools/study.py", study_file, "--out", tmp_path / "out", "--data", f"imagenet={data}",
                    env={"OMP_NUM_THREADS": "1"})
    assert "pretraining FAILED" in proc.stdout and "1 of 2 points done; failed: decoder_embed_dim=30" in proc.stdout
    table = (tmp_path / "out" / "failing" / "table.md").read_text()
    assert "| decoder_embed_dim=30 | failed |" in table and "| decoder_embed_dim=32 | done |" in table
