"""tools/evaluate.py: the plan of the ladder for the shipped recipes, the verdict from seeds, and the quick
suite end to end on tiny MAE and MoCo checkpoints (local launcher, and SLURM through submitit's local
executor); reruns skip what finished, failures are recorded and reported, results are keyed by content."""
import json
import math
from pathlib import Path

import pytest
import torch

from conftest import run_tool

TRAIN = ("train.progress=false train.tensorboard=false data.num_workers=0 data.img_size=32 "
         "train.epochs=2 train.batch_size=16")


def welch(a, b):
    """Welch's t statistic and its Welch-Satterthwaite degrees of freedom, from the definitions."""
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    va = sum((x - ma) ** 2 for x in a) / (len(a) - 1)
    vb = sum((x - mb) ** 2 for x in b) / (len(b) - 1)
    se2 = va / len(a) + vb / len(b)
    df = se2 ** 2 / ((va / len(a)) ** 2 / (len(a) - 1) + (vb / len(b)) ** 2 / (len(b) - 1))
    return (ma - mb) / math.sqrt(se2), df


def test_verdict_is_welchs_test_on_the_seeds():
    from scipy import stats

    from transfer.ladder import verdict

    assert verdict([50.0], [40.0])[0] == "undecided"  # never from one run
    a, b = [50.1, 50.4, 49.8], [44.0, 44.9, 45.2]
    word, why = verdict(a, b)
    t, df = welch(a, b)
    p = 2 * stats.t.sf(abs(t), df)
    assert word == "better" and p < 0.05 and f"t = {t:.2f}" in why and f"p = {p:.3f}" in why
    assert verdict(b, a)[0] == "worse"
    close = [45.0, 46.5, 44.1]
    t, df = welch(close, b)
    assert 2 * stats.t.sf(abs(t), df) >= 0.05 and verdict(close, b)[0] == "no clear difference"


@pytest.fixture(scope="module")
def big_files(tmp_path_factory):
    """A ViT-B/16 MAE encoder and a MoCo v2 R-50, in the authors' layouts (half precision: only shapes matter)."""
    from pretrain.methods.mae import create_mae, encoder_state_dict
    from pretrain.methods.moco import build_moco, moco_checkpoint

    root = tmp_path_factory.mktemp("big")
    mae = create_mae("mae_vit_base_patch16")
    torch.save({"model": {k: v.half() for k, v in encoder_state_dict(mae.state_dict()).items()}},
               root / "mae_pretrain_vit_base.pth")
    moco = moco_checkpoint(build_moco("resnet50", K=256, mlp=True), "resnet50", epoch=800)
    moco["state_dict"] = {k: v.half() for k, v in moco["state_dict"].items()}
    torch.save(moco, root / "moco_v2_800ep_pretrain.pth.tar")
    for d in ("imagenet/train", "imagenet/val", "ade/images/validation", "ade/annotations/validation",
              "coco/annotations", "coco/train2017", "coco/val2017"):
        (root / d).mkdir(parents=True)
    for split in ("train", "val"):  # the layout each rung's data check asks for (contents: a dry run reads none)
        (root / "coco" / "annotations" / f"instances_{split}2017.json").write_text("{}")
    return root


def test_dry_run_prints_the_full_ladder_with_gpu_hours(big_files, tmp_path):
    from transfer.ladder.rung import get_rung

    data = [f"imagenet={big_files / 'imagenet'}", f"ade20k={big_files / 'ade'}", f"coco={big_files / 'coco'}"]
    out = tmp_path / "ladder"
    # The default baseline is the supervised twin, found in the weights folder (torch.hub's unless --weights).
    weights = tmp_path / "hub" / "checkpoints"
    weights.mkdir(parents=True)
    deit = weights / "deit_base_patch16_224-b5f2ef4d.pth"
    deit.write_bytes(b"")
    vit = run_tool("tools/evaluate.py", big_files / "mae_pretrain_vit_base.pth", "--suite", "full", "--dry-run",
                   "--out", out, "--data", *data, "--rung-seeds", "finetune=1", "detection=1", "segmentation=1",
                   "cascade=1", env={"TORCH_HOME": str(tmp_path)}).stdout
    baseline = [ln for ln in vit.splitlines() if " baseline " in ln]
    # Every rung with a ViT-B recipe whose data is given: the six first rungs and Cascade (COCO).
    assert len(baseline) == 7 and all(str(deit) in ln for ln in baseline)
    assert "vit vit_base_patch16, pretraining mae" in vit
    for rung, config in (("linear", "mae_vit_base_linear.yaml"), ("finetune", "mae_vit_base_finetune.yaml"),
                         ("detection", "mask_rcnn_vitdet_b_100ep.py"),
                         ("segmentation", "upernet_mae-vit-b_8xb2-amp-160k_ade20k-512x512.py")):
        line = next(ln for ln in vit.splitlines() if ln.startswith(rung) and "pretrained" in ln)
        assert config in line
    assert "tools/knn_eval.py" in vit and f"tools/dense_probe.py {deit}" in vit
    total = float(vit.split("jobs, about ")[1].split(" GPU-hours")[0])
    cascade = get_rung("cascade").recipes["vit_base_patch16"].gpu_hours
    assert total == pytest.approx(2 * (3 * (0.2 + 13 + 0.5) + 90 + 1030 + 125 + cascade), abs=0.1)  # the cost table
    assert not out.exists()  # a dry run writes nothing
    r50 = run_tool("tools/evaluate.py", big_files / "moco_v2_800ep_pretrain.pth.tar", "--suite", "full",
                   "--dry-run", "--out", out, "--data", *data[:2], "--baseline", "random").stdout
    assert "tools/dense_probe.py --random-init resnet50" in r50
    assert "resnet resnet50, pretraining moco_v2" in r50
    assert "skipped finetune: no shipped recipe for resnet50" in r50
    assert "skipped detection: no coco data" in r50
    assert "upernet_r50-moco_4xb4-80k_ade20k-512x512.py" in r50 and "moco_r50_linear.yaml" in r50
    bad = run_tool("tools/evaluate.py", big_files / "moco_v2_800ep_pretrain.pth.tar", "--dry-run",
                   "--weights", weights, check=False)  # no supervised R-50 there
    assert bad.returncode != 0 and "resnet50-0676ba61.pth" in bad.stderr and str(weights) in bad.stderr


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A few-step MAE pico, MoCo R-18 and MoCo v3 ViT-pico from the project's trainer, a labelled synthetic folder, a
    segmentation folder."""
    from pretrain.config import load_config
    from pretrain.synthetic import write_segmentation_dataset
    from pretrain.trainer import Trainer
    from transfer.classification.data import write_synthetic_folder

    root = tmp_path_factory.mktemp("tiny")
    common = ["data.img_size=32", "data.synthetic=true", "data.synthetic_images=32", "data.num_workers=0",
              "train.batch_size=8", "train.epochs=1", "train.device=cpu", "train.progress=false",
              "train.tensorboard=false"]
    Trainer(load_config(None, common + ["model.arch=mae_vit_pico_patch8", "model.decoder_depth=1",
                                        "model.decoder_embed_dim=32", "model.decoder_num_heads=2",
                                        "optim.warmup_epochs=0", f"train.output_dir={root}/mae"], method="mae")).fit()
    Trainer(load_config(None, common + ["model.arch=resnet18", "model.queue_size=64", "model.mlp=true",
                                        "model.bn_splits=2", f"train.output_dir={root}/moco"], method="moco")).fit()
    Trainer(load_config(None, common + ["model.arch=vit_pico", "model.dim=32", "model.mlp_dim=64",
                                        "optim.warmup_epochs=0", f"train.output_dir={root}/mocov3"],
                        method="mocov3")).fit()
    write_synthetic_folder(root / "cls", per_class=8, size=32)
    write_segmentation_dataset(root / "seg", "train", 8, size=(32, 32))
    write_segmentation_dataset(root / "seg", "val", 4, size=(32, 32), seed=1)
    return root


def ladder(tiny, checkpoint, out, *extra, check=True):
    args = ["tools/evaluate.py", checkpoint, "--suite", "quick", "--seeds", "2", "--baseline", "random", "--out", out,
            "--data", f"imagenet={tiny / 'cls'}", f"ade20k={tiny / 'seg'}",
            "--rung-args", f"linear={TRAIN}", "knn=--img-size 32", "dense_probe=--iters 20 --crop 32 --batch 4",
            *extra]
    return run_tool(*args, check=check, timeout=900)


@pytest.mark.slow
def test_quick_suite_end_to_end_with_two_seeds(tiny, tmp_path):
    """On the MoCo v3 ViT checkpoint; the demo's test runs the quick suite and more on a MAE and a MoCo checkpoint
    (tests/test_demo.py), so one here is enough for what the demo does not check (every job's line, a rerun)."""
    from transfer.results import read_results

    which = "mocov3/checkpoint_last.pth.tar"
    out = tmp_path / "ladder"
    proc = ladder(tiny, tiny / which, out)
    folder = next(out.iterdir())
    plan = json.loads((folder / "plan.json").read_text())
    assert (plan["checkpoint"]["pretrain"], plan["checkpoint"]["backbone"]) == ("moco_v3", "vit_pico_patch8")
    assert len(plan["jobs"]) == 3 * 2 * 2  # knn, linear, dense probe x (pretrained, random) x 2 seeds
    for job in plan["jobs"]:
        rec = read_results(Path(job["folder"]) / "results.json")
        assert rec["pretrain"] == ("random" if job["subject"]["role"] == "baseline" else plan["checkpoint"]["pretrain"])
    assert proc.stdout.count(": starting ...") == 12
    for rung in ("knn", "linear", "dense_probe"):
        assert any(line.startswith(f"- {rung}: ") and "(n=2)" in line for line in proc.stdout.splitlines()), rung
    report = (folder / "report" / "report.md").read_text()
    assert "## Verdicts" in report and " ± " in report and "curves.png" in report
    assert (folder / "report" / "curves.png").stat().st_size > 1000
    assert all(p.stat().st_size > 1000 for p in (folder / "report").glob("*.png"))
    # A rerun skips every finished job and rewrites no results.
    before = {p: p.stat().st_mtime_ns for p in folder.rglob("results.json")}
    again = ladder(tiny, tiny / which, out)
    assert again.stdout.count("done earlier, skipped") == 12
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("results.json")} == before


@pytest.mark.slow
def test_a_failing_rung_is_recorded_and_the_others_go_on(tiny, tmp_path):
    out = tmp_path / "ladder"
    proc = ladder(tiny, tiny / "mae/checkpoint-last.pth", out, "--rungs", "knn,linear", "--seeds", "1",
                  "--rung-args", "knn=--no-such-flag", f"linear={TRAIN}")
    folder = next(out.iterdir())
    failed = json.loads((folder / "knn" / "pretrained" / "seed0" / "failed.json").read_text())
    assert failed["returncode"] != 0 and Path(failed["log"]).is_file()
    assert "knn/pretrained/seed0: FAILED" in proc.stdout
    assert (folder / "linear" / "baseline" / "seed0" / "results.json").is_file()  # the others went on
    table = (folder / "report" / "knn.md").read_text()
    assert "failed: 1 of 1 seeds" in table  # shown as failed, not missing silently
    # The same file name with other content is another checkpoint: another folder.
    other = tmp_path / "other" / "checkpoint-last.pth"
    other.parent.mkdir()
    ckpt = torch.load(tiny / "mae/checkpoint-last.pth")
    ckpt["model"]["pos_embed"] = ckpt["model"]["pos_embed"] + 1
    torch.save(ckpt, other)
    ladder(tiny, other, out, "--rungs", "knn", "--seeds", "1", "--rung-args", "knn=--img-size 32")
    assert len(list(out.iterdir())) == 2


@pytest.mark.slow
def test_slurm_launcher_through_submitits_local_executor(tiny, tmp_path):
    from transfer.ladder import LadderJob

    out = tmp_path / "ladder"
    proc = ladder(tiny, tiny / "moco/checkpoint_last.pth.tar", out, "--rungs", "linear", "--seeds", "1",
                  "--launcher", "slurm", "--cluster", "local")
    folder = next(out.iterdir())
    assert proc.stdout.count("submitted as") == 2
    assert (folder / "linear" / "pretrained" / "seed0" / "results.json").is_file()
    assert (folder / "report" / "report.md").is_file() and "- linear: " in proc.stdout
    assert list((folder / "submitit").glob("*_submitted.pkl"))  # submitit's own records
    # Preemption: submitit calls checkpoint(), which requeues the same job, resuming.
    plan = __import__("transfer.ladder", fromlist=["plan"])
    job = plan.plan(tiny / "moco/checkpoint_last.pth.tar", out, ["linear"], {"imagenet": str(tiny / "cls")}, 1,
                     "random").jobs[0]
    requeued = LadderJob(job).checkpoint()
    assert isinstance(requeued.function, LadderJob) and requeued.function.resume and requeued.function.job is job
