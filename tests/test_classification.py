"""ImageNet-protocol classification, the parts: LARS, layer-wise lr decay, heads, weight loading,
augmentations and mixup, configs. (Training runs are in test_classification_protocols.py.)"""
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import REPO


def tiny_vit(global_pool="avg", depth=3, num_classes=4, **kw):
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=depth, num_heads=2,
                             num_classes=num_classes, global_pool=global_pool, **kw)


def pico_mae(img_size=32, seed=0):
    from pretrain.methods.mae import create_mae

    torch.manual_seed(seed)
    return create_mae("mae_vit_pico_patch8", img_size=img_size, decoder_depth=1, decoder_embed_dim=32,
                      decoder_num_heads=2).eval()


# ------------------------------------------------------------------- LARS
def test_lars_matches_hand_computed_steps():
    """Two steps worked out by hand: trust ratio 0.001 * ||w|| / ||g|| on the matrix, plain momentum on the bias."""
    from pretrain.lars import LARS

    w = torch.nn.Parameter(torch.tensor([[3.0, 4.0]], dtype=torch.float64))  # ||w|| = 5
    b = torch.nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
    opt = LARS([w, b], lr=1.0, weight_decay=0.0, momentum=0.9)
    for _ in range(2):
        w.grad = torch.tensor([[0.6, 0.8]], dtype=torch.float64)  # ||g|| = 1
        b.grad = torch.tensor([0.5], dtype=torch.float64)
        opt.step()
    # step 1: d = 0.005 * g = [.003, .004], w = [2.997, 3.996]; step 2: ratio 0.001 * 4.995,
    # d = [.002997, .003996], mu = 0.9 * [.003, .004] + d = [.005697, .007596]
    assert torch.allclose(w.detach(), torch.tensor([[2.991303, 3.988404]], dtype=torch.float64), atol=1e-12)
    assert torch.allclose(b.detach(), torch.tensor([-0.45], dtype=torch.float64), atol=1e-12)  # 1 - .5 - (.45 + .5)


def test_lars_weight_decay_and_zero_norm_against_a_numpy_reference():
    from pretrain.lars import LARS

    rng = np.random.default_rng(0)
    w0, b0 = rng.normal(size=(5, 7)), rng.normal(size=7)
    zero0 = np.zeros((3, 3))  # ||w|| = 0: the ratio falls back to 1
    params = [torch.nn.Parameter(torch.tensor(a)) for a in (w0, b0, zero0)]
    opt = LARS(params, lr=0.3, weight_decay=0.05, momentum=0.9, trust_coefficient=0.01)
    ref = [a.copy() for a in (w0, b0, zero0)]
    mom = [np.zeros_like(a) for a in ref]
    for step in range(3):
        grads = [rng.normal(size=a.shape) for a in ref]
        for p, g in zip(params, grads):
            p.grad = torch.tensor(g)
        opt.step()
        for i, g in enumerate(grads):
            d = g
            if ref[i].ndim > 1:
                d = g + 0.05 * ref[i]
                pn, dn = np.linalg.norm(ref[i]), np.linalg.norm(d)
                d = d * (0.01 * pn / dn if pn > 0 and dn > 0 else 1.0)
            mom[i] = 0.9 * mom[i] + d
            ref[i] = ref[i] - 0.3 * mom[i]
    for p, r in zip(params, ref):
        np.testing.assert_allclose(p.detach().numpy(), r, rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------- layer decay
@pytest.mark.parametrize("global_pool", ["avg", "token"])
def test_layer_decay_gives_each_layer_its_lr(global_pool):
    """lr of a parameter in layer l = lr * decay ** (depth + 1 - l); embeddings l = 0, blocks.i
    l = i + 1, everything after the blocks (norm, fc_norm, head) l = depth + 1."""
    from pretrain.schedule import set_lr
    from transfer.classification.vit import param_groups_layer_decay

    model = tiny_vit(global_pool, depth=3)
    groups = param_groups_layer_decay(model, weight_decay=0.05, layer_decay=0.5)
    opt = torch.optim.AdamW(groups, lr=1.0)
    set_lr(opt, 0.8)
    lr_of, wd_of = {}, {}
    for name, p in model.named_parameters():
        holders = [g for g in opt.param_groups if any(q is p for q in g["params"])]
        assert len(holders) == 1, f"{name} is in {len(holders)} groups"
        lr_of[name], wd_of[name] = holders[0]["lr"], holders[0]["weight_decay"]
    expected = {  # written out by hand for depth 3 (4 = depth + 1)
        "cls_token": 0.8 * 0.5**4, "pos_embed": 0.8 * 0.5**4, "patch_embed.proj.weight": 0.8 * 0.5**4,
        "blocks.0.attn.qkv.weight": 0.8 * 0.5**3, "blocks.1.norm1.bias": 0.8 * 0.5**2,
        "blocks.2.mlp.fc2.weight": 0.8 * 0.5, "head.weight": 0.8, "head.bias": 0.8,
    }
    expected.update({"fc_norm.weight": 0.8} if global_pool == "avg" else {"norm.weight": 0.8})
    for name, lr in expected.items():
        assert lr_of[name] == pytest.approx(lr), name
    for name, lr in lr_of.items():  # every block parameter, not just the ones above
        if name.startswith("blocks."):
            assert lr == pytest.approx(0.8 * 0.5 ** (3 - int(name.split(".")[1]))), name
    assert wd_of["blocks.0.attn.qkv.weight"] == wd_of["head.weight"] == 0.05
    for name in ("cls_token", "pos_embed", "blocks.0.attn.qkv.bias", "blocks.2.norm2.weight", "head.bias"):
        assert wd_of[name] == 0.0, name


# ----------------------------------------------------------- ViT models
def test_linear_probe_sees_the_mae_encoders_cls_token(tmp_path):
    """The authors' full MAE checkpoint loads into timm's ViT; the probe's input is the MAE
    encoder's normalised cls token, through BatchNorm1d(affine=False, eps=1e-6) + Linear."""
    from transfer.classification.vit import build_vit_classifier, load_vit_backbone, vit_arch

    mae = pico_mae()
    torch.save({"model": mae.state_dict(), "epoch": 3}, tmp_path / "mae_full.pth")
    model = build_vit_classifier(vit_arch("mae_vit_pico_patch8"), 100, img_size=32, global_pool="token",
                                 bn_head=True, head_init_std=0.01).eval()
    report = load_vit_backbone(model, tmp_path / "mae_full.pth")
    assert report.ok and any(k.startswith("decoder_") for k in report.dropped) and "mask_token" in report.dropped
    assert all(k.startswith("head.") for k in report.missing_by_design)
    bn, fc = model.head
    assert isinstance(bn, torch.nn.BatchNorm1d) and not bn.affine and bn.eps == 1e-6
    assert abs(fc.weight.std().item() - 0.01) < 0.001  # timm trunc_normal_(std=0.01), as the authors
    assert torch.count_nonzero(fc.bias) == 0
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        feats = model.forward_head(model.forward_features(x), pre_logits=True)
        assert torch.allclose(feats, mae.forward_features(x)[:, 0], atol=1e-5)


def test_finetune_model_pools_patch_tokens_and_replaces_the_final_norm(tmp_path):
    from pretrain.methods.mae import encoder_state_dict
    from transfer.classification.vit import build_vit_classifier, load_vit_backbone, vit_arch

    mae = pico_mae()
    torch.save(encoder_state_dict(mae.state_dict()), tmp_path / "mae_encoder.pth")  # encoder-only release
    model = build_vit_classifier(vit_arch("vit_pico_patch8"), 5, img_size=32, global_pool="avg", drop_path=0.1,
                                 head_init_std=2e-5).eval()
    report = load_vit_backbone(model, tmp_path / "mae_encoder.pth")
    assert {"norm.weight", "norm.bias"} <= set(report.dropped)  # unused by design
    assert set(report.missing_by_design) == {"fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias"}
    # The authors' fine-tuned layout (models_vit with global_pool): fc_norm and no final norm.
    keys = set(model.state_dict())
    assert "fc_norm.weight" in keys and "norm.weight" not in keys and "head.weight" in keys
    rates = [round(getattr(b.drop_path1, "drop_prob", 0.0), 6) for b in model.blocks]
    assert rates == [0.0, 0.033333, 0.066667, 0.1]  # drop path rising linearly with depth to 0.1
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        t = mae.patch_embed(x) + mae.pos_embed[:, 1:]
        t = torch.cat([(mae.cls_token + mae.pos_embed[:, :1]).expand(2, -1, -1), t], dim=1)
        for blk in mae.blocks:
            t = blk(t)
        ref = F.layer_norm(t[:, 1:].mean(dim=1), (t.shape[-1],), eps=1e-6)  # fresh fc_norm: weight 1, bias 0
        feats = model.forward_head(model.forward_features(x), pre_logits=True)
    assert torch.allclose(feats, ref, atol=1e-5)


def test_vit_checkpoint_formats_and_refusals(tmp_path):
    from timm.models.vision_transformer import VisionTransformer

    from pretrain.checkpoint import CheckpointFormatError
    from pretrain.backbones import read_backbone
    from transfer.classification.vit import build_vit_classifier, load_vit_backbone, vit_arch

    arch = vit_arch("mae_vit_pico_patch8")
    assert vit_arch("vit_base_patch16_224")["embed_dim"] == vit_arch("mae_vit_base_patch16")["embed_dim"] == 768
    with pytest.raises(ValueError, match="unknown ViT"):
        vit_arch("vit_gigantic_patch3")
    # A supervised timm ViT (with its classifier): the classifier is dropped, the label is supervised.
    sup = VisionTransformer(img_size=32, patch_size=8, embed_dim=96, depth=4, num_heads=3, num_classes=10)
    torch.save(sup.state_dict(), tmp_path / "sup.pth")
    model = build_vit_classifier(arch, 3, img_size=48, global_pool="token", bn_head=True)
    report = load_vit_backbone(model, tmp_path / "sup.pth")
    assert {"head.weight", "head.bias"} <= set(report.dropped)
    assert any("resized pos_embed" in n for n in report.notes)  # 4x4 grid -> 6x6
    assert torch.equal(model.blocks[2].mlp.fc1.weight, sup.blocks[2].mlp.fc1.weight)
    assert read_backbone(str(tmp_path / "sup.pth")).label == "supervised"
    torch.save({"model": pico_mae().state_dict()}, tmp_path / "mae.pth")
    assert read_backbone(str(tmp_path / "mae.pth")).label == "mae"
    # arch=auto reads the shape off the file.
    assert vit_arch("auto", read_backbone(tmp_path / "mae.pth"))["name"] == "vit_pico_patch8"
    # A ResNet is refused with what was found; so is a ViT of another width.
    import torchvision

    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "r18.pth")
    with pytest.raises(CheckpointFormatError, match="expected a ViT.*ResNet"):
        load_vit_backbone(model, tmp_path / "r18.pth")
    wide = build_vit_classifier(vit_arch("mae_vit_tiny_patch16"), 3, img_size=32)
    with pytest.raises(CheckpointFormatError, match="shape"):
        load_vit_backbone(wide, tmp_path / "mae.pth")


# -------------------------------------------------------- ResNet models
def test_moco_and_torchvision_files_into_the_resnet_classifier(tmp_path):
    import torchvision

    from pretrain.checkpoint import CheckpointFormatError
    from pretrain.methods.moco import build_moco, moco_checkpoint
    from pretrain.backbones import read_backbone
    from transfer.classification.resnet import build_resnet_classifier, load_resnet_backbone

    torch.manual_seed(0)
    for mlp, label in ((True, "moco_v2"), (False, "moco_v1")):
        moco = build_moco("resnet18", K=64, mlp=mlp)
        with torch.no_grad():  # non-trivial BN statistics, as after pretraining
            for m in moco.encoder_q.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.running_mean.uniform_(-1, 1)
        path = tmp_path / f"moco_{label}.pth.tar"
        torch.save(moco_checkpoint(moco, "resnet18", epoch=200), path)  # {"state_dict": {"module.encoder_q...."}}
        assert read_backbone(str(path)).label == label
        model = build_resnet_classifier("resnet18", 10)
        report = load_resnet_backbone(model, path)
        assert report.missing_by_design == ["fc.weight", "fc.bias"]
        assert any(k.startswith("encoder_k.") for k in report.dropped) and "queue" in report.dropped
        sd = model.state_dict()
        for k, v in moco.encoder_q.state_dict().items():
            if not k.startswith("fc."):
                assert torch.equal(sd[k], v), k
    r50 = build_resnet_classifier("resnet50", 1000)
    assert abs(r50.fc.weight.std().item() - 0.01) < 0.0005 and abs(r50.fc.weight.mean().item()) < 5e-4
    assert torch.count_nonzero(r50.fc.bias) == 0
    torch.save(torchvision.models.resnet18(num_classes=7).state_dict(), tmp_path / "tv.pth")
    assert read_backbone(str(tmp_path / "tv.pth")).label == "supervised"
    assert load_resnet_backbone(build_resnet_classifier("resnet18", 3), tmp_path / "tv.pth").ok
    with pytest.raises(CheckpointFormatError, match="does not fit"):
        load_resnet_backbone(build_resnet_classifier("resnet50", 3), tmp_path / "tv.pth")
    torch.save({"model": pico_mae().state_dict()}, tmp_path / "mae.pth")
    with pytest.raises(CheckpointFormatError, match="expected a ResNet checkpoint"):
        load_resnet_backbone(build_resnet_classifier("resnet18", 3), tmp_path / "mae.pth")


# ------------------------------------------------- augmentations, mixup
def _flatten(tf):
    from transfer.classification.data import SeedGlobalRandom

    tf = tf.transform if isinstance(tf, SeedGlobalRandom) else tf
    return list(getattr(tf, "transforms", [tf]))


def test_finetune_wires_timm_randaugment_erasing_mixup_and_soft_targets():
    from timm.data.auto_augment import RandAugment
    from timm.data.random_erasing import RandomErasing
    from timm.data.transforms import RandomResizedCropAndInterpolation
    from timm.loss import SoftTargetCrossEntropy

    from transfer.classification.config import load_cls_config
    from transfer.classification.data import build_criterion, build_mixup, train_transform

    cfg = load_cls_config(None, ["data.synthetic=true", "data.img_size=32"], protocol="mae_finetune")
    parts = _flatten(train_transform(cfg.data))
    crop = next(t for t in parts if isinstance(t, RandomResizedCropAndInterpolation))
    assert crop.scale == (0.08, 1.0) and "bicubic" in str(crop.interpolation).lower()
    ra = next(t for t in parts if isinstance(t, RandAugment))
    assert ra.num_layers == 2 and {op.magnitude for op in ra.ops} == {9}
    assert {op.magnitude_std for op in ra.ops} == {0.5}
    erase = next(t for t in parts if isinstance(t, RandomErasing))
    assert erase.probability == 0.25 and erase.mode == "pixel" and erase.max_count == 1
    mixup = build_mixup(cfg.data, num_classes=10)
    assert (mixup.mixup_alpha, mixup.cutmix_alpha, mixup.label_smoothing, mixup.mix_prob, mixup.switch_prob,
            mixup.mode) == (0.8, 1.0, 0.1, 1.0, 0.5, "batch")
    criterion = build_criterion(cfg.data, mixup)
    assert isinstance(criterion, SoftTargetCrossEntropy)
    np.random.seed(0)
    x, y = torch.randn(8, 3, 32, 32), torch.arange(8) % 10
    mixed, soft = mixup(x.clone(), y)
    assert soft.shape == (8, 10) and torch.allclose(soft.sum(1), torch.ones(8))
    assert soft.max() < 1.0 and (soft > 0).sum(1).min() >= 2  # smoothed and mixed, not one-hot
    assert not torch.equal(mixed, x)
    logits = torch.randn(8, 10)
    assert torch.allclose(criterion(logits, soft), -(soft * logits.log_softmax(-1)).sum(1).mean())


def test_linear_protocols_use_crop_and_flip_only():
    from timm.data.auto_augment import RandAugment
    from timm.data.random_erasing import RandomErasing
    from torchvision import transforms as T

    from transfer.classification.config import load_cls_config
    from transfer.classification.data import build_criterion, build_mixup, train_transform

    for protocol, interp in (("mae_linear", "bicubic"), ("moco_linear", "bilinear")):
        cfg = load_cls_config(None, ["data.synthetic=true", "data.img_size=32"], protocol=protocol)
        parts = _flatten(train_transform(cfg.data))
        names = [type(t).__name__ for t in parts]
        assert names == ["RandomResizedCropAndInterpolation", "RandomHorizontalFlip", "MaybeToTensor", "Normalize"]
        assert interp in str(parts[0].interpolation).lower()
        assert not any(isinstance(t, (RandAugment, RandomErasing, T.ColorJitter)) for t in parts)
        assert build_mixup(cfg.data, 10) is None
        assert type(build_criterion(cfg.data, None)) is torch.nn.CrossEntropyLoss


def test_posterize_at_magnitude_ten_gives_black_instead_of_failing():
    """RandAugment's PosterizeIncreasing asks for 0 bits at magnitude 10 (reached through mstd);
    recent Pillow refuses 0 bits, which would stop a fine-tuning run."""
    from PIL import Image

    from transfer.classification.config import load_cls_config
    from transfer.classification.data import train_transform
    from timm.data.auto_augment import RandAugment

    cfg = load_cls_config(None, ["data.synthetic=true", "data.img_size=32"], protocol="mae_finetune")
    ra = next(t for t in _flatten(train_transform(cfg.data)) if isinstance(t, RandAugment))
    op = next(o for o in ra.ops if o.name == "PosterizeIncreasing")
    op.prob, op.magnitude, op.magnitude_std = 1.0, 10, 0
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8))
    assert np.asarray(op(img)).max() == 0
    op.magnitude = 5  # 4 - int(5 / 10 * 4) = 2 bits kept
    assert set(np.unique(np.asarray(op(img)))) <= {0, 64, 128, 192}


def test_augmentation_is_reproducible_per_sample_and_leaves_global_rngs_alone():
    from PIL import Image

    from pretrain.data import SeededSample
    from pretrain.images import DecodedImage
    from transfer.classification.config import load_cls_config
    from transfer.classification.data import train_transform

    cfg = load_cls_config(None, ["data.synthetic=true", "data.img_size=32"], protocol="mae_finetune")
    sample = SeededSample(train_transform(cfg.data))
    img = DecodedImage(np.random.default_rng(1).integers(0, 256, (48, 40, 3), dtype=np.uint8))
    random.seed(123)
    np.random.seed(123)
    before = (random.random(), np.random.rand())
    random.seed(123)
    np.random.seed(123)
    a, b, c = sample(img, 7), sample(img, 7), sample(img, 8)  # (uint8 crop, erasing's boxes and seed)
    assert all(torch.equal(x, y) for x, y in zip(a, b)) and not torch.equal(a[0], c[0])
    assert (random.random(), np.random.rand()) == before


def test_eval_transform_is_a_centre_crop_at_ratio_0875():
    from pretrain.images import DecodedImage
    from transfer.classification.config import load_cls_config
    from transfer.classification.data import eval_transform

    cfg = load_cls_config(None, ["data.synthetic=true"], protocol="mae_finetune")
    tf = eval_transform(cfg.data)
    (view,), _ = tf.plan((300, 400))
    assert view.size == (256, 341) and view.crop == (16, 58, 224, 224) and view.interpolation == "bicubic"
    out = tf(DecodedImage(np.zeros((300, 400, 3), np.uint8)))
    assert out.shape == (3, 224, 224) and out.dtype == torch.uint8


def test_synthetic_folder_is_deterministic_and_reused(tmp_path):
    from pretrain.synthetic import CLASSES
    from transfer.classification.data import write_synthetic_folder

    a = write_synthetic_folder(tmp_path / "a", per_class=4, size=32)
    b = write_synthetic_folder(tmp_path / "b", per_class=4, size=32)
    files = sorted(p.relative_to(a) for p in a.rglob("*.png"))
    assert len(files) == len(CLASSES) * (4 + 1)
    assert sorted(d.name for d in (a / "train").iterdir()) == sorted(CLASSES)
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    stamp = (a / "train" / CLASSES[0] / "train_00000.png").stat().st_mtime_ns
    write_synthetic_folder(tmp_path / "a", per_class=4, size=32)
    assert (a / "train" / CLASSES[0] / "train_00000.png").stat().st_mtime_ns == stamp


def test_topk_correct_matches_brute_force():
    from transfer.classification.engine import topk_correct

    g = torch.Generator().manual_seed(0)
    logits, target = torch.randn(50, 7, generator=g), torch.randint(0, 7, (50,), generator=g)
    hits = topk_correct(logits, target)
    order = [sorted(range(7), key=lambda c: -logits[i, c].item()) for i in range(50)]
    assert hits[1] == sum(order[i][0] == target[i].item() for i in range(50))
    assert hits[5] == sum(target[i].item() in order[i][:5] for i in range(50))


# ---------------------------------------------------------------- configs
def test_paper_configs_have_the_papers_values():
    from pretrain.config import ConfigError
    from transfer.classification.config import load_cls_config

    def load(name):
        return load_cls_config(REPO / "configs/classification" / f"{name}.yaml", ["data.path=/data/imagenet"])

    for size, arch in (("base", "vit_base_patch16"), ("large", "vit_large_patch16"), ("huge", "vit_huge_patch14")):
        lin = load(f"mae_vit_{size}_linear")
        assert lin.protocol == "mae_linear" and lin.model.arch == arch and lin.model.global_pool == "token"
        o = lin.optim
        assert (o.name, o.base_lr, o.weight_decay, o.momentum) == ("lars", 0.1, 0.0, 0.9)
        assert (lin.train.epochs, lin.optim.warmup_epochs, lin.optim.schedule) == (90, 10, "cosine")
        assert lin.train.batch_size * 32 == 16384 and lin.model.head_init_std == 0.01
        assert (lin.data.auto_augment, lin.data.mixup, lin.data.cutmix, lin.data.reprob) == (None, 0, 0, 0)
        assert (lin.data.crop_min_scale, lin.data.crop_pct, lin.data.img_size) == (0.08, 0.875, 224)
        ft = load(f"mae_vit_{size}_finetune")
        decay, drop, epochs, blr = {"base": (0.65, 0.1, 100, 5e-4), "large": (0.75, 0.2, 50, 1e-3),
                                    "huge": (0.75, 0.3, 50, 1e-3)}[size]
        assert (ft.model.layer_decay, ft.model.drop_path) == (decay, drop)
        assert (ft.train.epochs, ft.optim.base_lr) == (epochs, blr)
        assert ft.model.global_pool == "avg" and ft.optim.name == "adamw" and ft.optim.weight_decay == 0.05
        assert ft.optim.warmup_epochs == 5 and list(ft.optim.betas) == [0.9, 0.999]
        assert ft.data.auto_augment == "rand-m9-mstd0.5-inc1" and (ft.data.mixup, ft.data.cutmix) == (0.8, 1.0)
        assert (ft.data.smoothing, ft.data.reprob, ft.data.crop_pct, ft.data.img_size) == (0.1, 0.25, 0.875, 224)
    moco = load("moco_r50_linear")
    assert moco.protocol == "moco_linear" and moco.model.arch == "resnet50" and moco.model.head_init_std == 0.01
    assert (moco.optim.name, moco.optim.lr, moco.optim.momentum, moco.optim.weight_decay) == ("sgd", 30.0, 0.9, 0.0)
    assert (moco.train.epochs, moco.optim.schedule, list(moco.optim.milestones)) == (100, "step", [60, 80])
    assert moco.train.batch_size * 8 == 256
    # Without a dataset the paper configs stop at start-up and say what to set.
    with pytest.raises(ConfigError, match="data.path"):
        load_cls_config(REPO / "configs/classification/moco_r50_linear.yaml")
    for cpu in sorted((REPO / "configs/classification").glob("*_cpu.yaml")):
        cfg = load_cls_config(cpu)
        assert cfg.data.path is None and cfg.train.device == "cpu", cpu.name


def test_config_errors_name_the_key():
    from pretrain.config import ConfigError
    from transfer.classification.config import load_cls_config

    with pytest.raises(ConfigError, match="optim.lrr"):
        load_cls_config(None, ["optim.lrr=3"], protocol="mae_linear")
    with pytest.raises(ConfigError, match="protocol must be one of"):
        load_cls_config(None, [], protocol=None)
    with pytest.raises(ConfigError, match="ResNet"):
        load_cls_config(None, ["model.arch=vit_base_patch16"], protocol="moco_linear")
    with pytest.raises(ConfigError, match="even"):
        load_cls_config(None, ["train.batch_size=7", "model.arch=vit_base_patch16"], protocol="mae_finetune")
    from transfer.classification.protocols import PROTOCOLS

    for name in ("mae_linear", "moco_linear"):  # arch=auto reads the shape off the checkpoint: needs one
        with pytest.raises(ValueError, match="model.checkpoint"):
            PROTOCOLS[name]().build_model(load_cls_config(None, ["model.arch=auto", "data.synthetic=true"], protocol=name), 10)
