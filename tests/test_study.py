"""Studies (transfer/ladder/study.py, tools/study.py): the shipped ones plan and price; their CPU twins run end to
end, here (local launcher) and through SLURM's path (submitit's local executor, and a stand-in sbatch)."""
from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest

from conftest import run_tool
from transfer.published import STUDY_SERIES
from transfer.ladder.study import PRETRAIN, STUDIES, Point, Study, point_label, pretrain_folder, shipped

SHIPPED = shipped()
TWINS = sorted((STUDIES / "cpu").glob("*.yaml"))  # the CPU-sized studies (not priced: their GPU-hours are 0)
MAE_TWIN, MOCO_TWIN = STUDIES / "cpu" / "mae_mask_sampling_tiny.yaml", STUDIES / "cpu" / "moco_contrast_tiny.yaml"
ENV = {"OMP_NUM_THREADS": "1"}


def test_studies_are_shipped():
    assert len(SHIPPED) >= 8 and {"mae_mask_sampling", "mae_target", "moco_momentum", "mae_wallclock"} <= set(SHIPPED)
    assert {MAE_TWIN, MOCO_TWIN} <= set(TWINS)


@pytest.mark.parametrize("path", [STUDIES / f"{name}.yaml" for name in SHIPPED] + TWINS, ids=lambda p: p.stem)
def test_every_shipped_study_loads_and_its_series_name_its_points(path):
    """The contract of a study file: it loads (every point's config too), and each value of its paper's
    series belongs to one of its points, on a rung it runs or on its pretraining (MAE Table 2's hours and
    speed-ups, against the study's reference point)."""
    study = Study.load(path)
    labels = {p.label for p in study.grid()}
    for key in study.series:
        series = STUDY_SERIES[key]
        assert set(series.values) <= labels, (key, set(series.values) - labels)
        assert series.rung in (*study.rungs, PRETRAIN) and series.source
        if series.metric == "speedup":
            assert series.values[study.reference] == 1.0  # the paper's speed-ups are against the study's reference


def test_table2_series_agree_with_their_hours():
    """MAE Table 2's speed-ups are its hours' ratios to the reference (42.4 / 15.4 = 2.75 printed 2.8x): the two
    series, entered separately, check each other."""
    for size in ("vitl", "vith"):
        hours, speedup = STUDY_SERIES[f"mae_t2_{size}_hours"].values, STUDY_SERIES[f"mae_t2_{size}_speedup"].values
        reference = next(label for label, v in speedup.items() if v == 1.0)
        for label, v in speedup.items():
            assert round(hours[reference] / hours[label], 1) == v, (size, label)


@pytest.fixture(scope="module")
def study_tool():
    """tools/study.py as a module: its ``main`` in this process (the command line's own path is
    tests/test_user_errors.py's, and the end-to-end tests')."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("study_tool", STUDIES.parents[1] / "tools" / "study.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", SHIPPED)
def test_dry_run_of_every_shipped_study_prints_its_gpu_hours(name, tmp_path, study_tool, capsys):
    study_tool.main([name, "--data", "imagenet=/data/imagenet", "--dry-run", "--out", str(tmp_path)])
    last = capsys.readouterr().out.strip().splitlines()[-1]
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
    ("base: configs/pretrain/mae_vit_tiny_cpu.yaml\nsweep: {model.decoder_depth: [1, 8]}\nrungs: [knn]\n"
     "series: [mae_t1a_ft]\n", "of rungs the study does not run"),
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


def class_data(root: Path) -> Path:
    """A two-class folder dataset (train/ and val/), the twins' --data imagenet."""
    write_class_folders(root / "train", 6, 0)
    write_class_folders(root / "val", 3, 1)
    return root


def rungs_of(results):
    return {p["label"]: p["rungs"] for p in results["points"]}


@pytest.mark.slow
def test_the_mae_twin_end_to_end_resumes_skips_and_reports_from_disk(tmp_path):
    """The shipped twin of MAE Table 1f (2 points x 2 seeds of kNN): one point's pretraining interrupted first
    (resumed by the study), then a rerun that skips everything, then --report-only from the folders alone."""
    data = class_data(tmp_path / "data")
    study, out = Study.load(MAE_TWIN), tmp_path / "out"
    folder = out / study.name
    random_point, block_point = study.grid()
    # Interrupt the second point's pretraining after one step, as a killed job would leave it.
    run_tool("tools/pretrain_net.py", study.base, "--max-iters", "1",
             *study.point_overrides(block_point, pretrain_folder(folder, block_point), {}), env=ENV)
    first = run_tool("tools/study.py", MAE_TWIN, "--out", out, "--data", f"imagenet={data}", env=ENV)
    assert f"[{random_point.label}] pretraining (starting)" in first.stdout
    assert f"[{block_point.label}] pretraining (resuming)" in first.stdout
    assert "2 of 2 points done" in first.stdout
    results = json.loads((folder / "results.json").read_text())
    assert [p["status"] for p in results["points"]] == ["done", "done"]
    for p in results["points"]:
        knn = p["rungs"]["knn"]["pretrained"]
        assert knn["n"] == 2 and 0 <= knn["mean"]["top1"] <= 100
        assert p["pretrain"]["images_per_s"] > 0
    table = (folder / "table.md").read_text()
    assert random_point.label in table and "knn top1" in table and "1.00x" in table  # the reference point
    assert (folder / "table.csv").read_text().count("\n") == 3
    for figure in ("figure_knn_top1.png", "figure_pretrain_speedup.png"):
        assert (folder / figure).stat().st_size > 1000
    # A rerun: every pretraining and every ladder job skipped.
    again = run_tool("tools/study.py", MAE_TWIN, "--out", out, "--data", f"imagenet={data}", env=ENV)
    assert again.stdout.count("pretraining done earlier, skipped") == 2
    assert again.stdout.count("done earlier, skipped (top1") == 4
    # --report-only collects each point from its pretraining and ladder folders (results.json is rewritten, not
    # read), with the --data of the run (plan.json) when none is given.
    (folder / "results.json").unlink()
    (folder / "figure_knn_top1.png").unlink()
    report = run_tool("tools/study.py", MAE_TWIN, "--out", out, "--report-only", env=ENV)
    assert f"{random_point.label} done; {block_point.label} done" in report.stdout
    assert rungs_of(json.loads((folder / "results.json").read_text())) == rungs_of(results)
    assert (folder / "figure_knn_top1.png").is_file()


@pytest.mark.slow
def test_the_moco_twin_through_slurm_with_submitits_local_executor(tmp_path):
    """The shipped twin of MoCo Figure 3 with --launcher slurm (submitit's local executor: the jobs run here, the
    ladder's after its pretraining), the report collected from the folders; a rerun submits nothing."""
    data = class_data(tmp_path / "data")
    study, out = Study.load(MOCO_TWIN), tmp_path / "out"
    folder = out / study.name
    slurm = ("--launcher", "slurm", "--cluster", "local")
    first = run_tool("tools/study.py", MOCO_TWIN, "--out", out, "--data", f"imagenet={data}", *slurm, env=ENV)
    assert first.stdout.count("pretraining submitted as") == 2 and first.stdout.count("(afterok)") == 2
    assert "; ".join(f"{p.label} done" for p in study.grid()) in first.stdout
    results = json.loads((folder / "results.json").read_text())
    for p in results["points"]:
        assert p["rungs"]["knn"]["pretrained"]["n"] == 2 and p["pretrain"]["images_per_s"] > 0
    assert (folder / "figure_knn_top1.png").is_file() and "knn top1" in (folder / "table.md").read_text()
    assert len(list((folder / "submitit").glob("*_submitted.pkl"))) == 4  # submitit's: 2 pretrainings, 2 ladders
    again = run_tool("tools/study.py", MOCO_TWIN, "--out", out, "--data", f"imagenet={data}", *slurm, env=ENV)
    assert "submitted as" not in again.stdout
    assert again.stdout.count("pretraining done earlier, skipped") == 2
    assert again.stdout.count("done earlier, skipped") == 2 + 4  # and each point's 2 kNN seeds


@pytest.mark.slow
def test_slurm_submission_of_a_study_with_a_stand_in_sbatch(tmp_path):
    """What SLURM is given, from sbatch's side (a stand-in that keeps each script and answers with a job id):
    each pretraining requeueable on its nodes and GPUs, running the point's resumable pretraining, and each
    point's ladder after its pretraining (afterok). Nothing runs here."""
    bin_dir, scripts = tmp_path / "bin", tmp_path / "scripts"
    bin_dir.mkdir()
    scripts.mkdir()
    (bin_dir / "sbatch").write_text(f"""#!/bin/sh
id=$((1000 + $(ls {scripts} | wc -l)))
cp "$1" {scripts}/$id.sh
echo "Submitted batch job $id"
""")
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")  # submitit looks for it; never run here
    for tool in ("sbatch", "srun"):
        (bin_dir / tool).chmod(0o755)
    out = tmp_path / "out"
    proc = run_tool("tools/study.py", MOCO_TWIN, "--out", out, "--data", f"imagenet={tmp_path}", "--launcher", "slurm",
                    "--partition", "gpu", "--nodes", "2", "--gpus-per-node", "4",
                    env={"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"})
    assert "submitted 4 jobs" in proc.stdout
    study = Study.load(MOCO_TWIN)
    for i, point in enumerate(study.grid()):
        # the pretrainings first (ids 1000, 1001), then the ladders (1002, 1003)
        pretraining, ladder = (scripts / f"{1000 + i}.sh").read_text(), (scripts / f"{1002 + i}.sh").read_text()
        for line in ("--nodes=2", "--gpus-per-node=4", "--requeue", "--partition=gpu"):
            assert f"#SBATCH {line}" in pretraining
        assert f"#SBATCH --dependency=afterok:{1000 + i}" in ladder and "--gpus-per-node" not in ladder
        with open(out / study.name / "submitit" / f"{1000 + i}_submitted.pkl", "rb") as f:
            job = pickle.load(f).function
        assert job.command[1:4] == ["tools/pretrain_net.py", str(study.base_path()), "--resume"]
        assert f"train.output_dir={pretrain_folder(out / study.name, point)}" in job.command
        assert [f.name for f in pretrain_folder(out / study.name, point).iterdir()] == ["slurm_job"]  # not run
    # A rerun while SLURM still lists the pretrainings (a stand-in squeue lists every job): nothing submitted.
    (bin_dir / "squeue").write_text("#!/bin/sh\necho 1000\n")
    (bin_dir / "squeue").chmod(0o755)
    again = run_tool("tools/study.py", MOCO_TWIN, "--out", out, "--data", f"imagenet={tmp_path}", "--launcher", "slurm",
                     env={"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"})
    assert again.stdout.count("still queued or running as 100") == 2 and len(list(scripts.iterdir())) == 4


def test_pretraining_launch_on_the_gpus_a_node_has(monkeypatch):
    from transfer import ladder
    from transfer.ladder.study import pretrain_launch

    cmd = ["python", "tools/pretrain_net.py", "cfg.yaml", "--resume"]
    monkeypatch.setattr(ladder, "_cuda_devices", lambda: 0)
    assert pretrain_launch(cmd, 1, 8) == cmd  # no GPUs (the local executor): one process
    monkeypatch.setattr(ladder, "_cuda_devices", lambda: 4)
    assert pretrain_launch(cmd, 1, 8)[:6] == ["python", "-m", "torch.distributed.run", "--standalone",
                                              "--nproc_per_node", "4"]
    several = pretrain_launch(cmd, 2, 4, node_rank=1, master="node7", port=21234)
    assert several[3:] == ["--nnodes", "2", "--node_rank", "1", "--nproc_per_node", "4", "--master_addr", "node7",
                           "--master_port", "21234", *cmd[1:]]


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
