"""The shared pretraining machinery: config, data, schedule, checkpoint/resume, DDP."""
import json
import logging
import math

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO, free_port, run_tool, shared_data
from pretrain.checkpoint import load_file
from pretrain.config import ConfigError, load_config
from pretrain.methods import methods
from pretrain.data import ImageFolderDataset, ResumableSampler
from pretrain.transforms import mae_transform
from pretrain.schedule import lr_at
from pretrain.trainer import Trainer


def train(overrides, resume=None):
    trainer = Trainer(load_config(None, overrides, method=overrides_method(overrides)), resume=resume)
    trainer.fit()
    return trainer


def overrides_method(overrides):
    return "moco" if any(o.startswith("model.queue_size") for o in overrides) else "mae"


def read_metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------ config
def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="trian"):
        load_config(None, ["trian.epochs=3"])
    with pytest.raises(ConfigError, match="train.epochs"):
        load_config(None, ["train.epochs=many"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["train.epochs"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: mae\ntrain:\n  amp: fp8\n")
    with pytest.raises(ConfigError, match="train.amp"):
        load_config(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_shipped_pretrain_configs_load():
    configs = sorted((REPO / "configs" / "pretrain").glob("*.yaml"))
    assert configs, "no pretraining configs shipped"
    for path in configs:
        cfg = load_config(path, [] if path.stem.endswith("_cpu") else ["data.path=/data/imagenet"])
        assert cfg.method in methods()
    base = load_config(REPO / "configs/pretrain/mae_vit_base_in1k.yaml", ["data.path=/data/imagenet"])
    assert base.model.norm_pix_loss and base.model.mask_ratio == 0.75 and base.optim.base_lr == 1.5e-4
    assert list(base.optim.betas) == [0.9, 0.95] and base.optim.weight_decay == 0.05
    assert base.train.batch_size * base.train.accum_iter * 8 * 8 == 4096  # 64 GPUs


def test_recipes_refuse_to_start_without_their_dataset(tmp_path):
    """An ImageNet recipe never pretrains on the synthetic scenes by default: it stops, naming data.path."""
    for path in sorted((REPO / "configs" / "pretrain").glob("*_in1k.yaml")):
        with pytest.raises(ConfigError, match="data.path"):
            load_config(path)
    with pytest.raises(ConfigError, match="data.path is not set.*data.synthetic=true"):
        load_config(None, ["train.device=cpu"], method="moco")  # the schema's defaults need a dataset too
    assert load_config(None, ["data.synthetic=true"]).data.synthetic
    cpu = load_config(REPO / "configs/pretrain/mae_vit_tiny_cpu.yaml")
    assert cpu.data.synthetic and cpu.data.path is None  # the CPU configs say so explicitly
    out = tmp_path / "vit_b"
    proc = run_tool("tools/pretrain_net.py", "configs/pretrain/mae_vit_base_in1k.yaml", "train.device=cpu",
                    f"train.output_dir={out}", check=False)
    assert proc.returncode != 0 and "data.path" in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()  # refused before anything was written


def test_every_run_logs_the_data_it_trains_on(tiny_mae_overrides, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    train(tiny_mae_overrides + ["train.epochs=1", "train.max_iters=1"])
    assert "data: 32 built-in synthetic scenes (data.synthetic=true), not a real dataset" in caplog.text
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(8):
        Image.fromarray(np.full((40, 40, 3), 30 * i, np.uint8)).save(folder / f"{i}.png")
    caplog.clear()
    # A dataset given wins over the config's synthetic default (a CPU config pointed at real images).
    train([o for o in tiny_mae_overrides if "output_dir" not in o]
          + [f"data.path={folder}", f"train.output_dir={tmp_path}/real", "train.max_iters=1"])
    assert f"data: 8 images from {folder.resolve()}" in caplog.text and "synthetic scenes" not in caplog.text


# -------------------------------------------------------------- schedules
def test_warmup_then_half_cycle_cosine():
    assert lr_at(0, 1.0, 100, warmup_epochs=10) == 0
    assert lr_at(5, 1.0, 100, warmup_epochs=10) == pytest.approx(0.5)
    assert lr_at(10, 1.0, 100, warmup_epochs=10) == pytest.approx(1.0)
    assert lr_at(55, 1.0, 100, warmup_epochs=10) == pytest.approx(0.5)
    assert lr_at(100, 1.0, 100, warmup_epochs=10, min_lr=0.1) == pytest.approx(0.1)
    assert lr_at(130, 1.0, 200, schedule="step", milestones=[120, 160]) == pytest.approx(0.1)
    assert lr_at(119.9, 1.0, 200, schedule="step", milestones=[120, 160]) == 1.0
    assert lr_at(170, 1.0, 200, schedule="step", milestones=[120, 160]) == pytest.approx(0.01)


# -------------------------------------------------------------------- data
def test_sampler_shards_and_resumes_midway():
    full = [ResumableSampler(10, r, 2, seed=3) for r in range(2)]
    for s in full:
        s.set_position(epoch=1)
    shards = [list(s) for s in full]
    assert sorted(i for sh in shards for i, _ in sh)[:10] == sorted(range(10))
    late = ResumableSampler(10, 1, 2, seed=3)
    late.set_position(epoch=1, start=2)
    assert list(late) == shards[1][2:]  # same indices and same per-sample seeds
    other = ResumableSampler(10, 0, 2, seed=3)
    other.set_position(epoch=2)
    assert [i for i, _ in other] != [i for i, _ in shards[0]]


def test_per_sample_augmentation_is_seeded(tmp_path):
    from PIL import Image

    for i in range(2):
        Image.new("RGB", (40, 30), (i * 100, 50, 20)).save(tmp_path / f"{i}.png")
    ds = ImageFolderDataset(tmp_path, mae_transform(16))
    a, b, c = ds[(0, 123)][0], ds[(0, 123)][0], ds[(0, 124)][0]
    assert torch.equal(a, b)
    torch.manual_seed(0)
    before = torch.rand(1)
    torch.manual_seed(0)
    ds[(1, 5)]
    assert torch.equal(torch.rand(1), before)  # the caller's RNG is untouched
    assert a.shape == (3, 16, 16) and c.shape == a.shape


def test_unreadable_images_are_reported_and_skipped(tmp_path, caplog):
    from PIL import Image

    from pretrain.errors import DataError

    folder = tmp_path / "imgs" / "cls"
    folder.mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (20, 20), (i * 80, 0, 0)).save(folder / f"ok{i}.jpg")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    good = folder / "ok0.jpg"
    (folder / "truncated.jpg").write_bytes(good.read_bytes()[:200])
    bad_list = tmp_path / "bad.txt"
    ds = ImageFolderDataset(tmp_path / "imgs", mae_transform(16), bad_list=str(bad_list), max_bad_fraction=1.0)
    out = [ds[i] for i in range(len(ds))]
    assert len(out) == 5 and all(x.shape == (3, 16, 16) for x, _ in out)
    reported = bad_list.read_text()
    assert "broken.jpg" in reported and "truncated.jpg" in reported and "ok1" not in reported
    assert "skipping unreadable image" in caplog.text
    strict = ImageFolderDataset(tmp_path / "imgs", mae_transform(16), max_bad_fraction=0.0)
    with pytest.raises(DataError, match="unreadable images"):
        for i in range(len(strict)):
            strict[i]

    # Workers hold copies of the dataset, made anew each epoch: the list is their shared record,
    # so a file is listed once and the limit counts distinct files across copies.
    for _ in range(2):
        worker = ImageFolderDataset(tmp_path / "imgs", mae_transform(16), bad_list=str(bad_list), max_bad_fraction=0.5)
        worker[0], worker[4]  # broken.jpg, truncated.jpg (sorted: broken, ok0-2, truncated)
    assert bad_list.read_text() == reported
    other = tmp_path / "other" / "cls"
    other.mkdir(parents=True)
    for name in ("a_ok", "b_bad", "c_ok", "d_bad", "e_ok"):
        if "bad" in name:
            (other / f"{name}.jpg").write_bytes(b"not an image")
        else:
            Image.new("RGB", (20, 20)).save(other / f"{name}.jpg")
    copies = [ImageFolderDataset(tmp_path / "other", mae_transform(16), bad_list=str(tmp_path / "b2.txt"),
                                 max_bad_fraction=0.2) for _ in range(2)]  # 1 of 5 allowed
    copies[0][1]  # one copy meets b_bad: 1 bad file, allowed
    with pytest.raises(DataError, match="2 unreadable images"):
        copies[1][3]  # another meets d_bad: 2 distinct bad files over the run

def test_flat_and_imagenet_style_folders(tmp_path):
    from PIL import Image
    from pretrain.data import scan_image_folder

    (tmp_path / "flat").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "flat" / "a.png")
    files, labels, classes = scan_image_folder(tmp_path / "flat")
    assert len(files) == 1 and labels == [-1] and classes == []
    for c in ("n01", "n02"):
        (tmp_path / "inet" / "train" / c).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "inet" / "train" / c / "x.JPEG")
    files, labels, classes = scan_image_folder(tmp_path / "inet")
    assert classes == ["n01", "n02"] and labels == [0, 1]
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no images"):
        scan_image_folder(tmp_path / "empty")


# --------------------------------------------------------------- training
def test_training_steps_on_real_images_lower_the_loss():
    """A fixed batch of real photos, a fixed mask: 30 AdamW steps must lower the loss clearly."""
    from pretrain.data import ImageFolderDataset
    from pretrain.methods.mae import create_mae
    from pretrain.transforms import eval_transform

    root = shared_data("coco_tiny50") / "val2017"
    ds = ImageFolderDataset(root, eval_transform(64, crop_pct=1.0))
    imgs = ds.device_transform(torch.stack([ds[i][0] for i in range(8)]), "cpu")
    torch.manual_seed(0)
    model = create_mae("mae_vit_pico_patch8", img_size=64, norm_pix_loss=True, decoder_depth=1,
                       decoder_embed_dim=64, decoder_num_heads=4)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95))
    noise = torch.rand(8, 64)
    losses = []
    for _ in range(30):
        loss, _, _ = model(imgs, 0.75, noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses


def test_trainer_writes_logs_and_checkpoints_in_authors_format(tiny_mae_overrides, tmp_path):
    trainer = train(tiny_mae_overrides)
    run = tmp_path / "run"
    records = read_metrics(run)
    assert len(records) == 8 and records[-1]["step"] == 8  # 32 images / 8 = 4 steps x 2 epochs
    assert {"loss", "lr", "images_per_s", "memory_mb", "epoch", "data_wait"} <= set(records[0])
    assert all(0.0 <= r["data_wait"] <= 1.0 for r in records)
    assert records[0]["lr"] == 0.0 and records[4]["lr"] == pytest.approx(1.5e-4 * 8 / 256)  # warm-up, then peak
    ckpt = load_file(run / "checkpoint-1.pth")  # weights_only=True
    assert ckpt["epoch"] == 1 and set(ckpt) >= {"model", "optimizer", "scaler", "epoch"}
    assert "decoder_embed.weight" in ckpt["model"]
    assert (run / "checkpoint-last.pth").is_file() and (run / "config.yaml").is_file()
    # Weight decay: none on biases and norms.
    groups = trainer.optimizer.param_groups
    assert {g["weight_decay"] for g in groups} == {0.0, 0.05}
    no_decay = next(g for g in groups if g["weight_decay"] == 0.0)["params"]
    assert all(p.ndim <= 1 for p in no_decay)


# Every backend this machine can run: on a CPU, data.backend=dali loads with pil (the fallback, end to end).
BACKENDS_HERE = ["pil", pytest.param("dali", marks=pytest.mark.slow)]


@pytest.mark.parametrize("backend", BACKENDS_HERE)
@pytest.mark.parametrize("amp", ["none", "bf16"])
def test_resume_ends_where_an_uninterrupted_run_ends(tiny_mae_overrides, tmp_path, amp, backend):
    base = [o for o in tiny_mae_overrides if not o.startswith("train.output_dir")] + [
        f"train.amp={amp}", "train.accum_iter=2", "train.batch_size=4",  # 4 steps of 2 micro-batches per epoch
        f"data.backend={backend}"]
    straight = train(base + [f"train.output_dir={tmp_path}/a"])
    # Interrupted in epoch 0 (after step 1), resumed, interrupted in epoch 1 (step 6), resumed to the end.
    train(base + [f"train.output_dir={tmp_path}/b", "train.max_iters=1"])
    train(base + [f"train.output_dir={tmp_path}/b", "train.max_iters=6"], resume="auto")
    resumed = train(base + [f"train.output_dir={tmp_path}/b"], resume="auto")
    assert resumed.step == straight.step == 8
    for (k, a), (_, b) in zip(straight.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(a, b), k
    la = [r["loss"] for r in read_metrics(tmp_path / "a")]
    lb = [r["loss"] for r in read_metrics(tmp_path / "b")]
    assert la == lb


@pytest.mark.slow
def test_ddp_two_processes_gloo(tiny_mae_overrides, tmp_path):
    """torchrun with 2 CPU processes (gloo): both ranks train in step; rank 0 writes."""
    overrides = [o.replace(f"{tmp_path}/run", f"{tmp_path}/ddp") for o in tiny_mae_overrides]
    proc = run_tool("-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", free_port(),
                    "tools/pretrain_net.py", "--method", "mae", *overrides, "train.dist_backend=gloo",
                    env={"OMP_NUM_THREADS": "1"})
    assert "2 process(es)" in proc.stderr
    assert "effective batch 16" in proc.stderr
    records = read_metrics(tmp_path / "ddp")
    assert len(records) == 4  # 32 images / (8 x 2 processes) = 2 steps x 2 epochs
    assert all(math.isfinite(r["loss"]) for r in records)
    ckpt = load_file(tmp_path / "ddp" / "checkpoint-last.pth")
    assert len(ckpt["trainer"]["rng"]) == 2 and ckpt["trainer"]["world_size"] == 2


def test_cli_reports_bad_config(tmp_path):
    proc = run_tool("tools/pretrain_net.py", "--method", "mae", "train.epocs=1", check=False)
    assert proc.returncode != 0 and "epocs" in proc.stderr


def test_slurm_script(tmp_path):
    run_tool("tools/submit_slurm.py", "configs/pretrain/mae_vit_large_in1k.yaml", "--nodes", "8",
                    "--partition", "gpu", "--dry-run", f"train.output_dir={tmp_path}/out", "data.path=/data/in1k")
    script = (tmp_path / "out" / "slurm" / "mae_vit_large_in1k.sh").read_text()
    assert "#SBATCH --nodes=8" in script and "#SBATCH --gpus-per-node=8" in script
    assert "#SBATCH --partition=gpu" in script and "#SBATCH --requeue" in script
    assert "--nproc_per_node 8" in script and "--resume" in script and "data.path=/data/in1k" in script
    bad = run_tool("tools/submit_slurm.py", "configs/pretrain/mae_vit_large_in1k.yaml", "--dry-run",
                   "data.path=/data/in1k", "train.nope=1", check=False)
    assert bad.returncode != 0 and "nope" in bad.stderr


def test_amp_auto_is_a_setting():
    """``train.amp=auto`` reads; what it decides on each device: tests/test_precision.py."""
    assert load_config(None, ["train.amp=auto", "data.synthetic=true"]).train.amp == "auto"
