"""The three protocols end to end on a CPU: they learn above chance, frozen parts stay frozen
(and the sanity check catches it when they do not), resumption is exact, evaluation-only runs,
the command line, real images, and two gloo processes."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import free_port, run_tool, shared_data

CLASSES = 4  # chance: 25 %


def write_colour_classes(root, n_train=16, n_val=6, size=32, seed=0):
    """``root/{train,val}/class<c>/*.png``: noise tinted by a class colour (separable, but not trivially)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    tints = np.array([[220, 40, 40], [40, 200, 40], [40, 60, 220], [230, 200, 30]])
    for split, n in (("train", n_train), ("val", n_val)):
        for c in range(CLASSES):
            folder = Path(root) / split / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = 0.5 * rng.uniform(0, 255, (size, size, 3)) + 0.5 * tints[c] + rng.normal(0, 20, (size, size, 3))
                Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / f"{i:03d}.png")
    return Path(root)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_colour_classes(tmp_path_factory.mktemp("colours"))


@pytest.fixture(scope="module")
def mae_file(tmp_path_factory):
    """A pico MAE in the authors' full-checkpoint layout ({"model": ..., "epoch": ...})."""
    from pretrain.methods.mae import create_mae

    torch.manual_seed(0)
    mae = create_mae("mae_vit_pico_patch8", img_size=32, decoder_depth=1, decoder_embed_dim=32, decoder_num_heads=2)
    path = tmp_path_factory.mktemp("mae") / "checkpoint-799.pth"
    torch.save({"model": mae.state_dict(), "epoch": 799}, path)
    return path


@pytest.fixture(scope="module")
def moco_file(tmp_path_factory):
    """A MoCo v2 ResNet-18 in the authors' layout, with batch-norm statistics that are not the defaults."""
    from pretrain.methods.moco import build_moco, moco_checkpoint

    torch.manual_seed(0)
    moco = build_moco("resnet18", K=64, mlp=True)
    moco.train()
    with torch.no_grad():
        for _ in range(3):
            moco.encoder_q(torch.randn(8, 3, 32, 32))  # moves running_mean / var away from 0 / 1
    path = tmp_path_factory.mktemp("moco") / "checkpoint_0199.pth.tar"
    torch.save(moco_checkpoint(moco, "resnet18", epoch=200), path)
    return path


def overrides(data, out, *extra):
    return [f"data.path={data}", "data.img_size=32", "data.num_workers=0", "train.batch_size=8", "train.device=cpu",
            "train.progress=false", "train.tensorboard=false", "train.log_every=4", f"train.output_dir={out}", *extra]


def train(protocol, args, resume=None):
    from transfer.classification.config import load_cls_config
    from transfer.classification.engine import ClassificationTrainer

    trainer = ClassificationTrainer(load_cls_config(None, args, protocol=protocol), resume=resume)
    trainer.fit()
    return trainer


def read_json(path):
    return json.loads(Path(path).read_text())


# -------------------------------------------------------------- learning
@pytest.fixture(scope="module")
def mae_linear_run(data, mae_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("mae_linear")
    # LARS steps are relative to the weight norm: a short run needs the paper's actual lr (6.4), not 0.1 x 8 / 256.
    trainer = train("mae_linear", overrides(data, out, "model.arch=auto", f"model.checkpoint={mae_file}",
                                            "train.epochs=8", "optim.warmup_epochs=1", "optim.lr=4.0"))
    return trainer, out


def test_mae_linear_probe_learns_with_the_encoder_frozen(mae_linear_run, mae_file):
    trainer, out = mae_linear_run
    res = read_json(out / "results.json")
    assert res["task"] == "imagenet_linear" and res["backbone"] == "vit_pico_patch8" and res["pretrain"] == "mae"
    assert res["metrics"]["top1"] >= 75.0, res["metrics"]  # chance is 25 %
    assert res["metrics"]["top5"] is None  # 4 classes: top-5 says nothing
    assert res["recipe"]["optimizer"] == "lars" and res["recipe"]["epochs"] == 8 and res["checkpoint"] == str(mae_file)
    assert res["recipe"]["pretrain_epochs"] == 800  # the authors' layout stores the last finished epoch, 799
    # Both the final epoch's top-1 and the best epoch's (what the authors report), with its epoch.
    evals = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "images" in r]
    assert len(evals) == 8 and res["metrics"]["top1"] == evals[-1]["top1"]
    best = max(evals, key=lambda r: r["top1"])
    assert res["metrics"]["top1_best"] == best["top1"] >= res["metrics"]["top1"]
    assert res["best_epoch"] == best["epoch"] and [r["top1_best"] for r in evals][-1] == best["top1"]
    # Independently of the tool's own check: every encoder tensor equals the MAE file's, bit for bit.
    trained = torch.load(out / "checkpoint-last.pth")["model"]
    pretrained = torch.load(mae_file)["model"]
    encoder = [k for k in trained if not k.startswith("head.")]
    assert len(encoder) == len([k for k in pretrained if not k.startswith(("decoder_", "mask_token"))])
    assert all(torch.equal(trained[k], pretrained[k]) for k in encoder)
    # The head did learn: the linear layer moved, the (affine-free) BatchNorm collected statistics.
    assert {k for k in trained if k.startswith("head.")} == {
        "head.0.running_mean", "head.0.running_var", "head.0.num_batches_tracked", "head.1.weight", "head.1.bias"}
    assert int(trained["head.0.num_batches_tracked"]) == 8 * 8  # 8 epochs of 64 images / 8
    assert trained["head.0.running_var"].ne(1).all()
    # Only the head is in the optimizer.
    assert sum(len(g["params"]) for g in trainer.optimizer.param_groups) == 2


def test_moco_linear_learns_with_the_backbone_frozen_in_eval_mode(data, moco_file, tmp_path):
    # lr 1 rather than 30: the features of this untrained backbone are not on ImageNet's scale.
    trainer = train("moco_linear", overrides(data, tmp_path, "model.arch=auto", f"model.checkpoint={moco_file}",
                                             "train.epochs=3", "optim.lr=1.0", "optim.milestones=[2]"))
    res = read_json(tmp_path / "results.json")
    assert res["backbone"] == "resnet18" and res["pretrain"] == "moco_v2" and res["metrics"]["top1"] >= 75.0
    assert res["recipe"]["pretrain_epochs"] == 200  # MoCo's layout stores the next epoch
    trained = torch.load(tmp_path / "checkpoint-last.pth")["model"]
    query = {k[len("module.encoder_q."):]: v for k, v in torch.load(moco_file)["state_dict"].items()
             if k.startswith("module.encoder_q.") and ".fc." not in k}
    assert set(query) == {k for k in trained if not k.startswith("fc.")}
    for k, v in query.items():  # BN running statistics included: eval mode kept them
        assert torch.equal(trained[k], v), k
    params = [p for g in trainer.optimizer.param_groups for p in g["params"]]
    assert len(params) == 2 and params[0] is trainer.model.fc.weight and params[1] is trainer.model.fc.bias
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.1)  # x0.1 after the milestone
    assert torch.load(tmp_path / "checkpoint-last.pth")["optimizer"]["param_groups"][0]["momentum"] == 0.9


def test_sanity_check_fails_loudly_when_frozen_weights_move(data, moco_file, tmp_path, monkeypatch):
    """The classic bug: a backbone left in train mode moves its batch-norm statistics."""
    from transfer.classification.engine import FrozenWeightsChanged
    from transfer.classification.protocols import MoCoLinear

    monkeypatch.setattr(MoCoLinear, "set_train_mode", lambda self, model: model.train())
    with pytest.raises(FrozenWeightsChanged, match="running_mean"):
        train("moco_linear", overrides(data, tmp_path, "model.arch=resnet18", f"model.checkpoint={moco_file}",
                                       "train.epochs=1", "optim.lr=1.0"))
    assert not (tmp_path / "results.json").exists()


def test_mae_finetune_learns_with_the_papers_regularisation(data, mae_file, tmp_path):
    trainer = train("mae_finetune", overrides(data, tmp_path, "model.arch=auto", f"model.checkpoint={mae_file}",
                                              "train.epochs=5", "optim.warmup_epochs=1", "optim.base_lr=1e-2",
                                              "model.layer_decay=0.75"))
    cfg = trainer.cfg
    assert cfg.data.auto_augment == "rand-m9-mstd0.5-inc1" and cfg.data.mixup == 0.8 and cfg.model.drop_path == 0.1
    assert type(trainer.criterion).__name__ == "SoftTargetCrossEntropy" and trainer.mixup is not None
    res = read_json(tmp_path / "results.json")
    assert res["task"] == "imagenet_finetune" and res["metrics"]["top1"] >= 75.0, res["metrics"]
    assert res["recipe"]["layer_decay"] == 0.75 and res["recipe"]["mixup"] == 0.8
    # The last scheduled lr, spread over the layers: head x1, blocks.3 x0.75, ..., embeddings x0.75^5.
    groups = torch.load(tmp_path / "checkpoint-last.pth")["optimizer"]["param_groups"]
    top = max(g["lr"] for g in groups)
    assert top > 0 and {round(g["lr"] / top, 6) for g in groups} == {round(0.75**k, 6) for k in range(6)}
    # End to end: everything trained, the fresh fc_norm included.
    trained = torch.load(tmp_path / "checkpoint-last.pth")["model"]
    pretrained = torch.load(mae_file)["model"]
    assert not torch.equal(trained["blocks.0.attn.qkv.weight"], pretrained["blocks.0.attn.qkv.weight"])
    assert not torch.equal(trained["fc_norm.weight"], torch.ones_like(trained["fc_norm.weight"]))


# ---------------------------------------------------------------- resume
def test_resume_ends_where_an_uninterrupted_run_ends(data, mae_file, tmp_path):
    """Fine-tuning draws the most randomness (crops, RandAugment, erasing, mixup, drop path):
    interrupted twice mid-epoch and resumed, it must end bit for bit where a straight run ends,
    also with another number of loader workers."""
    base = ["model.arch=auto", f"model.checkpoint={mae_file}", "train.epochs=2", "optim.warmup_epochs=1"]
    straight = train("mae_finetune", overrides(data, tmp_path / "a", *base, "train.log_every=1"))
    b = overrides(data, tmp_path / "b", *base, "data.num_workers=2", "train.log_every=1")
    train("mae_finetune", b + ["train.max_iters=5"])
    assert not (tmp_path / "b" / "results.json").exists()
    train("mae_finetune", b + ["train.max_iters=11"], resume="auto")  # 8 steps an epoch: stops in epoch 1
    resumed = train("mae_finetune", b, resume="auto")
    assert resumed.step == straight.step == 16
    for (k, x), (_, y) in zip(straight.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(x, y), k
    ra, rb = read_json(tmp_path / "a" / "results.json"), read_json(tmp_path / "b" / "results.json")
    assert ra["metrics"] == rb["metrics"]
    def losses(run):  # training records (evaluation records carry "images")
        records = map(json.loads, (tmp_path / run / "metrics.jsonl").read_text().splitlines())
        return [r["loss"] for r in records if "images" not in r]

    assert losses("a") == losses("b")


def test_resume_refuses_a_file_without_training_state(data, mae_linear_run, tmp_path):
    from pretrain.checkpoint import CheckpointFormatError

    _, out = mae_linear_run
    bare = tmp_path / "bare.pth"
    torch.save({"model": torch.load(out / "checkpoint-last.pth")["model"]}, bare)
    with pytest.raises(CheckpointFormatError, match="--eval-only"):
        train("mae_linear", overrides(data, tmp_path / "r", "model.arch=mae_vit_pico_patch8"), resume=str(bare))


# ------------------------------------------------------------- eval only
def test_eval_only_reproduces_the_run_and_reads_other_classifier_files(data, mae_linear_run, tmp_path):
    import torchvision

    from pretrain.checkpoint import CheckpointFormatError
    from transfer.classification.config import load_cls_config
    from transfer.classification.engine import ClassificationTrainer

    trainer, out = mae_linear_run
    args = overrides(data, tmp_path / "e", "model.arch=mae_vit_pico_patch8")
    cfg = load_cls_config(None, args, protocol="mae_linear")
    res = ClassificationTrainer(cfg, resume=str(out / "checkpoint-last.pth"), eval_only=True).run_eval_only()
    assert res["top1"] == read_json(out / "results.json")["metrics"]["top1"]
    written = read_json(tmp_path / "e" / "results.json")
    assert written["recipe"]["eval_only"] and written["pretrain"] == "mae"  # carried over from the checkpoint
    # The authors' layout (their linear-probe / fine-tuned files are {"model": ...}).
    torch.save({"model": torch.load(out / "checkpoint-last.pth")["model"], "epoch": 89}, tmp_path / "authors.pth")
    again = ClassificationTrainer(cfg, resume=str(tmp_path / "authors.pth"), eval_only=True).run_eval_only()
    assert again["top1"] == res["top1"]
    # A torchvision classifier evaluates through the MoCo protocol's model as it is.
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(num_classes=CLASSES).state_dict(), tmp_path / "tv.pth")
    tv_cfg = load_cls_config(None, overrides(data, tmp_path / "tv", "model.arch=resnet18", "model.pretrain=supervised"),
                             protocol="moco_linear")
    tv = ClassificationTrainer(tv_cfg, resume=str(tmp_path / "tv.pth"), eval_only=True).run_eval_only()
    assert 0 <= tv["top1"] <= 100 and tv["images"] == CLASSES * 6
    assert read_json(tmp_path / "tv" / "results.json")["pretrain"] == "supervised"
    with pytest.raises(CheckpointFormatError, match="does not hold"):
        ClassificationTrainer(cfg, resume=str(tmp_path / "tv.pth"), eval_only=True)
    with pytest.raises(FileNotFoundError, match="--resume PATH"):
        ClassificationTrainer(load_cls_config(None, overrides(data, tmp_path / "none", "model.arch=resnet18"),
                                             protocol="moco_linear"), eval_only=True)


# ----------------------------------------------------------- command line
def test_command_line_train_then_evaluate(data, moco_file, tmp_path):
    out = tmp_path / "cli"
    args = ["tools/train_cls.py", "configs/classification/moco_r18_linear_cpu.yaml", f"data.path={data}",
            "data.img_size=32", "data.num_workers=0", "train.epochs=1", "train.batch_size=16", "optim.lr=1.0",
            "train.progress=false", "train.tensorboard=false", f"train.output_dir={out}",
            "--checkpoint", str(moco_file)]
    proc = run_tool(*args)
    assert "sanity check passed" in proc.stderr and "moco_linear on resnet18 (moco_v2)" in proc.stderr
    res = read_json(out / "results.json")
    assert res["checkpoint"] == str(moco_file) and res["recipe"]["batch"] == 16
    proc = run_tool(*args, "--eval-only", "--resume")
    # the evaluation's own record, beside the training run's (which it leaves as it was)
    assert "evaluating" in proc.stderr and read_json(out / "results_eval.json")["recipe"]["eval_only"]
    assert read_json(out / "results.json") == res
    bad = run_tool("tools/train_cls.py", "configs/classification/moco_r18_linear_cpu.yaml", "optim.lrr=1", check=False)
    assert bad.returncode != 0 and "lrr" in bad.stderr
    missing = run_tool("tools/train_cls.py", "configs/classification/mae_vit_base_finetune.yaml", check=False)
    assert missing.returncode != 0 and "data.path" in missing.stderr


# ------------------------------------------------------------ real images
def test_real_photos_arranged_into_classes(tmp_path):
    """coco_tiny50's photos (JPEGs of mixed sizes), labelled 'person' / 'no person' from their
    annotations: the data path on real images, evaluated exactly once each."""
    import shutil

    root = shared_data("coco_tiny50")
    for split, coco_split in (("train", "train2017"), ("val", "val2017")):
        ann = json.loads((root / "annotations" / f"instances_{coco_split}.json").read_text())
        person = {a["image_id"] for a in ann["annotations"] if a["category_id"] == 1}
        for img in ann["images"]:
            folder = tmp_path / "data" / split / ("person" if img["id"] in person else "no_person")
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copy(root / coco_split / img["file_name"], folder / img["file_name"])
    n_val = len(list((tmp_path / "data" / "val").rglob("*.jpg")))
    trainer = train("moco_linear", overrides(tmp_path / "data", tmp_path / "run", "model.arch=resnet18",
                                             "data.img_size=64", "train.epochs=1", "optim.lr=0.1"))
    res = read_json(tmp_path / "run" / "results.json")
    assert res["pretrain"] == "random" and res["recipe"]["val_images"] == n_val == res["val_images"]
    assert 0 <= res["metrics"]["top1"] <= 100 and trainer.num_classes == 2


# ------------------------------------------------------------ multi-process
@pytest.mark.slow
def test_two_gloo_processes_count_every_validation_image_once(data, mae_file, tmp_path):
    out = tmp_path / "ddp"
    proc = run_tool("-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", free_port(),
                    "tools/train_cls.py", "--protocol", "mae_linear", *overrides(data, out),
                    "model.arch=auto", f"model.checkpoint={mae_file}", "train.epochs=2", "optim.lr=4.0",
                    "optim.warmup_epochs=1", "train.dist_backend=gloo", env={"OMP_NUM_THREADS": "1"})
    assert "2 process(es)" in proc.stderr and "effective batch 16" in proc.stderr
    res = read_json(out / "results.json")
    assert res["val_images"] == CLASSES * 6  # the two shards, summed: each image once
    assert res["recipe"]["batch"] == 16 and "sanity check passed" in proc.stderr
    ckpt = torch.load(out / "checkpoint-last.pth")
    assert ckpt["trainer"]["world_size"] == 2 and len(ckpt["trainer"]["rng"]) == 2
    assert ckpt["trainer"]["step"] == 2 * (CLASSES * 16 // 16)


# ---------------------------------------------------------------- partial fine-tuning (MAE Figure 9)
@pytest.mark.parametrize("tune_blocks", [0, 1])
def test_partial_finetune_tunes_the_last_blocks_and_keeps_the_rest(data, mae_file, tmp_path, tune_blocks):
    trainer = train("mae_finetune", overrides(data, tmp_path, "model.arch=auto", f"model.checkpoint={mae_file}",
                                              f"model.tune_blocks={tune_blocks}", "train.epochs=1",
                                              "optim.warmup_epochs=0", "model.global_pool=token"))
    depth = len(trainer.model.blocks)
    tuned = {f"blocks.{i}." for i in range(depth - tune_blocks, depth)} | {"norm.", "head."}
    learning = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert learning == {n for n, _ in trainer.model.named_parameters() if n.startswith(tuple(tuned))}
    # The run's own check re-read the file: every frozen tensor is the pretrained one, the tuned ones moved.
    trained = torch.load(tmp_path / "checkpoint-last.pth")["model"]
    pretrained = torch.load(mae_file)["model"]
    for key in ("patch_embed.proj.weight", "pos_embed", "blocks.0.attn.qkv.weight"):
        assert torch.equal(trained[key], pretrained[key]), key
    last = f"blocks.{depth - 1}.mlp.fc1.weight"
    assert torch.equal(trained[last], pretrained[last]) == (tune_blocks == 0)
    assert read_json(tmp_path / "results.json")["recipe"]["tune_blocks"] == tune_blocks


def test_partial_finetune_settings_are_checked(mae_file, tmp_path):
    from pretrain.errors import ConfigError
    from transfer.classification.config import load_cls_config

    with pytest.raises(ConfigError, match="tune_blocks"):
        load_cls_config(None, ["model.tune_blocks=1", "data.synthetic=true"], protocol="mae_linear")
    with pytest.raises(ConfigError, match="tune_blocks"):
        load_cls_config(None, ["model.tune_blocks=-1", "data.synthetic=true"], protocol="mae_finetune")
