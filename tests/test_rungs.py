"""The ladder's first rungs: frozen backbones (transfer.backbone) against independent computations,
the kNN tool, and the dense probe (transfer.dense_probe): its crops, metrics (mmseg's IoUMetric), a run
on real ADE20K images, exact resumption, and a pretrained backbone ranked above its random twin."""
import json
from functools import partial

import numpy as np
import pytest
import torch
import torch.nn as nn

from conftest import ONE_THREAD, run_tool, shared_data


@pytest.fixture(scope="module")
def mae(tmp_path_factory):
    """A pico MAE written by the project's code in the authors' layout; returns (path, model)."""
    from pretrain.checkpoint import save_atomic
    from pretrain.methods.mae import create_mae

    torch.manual_seed(0)
    model = create_mae("mae_vit_pico_patch8", img_size=32, decoder_depth=1, decoder_embed_dim=32, decoder_num_heads=2)
    path = save_atomic({"model": model.state_dict(), "epoch": 4}, tmp_path_factory.mktemp("mae") / "checkpoint-4.pth")
    return path, model.eval()


@pytest.fixture(scope="module")
def moco(tmp_path_factory):
    """A MoCo v2 ResNet-18 (pretrain.moco's builder and checkpoint layout) whose batch-norm statistics are not
    the defaults; returns (path, checkpoint)."""
    from pretrain.checkpoint import save_atomic
    from pretrain.methods.moco import build_moco, moco_checkpoint

    torch.manual_seed(0)
    model = build_moco("resnet18", K=64, mlp=True)
    with torch.no_grad():
        for _ in range(3):
            model.encoder_q(torch.randn(8, 3, 64, 64))  # train mode: moves running_mean / var
    ckpt = moco_checkpoint(model, "resnet18", epoch=3)
    return save_atomic(ckpt, tmp_path_factory.mktemp("moco") / "checkpoint_0002.pth.tar"), ckpt


def timm_vit(img_size, state_dict):
    from timm.models.vision_transformer import VisionTransformer

    vit = VisionTransformer(img_size=img_size, patch_size=8, embed_dim=96, depth=4, num_heads=3, qkv_bias=True,
                            norm_layer=partial(nn.LayerNorm, eps=1e-6), num_classes=0)
    vit.load_state_dict(state_dict, strict=True)
    return vit.eval()


# ------------------------------------------------------------ backbones
def test_vit_features_are_timms_cls_token_and_patch_grid(mae):
    from timm.layers import resample_abs_pos_embed

    from pretrain.methods.mae import encoder_state_dict
    from transfer.backbone import load_frozen_backbone

    path, model = mae
    b = load_frozen_backbone(path)
    assert (b.family, b.name, b.pretrain, b.pretrain_epochs, b.embed_dim, b.patch_size) == (
        "vit", "vit_pico_patch8", "mae", 5, 96, 8)
    assert not b.train().training and not any(p.requires_grad for p in b.parameters())
    encoder = encoder_state_dict(model.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        tokens = timm_vit(32, encoder).forward_features(x)
        assert torch.allclose(b.global_features(x), tokens[:, 0], atol=1e-6)
        assert torch.allclose(b.global_features(x), model.forward_features(x)[:, 0], atol=1e-6)  # the kNN monitor's
        grid = tokens[:, 1:].reshape(2, 4, 4, 96).permute(0, 3, 1, 2)
        assert torch.allclose(b.dense_features(x), grid, atol=1e-6)
        # Another, non-square input: the position table resampled to its 6 x 5 grid, tokens in raster order.
        y = torch.randn(2, 3, 48, 40)
        resized = dict(encoder, pos_embed=resample_abs_pos_embed(encoder["pos_embed"], (6, 5), num_prefix_tokens=1))
        grid = timm_vit((48, 40), resized).forward_features(y)[:, 1:].reshape(2, 6, 5, 96).permute(0, 3, 1, 2)
        assert torch.allclose(b.dense_features(y), grid, atol=1e-5)
    with pytest.raises(ValueError, match="multiple of the patch size 8"):
        b.dense_features(torch.randn(1, 3, 30, 32))


def test_resnet_features_are_torchvisions_res5_and_its_pool(moco):
    import torchvision
    from torchvision.models.feature_extraction import create_feature_extractor

    from transfer.backbone import load_frozen_backbone

    path, ckpt = moco
    b = load_frozen_backbone(path)
    assert (b.family, b.name, b.pretrain, b.pretrain_epochs, b.embed_dim, b.stride) == (
        "resnet", "resnet18", "moco_v2", 3, 512, 32)
    prefix = "module.encoder_q."
    query = {k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    net = torchvision.models.resnet18()
    net.fc = nn.Identity()
    net.load_state_dict({k: v for k, v in query.items() if not k.startswith("fc.")}, strict=True)
    net.eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        assert torch.allclose(b.global_features(x), net(x), atol=1e-5)
        res5 = create_feature_extractor(net, {"layer4": "res5"})(x)["res5"]
        assert res5.shape == (2, 512, 2, 3) and torch.allclose(b.dense_features(x), res5, atol=1e-5)


@pytest.mark.parametrize("arch,name", [("resnet18", "resnet18"), ("mae_vit_pico_patch8", "vit_pico_patch8")])
def test_random_init_is_seeded(arch, name):
    from transfer.backbone import load_frozen_backbone

    def init(seed):
        torch.manual_seed(seed)
        return load_frozen_backbone(None, arch)

    a, b, c = init(0), init(0), init(1)
    assert (a.name, a.pretrain, a.report) == (name, "random", None)
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    assert not all(torch.equal(v, c.state_dict()[k]) for k, v in a.state_dict().items() if v.is_floating_point())


def test_bad_backbones_say_what_was_expected(mae, tmp_path):
    from pretrain.checkpoint import CheckpointFormatError, save_atomic
    from transfer.backbone import load_frozen_backbone

    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_frozen_backbone(tmp_path / "missing.pth")
    other = save_atomic({"state_dict": {"embed.weight": torch.zeros(3)}}, tmp_path / "other.pth")
    with pytest.raises(CheckpointFormatError, match="expected a pretraining checkpoint.*a timm / DeiT ViT or a torchvision ResNet"):
        load_frozen_backbone(other)
    with pytest.raises(CheckpointFormatError, match="holds a ViT"):
        load_frozen_backbone(mae[0], "resnet18")
    with pytest.raises(CheckpointFormatError, match="does not fit"):
        load_frozen_backbone(mae[0], "vit_tiny_patch16")
    with pytest.raises(ValueError, match="architecture"):
        load_frozen_backbone(None)
    with pytest.raises(ValueError, match="unknown ViT 'convnext_tiny'.*torchvision ResNet"):
        load_frozen_backbone(None, "convnext_tiny")


# ------------------------------------------------------------ kNN
def test_knn_tool_writes_results_and_beats_chance(tmp_path):
    from test_classification_protocols import CLASSES, write_colour_classes
    from transfer.results import read_results

    data = write_colour_classes(tmp_path / "data")  # classes differ in colour: what a random ResNet's pool keeps
    proc = run_tool("tools/knn_eval.py", "--random-init", "resnet18", "--seed", "3", "--train", data / "train",
                    "--val", data / "val", "--out", tmp_path / "knn", "--img-size", "32", "--num-workers", "0",
                    "--precision", "fp32", env=ONE_THREAD)
    rec = read_results(tmp_path / "knn")
    assert (rec["task"], rec["backbone"], rec["pretrain"], rec["checkpoint"], rec["seed"]) == (
        "knn", "resnet18", "random", None, 3)
    assert rec["recipe"] == {"k": 20, "temperature": 0.07, "img_size": 32, "train_images": 16 * CLASSES,
                             "val_images": 6 * CLASSES, "seed": 3, "precision": "fp32",
                             "compile": False, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    assert rec["metrics"]["top5"] is None  # 4 classes: no top-5
    assert rec["metrics"]["top1"] > 100 / CLASSES + 40, rec["metrics"]
    assert "top1" in proc.stderr


# ------------------------------------------------------------ dense probe: parts
def test_training_crops_keep_image_and_labels_aligned(tmp_path):
    """Quadrants of four colours labelled 0..3: after rescaling, cropping, padding and flipping, each label
    still sits on its colour (away from the edges the resize blends), and the padding is the mean colour
    under IGNORE."""
    import torch.nn.functional as F
    from PIL import Image

    from transfer.dense_probe import IGNORE, TrainCrops, load_split

    palette = np.array([[200, 30, 30], [30, 200, 30], [30, 30, 200], [200, 200, 30]], np.uint8)
    label = np.zeros((48, 64), np.uint8)
    label[:, 32:] = 1
    label[24:] += 2
    for d in ("images", "labels"):
        (tmp_path / d).mkdir()
    Image.fromarray(palette[label]).save(tmp_path / "images" / "a.png")
    Image.fromarray(label).save(tmp_path / "labels" / "a.png")
    (tmp_path / "classes.txt").write_text("a\nb\nc\nd\n")
    crops = TrainCrops(load_split("folder", tmp_path, train=True), 64, mean=(0.485, 0.456, 0.406))
    padded = flipped = 0
    for seed in range(12):
        x, y = crops[(0, seed)]
        assert x.shape == (3, 64, 64) and y.shape == (64, 64) and x.dtype == y.dtype == torch.uint8
        pad = y == IGNORE
        padded += bool(pad.any())
        assert (x[:, pad] == crops.fill.view(3, 1)).all()
        for c in range(4):
            inside = -F.max_pool2d(-(y == c).float()[None], 5, stride=1, padding=2)[0] > 0  # 2 px from its edges
            assert ((x[:, inside].int() - torch.from_numpy(palette[c]).int().view(3, 1)).abs() <= 1).all()
        labelled = y[~pad.all(1)][:, ~pad.all(0)]
        flipped += bool(labelled.numel() and (labelled[:, 0] % 2 == 1).all())  # class 1 / 3 on the left: mirrored
    assert padded and flipped  # both cases were drawn


def test_batches_depend_on_the_position_only():
    from transfer.dense_probe import ProbeBatches

    whole = list(ProbeBatches(5, 3, 8, seed=1))
    assert list(ProbeBatches(5, 3, 8, seed=1, start=5)) == whole[5:]
    indices = [i for batch in whole for i, _ in batch]
    assert sorted(indices[:5]) == list(range(5)) and sorted(indices[5:10]) == list(range(5))  # passes over all
    assert len({s for batch in whole for _, s in batch}) == 24  # a seed per sample
    assert list(ProbeBatches(5, 3, 8, seed=2)) != whole


def test_metrics_are_mmsegs_iou_metric():
    from mmseg.evaluation.metrics import IoUMetric

    from transfer.dense_probe import IGNORE, confusion_matrix, seg_metrics

    g = torch.Generator().manual_seed(0)
    k = 6
    label = torch.randint(0, k - 2, (3, 40, 50), generator=g)  # class 4 only predicted, 5 in neither
    label[:, :5] = IGNORE
    pred = torch.where(torch.rand(3, 40, 50, generator=g) < 0.6, label, torch.randint(0, k - 1, (3, 40, 50),
                                                                                       generator=g)).clamp(max=k - 2)
    pred[0, 20:] = 4
    areas = [sum(a) for a in zip(*(IoUMetric.intersect_and_union(p, t, k, IGNORE) for p, t in zip(pred, label)))]
    ref = IoUMetric.total_area_to_metrics(*areas, metrics=["mIoU"])
    ours = seg_metrics(sum(confusion_matrix(p, t, k) for p, t in zip(pred, label)))
    assert ours["mIoU"] == pytest.approx(100 * np.nanmean(ref["IoU"]), rel=1e-6)  # mmseg: float32
    assert ours["mAcc"] == pytest.approx(100 * np.nanmean(ref["Acc"]), rel=1e-6)
    assert ours["aAcc"] == pytest.approx(100 * ref["aAcc"], rel=1e-6)
    assert np.isnan(ref["IoU"][5]) and ref["IoU"][4] == 0  # absent from both: out of the mean; predicted: 0


# ------------------------------------------------------------ dense probe: runs
ADE_ARGS = ("--crop", "64", "--iters", "6", "--batch", "2", "--eval-every", "3", "--num-workers", "0")


def probe(checkpoint, out, *extra, check=True):
    root = shared_data("ade20k_sample") / "ADEChallengeData2016"
    return run_tool("tools/dense_probe.py", checkpoint, "--data-root", root, "--out", out, *ADE_ARGS, *extra,
                    env=ONE_THREAD, check=check)


@pytest.fixture(scope="module")
def ade_run(mae, tmp_path_factory):
    out = tmp_path_factory.mktemp("ade") / "straight"
    probe(mae[0], out)
    return out


def _records(out):
    return [{k: v for k, v in json.loads(line).items() if k != "time"}
            for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_dense_probe_on_ade20k_sample(ade_run, mae):
    from transfer.results import read_results

    rec = read_results(ade_run)
    assert (rec["task"], rec["backbone"], rec["pretrain"], rec["checkpoint"], rec["seed"]) == (
        "ade20k_dense_probe", "vit_pico_patch8", "mae", str(mae[0]), 0)
    assert {k: rec["recipe"][k] for k in ("iterations", "batch", "crop_size", "lr", "probe", "seed")} == {
        "iterations": 6, "batch": 2, "crop_size": 64, "lr": 1e-3, "probe": "bn+linear", "seed": 0}
    assert rec["recipe"]["pretrain_epochs"] == 5 and rec["recipe"]["train_images"] == rec["recipe"]["val_images"] == 3
    assert set(rec["metrics"]) == {"mIoU", "mAcc", "aAcc"} and all(0 <= v <= 100 for v in rec["metrics"].values())
    records = _records(ade_run)
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in records if "mIoU" in r] == [3, 6]
    assert {k: records[-1][k] for k in rec["metrics"]} == rec["metrics"]  # the final evaluation
    # Run again: the finished run is reported, not trained again; other settings are refused.
    again = probe(mae[0], ade_run)
    assert "finished" in again.stderr and read_results(ade_run)["created"] == rec["created"]
    other = probe(mae[0], ade_run, "--lr", "0.01", check=False)
    assert other.returncode != 0 and "lr: 0.001 there, 0.01 now" in other.stderr


def test_dense_probe_resumes_exactly(ade_run, mae, tmp_path):
    from pretrain.checkpoint import load_file
    from transfer.results import read_results

    out = tmp_path / "interrupted"
    probe(mae[0], out, "--stop-after", "4")  # after the step-3 evaluation, between checkpoints
    assert not (out / "results.json").exists() and load_file(out / "probe_last.pth")["step"] == 4
    refused = probe(mae[0], out, check=False)
    assert refused.returncode != 0 and "unfinished run (step 4 of 6)" in refused.stderr
    probe(mae[0], out, "--resume", "--num-workers", "2")  # workers do not change a sample's crop
    straight, resumed = (load_file(o / "probe_last.pth") for o in (ade_run, out))
    assert straight["head"].keys() == resumed["head"].keys()
    assert all(torch.equal(straight["head"][k], resumed["head"][k]) for k in straight["head"])
    assert read_results(out)["metrics"] == read_results(ade_run)["metrics"]
    assert _records(out) == _records(ade_run)  # one record per step, none twice


@pytest.mark.slow
def test_pretrained_backbone_beats_its_random_twin(tmp_path, one_thread):
    """The probe ranks backbones by what their frozen features hold: a ViT-pico trained with labels on the
    synthetic scenes' training split (supervised pretraining) against the same initialisation untrained,
    probed identically (same seed, same head initialisation and batches), on held-out scenes. (MoCo v2 or
    MAE runs short enough for a test do not beat random features here; see docs/ladder.md.)"""
    import torch.nn.functional as F

    from pretrain.checkpoint import save_atomic
    from pretrain.synthetic import write_segmentation_dataset
    from pretrain.transforms import ToFloatNormalized
    from transfer.backbone import load_frozen_backbone
    from transfer.dense_probe import DenseProbe, LinearSegHead, ProbeBatches, ProbeConfig, TrainCrops, load_split, \
        seg_loss

    data = tmp_path / "scenes"
    write_segmentation_dataset(data, "train", 1024, size=(64, 64), seed=1)
    write_segmentation_dataset(data, "val", 32, size=(64, 64), seed=2)
    torch.manual_seed(0)
    vit = load_frozen_backbone(None, "mae_vit_pico_patch8")  # the random twin's initialisation (seed 0)
    for p in vit.parameters():
        p.requires_grad = True
    split = load_split("folder", data, train=True)
    crops, to_input = TrainCrops(split, 64, vit.mean), ToFloatNormalized(vit.mean, vit.std)
    head = LinearSegHead(vit.embed_dim, split.num_classes)
    opt = torch.optim.AdamW([*vit.parameters(), *head.parameters()], lr=2e-3, weight_decay=0.05)
    vit.vit.train()
    for batch in ProbeBatches(len(crops), 8, 400, seed=100):
        x, y = map(torch.stack, zip(*(crops[i] for i in batch)))
        tokens = vit.vit.forward_features(to_input(x, "cpu"))[:, 1:]
        logits = head(tokens.transpose(1, 2).reshape(len(x), vit.embed_dim, 8, 8))
        loss = seg_loss(F.interpolate(logits, size=(64, 64), mode="bilinear", align_corners=False), y.long())
        opt.zero_grad()
        loss.backward()
        opt.step()
    supervised = save_atomic({"model": vit.vit.state_dict()}, tmp_path / "supervised.pth")

    common = dict(data_root=str(data), dataset="folder", iters=200, batch=8, crop=64, lr=1e-2, seed=0, eval_every=0,
                  num_workers=0)
    trained = DenseProbe(ProbeConfig(out=str(tmp_path / "trained"), checkpoint=str(supervised), pretrain="supervised",
                                     **common)).run()["metrics"]
    random = DenseProbe(ProbeConfig(out=str(tmp_path / "random"), random_init="mae_vit_pico_patch8",
                                    **common)).run()["metrics"]
    # Measured with seeds 0, 1, 2 for the pretraining, its batches (100 + seed) and the probes: trained 17.7 / 18.6
    # / 17.5 mIoU and 22.2 / 22.9 / 21.8 mAcc; random 12.9 mIoU, 16.7 mAcc (background everywhere) each time.
    assert trained["mIoU"] > random["mIoU"] + 3 and trained["mAcc"] > random["mAcc"] + 3, (trained, random)
