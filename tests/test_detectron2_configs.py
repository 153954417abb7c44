"""Every detectron2 config builds (full-size ones on the meta device) with its paper's recipe values, and yacs
files as the MoCo authors publish theirs build the same models as the LazyConfigs through the registered ROI head.
The ``*_from_checkpoint`` configs are their recipes with the ViT the file records, fitted to its depth (ViTDet's
attention pattern, the lr decay), and the model built from them takes every tensor of the file.

Skipped without detectron2 (pip install --no-build-isolation 'git+https://github.com/facebookresearch/detectron2.git').
"""
import functools

import pytest
import torch

from conftest import REPO

pytestmark = pytest.mark.detectron2  # skips without detectron2 (fails where CI requires it)

CONFIGS = REPO / "configs" / "detectron2"
IMAGENET_RGB = ([123.675, 116.28, 103.53], [58.395, 57.12, 57.375])
VITDET = {  # config: (width, depth, global blocks, drop path, lr decay, iterations, init checkpoint)
    "COCO/mask_rcnn_vitdet_b_100ep.py": (768, 12, {2, 5, 8, 11}, 0.1, 0.7, 184375, "mae_pretrain_vit_base"),
    "COCO/mask_rcnn_vitdet_l_100ep.py": (1024, 24, {5, 11, 17, 23}, 0.4, 0.8, 184375, "mae_pretrain_vit_large"),
    "COCO/mask_rcnn_vitdet_h_75ep.py": (1280, 32, {7, 15, 23, 31}, 0.5, 0.9, 138281, "mae_pretrain_vit_huge"),
}
MOCO = {  # config: (kind, iterations, steps, mask, classes)
    "COCO/mask_rcnn_R_50_C4_2x_moco.py": ("C4", 180000, (120000, 160000), True, 80),
    "VOC/faster_rcnn_R_50_C4_24k_moco.py": ("C4", 24000, (18000, 22000), False, 20),
    "COCO/mask_rcnn_R_50_FPN_1x_moco.py": ("FPN", 90000, (60000, 80000), True, 80),
    "COCO/mask_rcnn_R_50_FPN_2x_moco.py": ("FPN", 180000, (120000, 160000), True, 80),
}


def load(name):
    from detectron2.config import LazyConfig

    return LazyConfig.load(str(CONFIGS / name))


def build(cfg):
    from detectron2.config import instantiate

    from transfer.detection.utils import meta_init

    with meta_init():
        return instantiate(cfg.model)


def lr_steps(cfg):
    """(warm-up iterations, decay iterations) of a LazyConfig's lr multiplier, as ``LRMultiplier`` applies it:
    the multiplier at iteration i is ``scheduler(i / max_iter)``; changes are found on a grid, then bisected."""
    from detectron2.config import instantiate

    multiplier, n = instantiate(cfg.lr_multiplier), cfg.train.max_iter

    def lr(i):
        return multiplier(i / n)

    def first(lo, hi, pred):  # smallest i in (lo, hi] with pred(i), given pred(hi) and not pred(lo)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if pred(mid) else (mid, hi)
        return hi

    grid = list(range(0, n, 97)) + [n - 1]
    warmup = first(0, next(i for i in grid if lr(i) == 1.0), lambda i: lr(i) == 1.0)
    decays = tuple(first(a, b, lambda i, a=a: lr(i) < lr(a) * 0.5) for a, b in zip(grid, grid[1:])
                   if lr(b) < lr(a) * 0.5)
    return warmup, decays


@pytest.mark.parametrize("name", sorted(VITDET))
def test_vitdet_configs_build_with_the_paper_recipe(name):
    from detectron2.modeling import SimpleFeaturePyramid, ViT

    width, depth, global_blocks, drop_path, decay, iters, ckpt = VITDET[name]
    cfg = load(name)
    model = build(cfg)
    net = model.backbone.net
    assert isinstance(model.backbone, SimpleFeaturePyramid) and isinstance(net, ViT)
    assert model.backbone.scale_factors == (4.0, 2.0, 1.0, 0.5)
    assert [k for k in model.backbone.output_shape()] == ["p2", "p3", "p4", "p5", "p6"]
    assert net.pos_embed.shape == (1, 14 * 14 + 1, width)  # the 224-grid table, interpolated at run time
    assert len(net.blocks) == depth and net.patch_embed.proj.kernel_size == (16, 16)
    assert {i for i, b in enumerate(net.blocks) if b.window_size == 0} == global_blocks
    assert {b.window_size for b in net.blocks if b.window_size} == {14}
    assert all(b.attn.use_rel_pos for b in net.blocks) and cfg.model.backbone.net.rel_pos_zero_init
    assert net.blocks[-1].drop_path.drop_prob == pytest.approx(drop_path)
    assert (model.input_format, list(model.pixel_mean.flatten()), list(model.pixel_std.flatten())) == (
        "RGB", *IMAGENET_RGB)
    # Optimizer: AdamW, lr 1e-4, weight decay 0.1, layer-wise decay down to the patch embedding.
    cfg.optimizer.params.model = model
    from detectron2.config import instantiate

    opt = instantiate(cfg.optimizer)
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["lr"] == 1e-4 and opt.defaults["weight_decay"] == 0.1
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert lr_of[id(named["backbone.net.patch_embed.proj.weight"])] == pytest.approx(1e-4 * decay ** (depth + 1))
    assert lr_of[id(named["backbone.net.blocks.0.attn.qkv.weight"])] == pytest.approx(1e-4 * decay ** depth)
    assert lr_of[id(named[f"backbone.net.blocks.{depth - 1}.mlp.fc2.weight"])] == pytest.approx(1e-4 * decay)
    assert lr_of[id(named["roi_heads.box_predictor.cls_score.weight"])] == pytest.approx(1e-4)
    # Schedule, batch, LSJ at 1024, mixed precision, checkpoint.
    assert cfg.train.max_iter == iters and cfg.train.amp.enabled
    assert cfg.dataloader.train.total_batch_size == 64
    resize, crop = cfg.dataloader.train.mapper.augmentations[1:]
    assert (resize.min_scale, resize.max_scale, resize.target_height, crop.crop_size) == (0.1, 2.0, 1024, (1024, 1024))
    assert ckpt in cfg.train.init_checkpoint


def test_vitdet_schedules():
    """Steps at 88.9% and 96.3% of training, 250 warm-up iterations (187 for the shortened H), as ViTDet."""
    assert lr_steps(load("COCO/mask_rcnn_vitdet_b_100ep.py")) == (250, (163889, 177546))
    assert lr_steps(load("COCO/mask_rcnn_vitdet_h_75ep.py")) == (188, (122916, 133159))


@pytest.mark.parametrize("name", sorted(MOCO))
def test_moco_configs_build_with_the_paper_recipe(name):
    from detectron2.layers import FrozenBatchNorm2d, NaiveSyncBatchNorm
    from detectron2.modeling.backbone import ResNet

    from transfer.detection.roi_heads import Res5ROIHeadsExtraNorm

    kind, iters, steps, mask, classes = MOCO[name]
    cfg = load(name)
    model = build(cfg)
    resnet = model.backbone if kind == "C4" else model.backbone.bottom_up
    assert isinstance(resnet, ResNet)
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in model.modules())  # all layers trained
    assert all(p.requires_grad for p in model.parameters())
    sync = NaiveSyncBatchNorm if kind == "C4" else torch.nn.SyncBatchNorm
    assert isinstance(resnet.stem.conv1.norm, sync) and isinstance(resnet.res4[0].conv3.norm, sync)
    assert resnet.res3[0].conv1.stride == (1, 1) and resnet.res3[0].conv2.stride == (2, 2)  # torchvision layout
    if kind == "C4":
        heads = model.roi_heads
        assert isinstance(heads, Res5ROIHeadsExtraNorm) and isinstance(heads.res5.norm, sync)
        assert list(dict(heads.res5.named_children()))[-1] == "norm"  # after the last res5 block
        assert heads.res5[0].conv2.stride == (2, 2)
    else:
        assert all(isinstance(m.norm, sync) for m in model.backbone.lateral_convs + model.backbone.output_convs)
        assert len(model.roi_heads.box_head.conv_norm_relus) == 4
        assert all(isinstance(c.norm, sync) for c in model.roi_heads.box_head.conv_norm_relus)
        assert all(isinstance(c.norm, sync) for c in model.roi_heads.mask_head.conv_norm_relus)
    assert (model.input_format, list(model.pixel_mean.flatten()), list(model.pixel_std.flatten())) == (
        "RGB", *IMAGENET_RGB)
    assert cfg.dataloader.train.mapper.image_format == "RGB"
    assert model.roi_heads.mask_on == mask and model.roi_heads.num_classes == classes
    assert cfg.train.max_iter == iters and cfg.dataloader.train.total_batch_size == 16
    assert cfg.optimizer.lr == 0.02 and cfg.optimizer.momentum == 0.9 and cfg.optimizer.weight_decay == 1e-4
    assert cfg.train.precise_bn.enabled
    assert "moco_v2_800ep_pretrain" in cfg.train.init_checkpoint


@pytest.mark.parametrize("name", sorted(MOCO))
def test_moco_schedules(name):
    warmup, steps = lr_steps(load(name))
    assert steps == MOCO[name][2] and warmup == (100 if "VOC" in name else 1000)


def normalised(node):
    """A config as plain data, with partials compared by what they call."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(node, (DictConfig, ListConfig)):
        node = OmegaConf.to_container(node, resolve=False)
    if isinstance(node, dict):
        return {k: normalised(v) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [normalised(v) for v in node]
    if isinstance(node, functools.partial):
        return ("partial", node.func, node.args, normalised(dict(node.keywords)))
    return node


@pytest.mark.parametrize("supervised,counterpart,pixels", [
    ("COCO/mask_rcnn_vitdet_b_100ep_supervised.py", "COCO/mask_rcnn_vitdet_b_100ep.py", False),
    ("COCO/mask_rcnn_vitdet_l_100ep_supervised.py", "COCO/mask_rcnn_vitdet_l_100ep.py", True),
    ("COCO/mask_rcnn_R_50_C4_2x_supervised.py", "COCO/mask_rcnn_R_50_C4_2x_moco.py", False),
    ("COCO/mask_rcnn_R_50_FPN_1x_supervised.py", "COCO/mask_rcnn_R_50_FPN_1x_moco.py", False),
    ("COCO/mask_rcnn_R_50_FPN_2x_supervised.py", "COCO/mask_rcnn_R_50_FPN_2x_moco.py", False),
    ("VOC/faster_rcnn_R_50_C4_24k_supervised.py", "VOC/faster_rcnn_R_50_C4_24k_moco.py", False),
])
def test_supervised_counterparts_differ_only_in_checkpoint(supervised, counterpart, pixels):
    a, b = normalised(load(supervised)), normalised(load(counterpart))
    assert a["train"].pop("init_checkpoint") != b["train"].pop("init_checkpoint")
    if pixels:  # timm's augreg ViT-L expects mean = std = 127.5
        assert a["model"]["pixel_mean"] == a["model"]["pixel_std"] == [127.5] * 3
        for key in ("pixel_mean", "pixel_std"):
            a["model"].pop(key), b["model"].pop(key)
    assert a == b


# ------------------------------------------------------------------ yacs
YACS_PAIRS = [  # the MoCo authors'-style yacs file (conftest.MOCO_YACS), the LazyConfig recipe it equals
    ("coco_R_50_C4_2x_moco.yaml", "COCO/mask_rcnn_R_50_C4_2x_moco.py"),
    ("pascal_voc_R_50_C4_24k_moco.yaml", "VOC/faster_rcnn_R_50_C4_24k_moco.py"),
    ("tiny_R_18_C4_moco.yaml", "tiny/mask_rcnn_R_18_C4.py"),
]


def yacs(path, device="meta"):
    from transfer.detection.config import get_cfg

    cfg = get_cfg()
    cfg.merge_from_file(str(path))
    cfg.MODEL.DEVICE = device
    return cfg


@pytest.mark.parametrize("yaml_name,lazy_name", YACS_PAIRS)
def test_moco_authors_yacs_files_build_the_lazyconfig_models(moco_yacs, yaml_name, lazy_name):
    from detectron2.modeling import build_model

    from transfer.detection.utils import meta_init

    cfg, lazy = yacs(moco_yacs / yaml_name), load(lazy_name)
    with meta_init():
        a = build_model(cfg)
    b = build(lazy)
    assert {k: v.shape for k, v in a.state_dict().items()} == {k: v.shape for k, v in b.state_dict().items()}
    assert str(a) == str(b)  # same modules, norms, strides
    for attr in ("pre_nms_topk", "post_nms_topk", "batch_size_per_image", "nms_thresh"):
        assert getattr(a.proposal_generator, attr) == getattr(b.proposal_generator, attr), attr
    assert a.proposal_generator.anchor_generator.strides == b.proposal_generator.anchor_generator.strides
    for attr in ("batch_size_per_image", "num_classes", "mask_on"):
        assert getattr(a.roi_heads, attr) == getattr(b.roi_heads, attr), attr
    assert a.roi_heads.box_predictor.test_score_thresh == b.roi_heads.box_predictor.test_score_thresh
    assert (a.input_format, list(cfg.MODEL.PIXEL_MEAN), list(cfg.MODEL.PIXEL_STD)) == (
        b.input_format, list(lazy.model.pixel_mean), list(lazy.model.pixel_std))
    if not yaml_name.startswith("tiny"):
        assert cfg.SOLVER.MAX_ITER == lazy.train.max_iter
        assert cfg.SOLVER.IMS_PER_BATCH == lazy.dataloader.train.total_batch_size
        assert cfg.SOLVER.BASE_LR == lazy.optimizer.lr and cfg.SOLVER.WEIGHT_DECAY == lazy.optimizer.weight_decay
        assert (cfg.SOLVER.WARMUP_ITERS, tuple(cfg.SOLVER.STEPS)) == lr_steps(lazy)
        assert cfg.SOLVER.WARMUP_FACTOR == lazy.lr_multiplier.warmup_factor


def test_tiny_yacs_and_lazy_models_compute_the_same(moco_yacs):
    """With the same weights, the registered-head (yacs) model and the LazyConfig model detect the same."""
    from detectron2.config import instantiate
    from detectron2.modeling import build_model

    torch.manual_seed(0)
    lazy = instantiate(load("tiny/mask_rcnn_R_18_C4.py").model).eval()
    model = build_model(yacs(moco_yacs / "tiny_R_18_C4_moco.yaml", device="cpu")).eval()
    model.load_state_dict(lazy.state_dict())
    img = (torch.rand(3, 128, 112) * 255).to(torch.uint8)
    with torch.no_grad():
        a = model([{"image": img}])[0]["instances"]
        b = lazy([{"image": img}])[0]["instances"]
    assert len(a) == len(b) > 0
    assert torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor) and torch.equal(a.scores, b.scores)
    assert torch.equal(a.pred_masks, b.pred_masks)


def test_tiny_configs_build_and_run_on_a_cpu():
    from detectron2.config import instantiate

    for name in ("tiny/mask_rcnn_vitdet_pico.py", "tiny/mask_rcnn_R_18_C4.py", "tiny/mask_rcnn_R_18_FPN.py"):
        cfg = load(name)
        model = instantiate(cfg.model).eval()
        assert sum(p.numel() for p in model.parameters()) < 15e6
        assert not cfg.train.amp.enabled and cfg.train.init_checkpoint == ""
        with torch.no_grad():
            out = model([{"image": (torch.rand(3, 96, 128) * 255).to(torch.uint8)}])[0]["instances"]
        assert out.pred_masks.shape[-2:] == (96, 128)


# ------------------------------------------------------------------ the ViT from the checkpoint
FROM_CHECKPOINT = {  # config: the recipe it is, but for its ViT, which the checkpoint names (DINOv2, CLIP, ...)
    "COCO/mask_rcnn_vitdet_b_100ep_from_checkpoint.py": "COCO/mask_rcnn_vitdet_b_100ep.py",
    "COCO/mask_rcnn_vitdet_l_100ep_from_checkpoint.py": "COCO/mask_rcnn_vitdet_l_100ep.py",
    "COCO/cascade_mask_rcnn_vitdet_b_100ep_from_checkpoint.py": "COCO/cascade_mask_rcnn_vitdet_b_100ep.py",
    "COCO/cascade_mask_rcnn_vitdet_l_100ep_from_checkpoint.py": "COCO/cascade_mask_rcnn_vitdet_l_100ep.py",
    "LVIS/mask_rcnn_vitdet_b_100ep_from_checkpoint.py": "LVIS/mask_rcnn_vitdet_b_100ep.py",
    "LVIS/mask_rcnn_vitdet_l_100ep_from_checkpoint.py": "LVIS/mask_rcnn_vitdet_l_100ep.py",
    "tiny/mask_rcnn_vitdet_pico_from_checkpoint.py": "tiny/mask_rcnn_vitdet_pico.py",
    "tiny/cascade_mask_rcnn_vitdet_pico_from_checkpoint.py": "tiny/cascade_mask_rcnn_vitdet_pico.py",
    "tiny/mask_rcnn_vitdet_pico_lvis_from_checkpoint.py": "tiny/mask_rcnn_vitdet_pico_lvis.py",
}


@pytest.mark.parametrize("name", sorted(FROM_CHECKPOINT))
def test_from_checkpoint_configs_are_their_recipes(name):
    """The same recipe, with the flag that builds the ViT from the checkpoint and no default checkpoint (the file
    names the network)."""
    a, b = normalised(load(name)), normalised(load(FROM_CHECKPOINT[name]))
    assert a["train"].pop("backbone_from_checkpoint") is True and "backbone_from_checkpoint" not in b["train"]
    assert a["train"].pop("init_checkpoint") == ""
    b["train"].pop("init_checkpoint")
    assert a == b


def test_the_rungs_route_vits_to_the_from_checkpoint_configs_at_the_same_cost():
    from transfer.ladder.rung import get_rung

    for rung in map(get_rung, ("detection", "cascade", "lvis")):
        assert set(rung.checkpoint_recipes) == {"vit_base_patch16", "vit_large_patch16", "vit_pico_patch8"}
        for backbone, recipe in rung.checkpoint_recipes.items():
            plain = rung.recipes[backbone]
            assert recipe.config == plain.config.replace(".py", "_from_checkpoint.py")
            assert (recipe.gpus, recipe.gpu_hours, recipe.basis) == (plain.gpus, plain.gpu_hours, plain.basis)
            assert load(recipe.config.removeprefix("configs/detectron2/")).train.backbone_from_checkpoint


def test_vitdets_global_blocks_follow_the_depth():
    from transfer.detection.backbones import global_block_indexes

    for name, (_, depth, global_blocks, *_) in VITDET.items():
        assert set(global_block_indexes(depth)) == global_blocks
        windowed = load(name).model.backbone.net.window_block_indexes
        assert sorted(set(range(depth)) - set(windowed)) == global_block_indexes(depth)
    assert global_block_indexes(4, 2) == [1, 3] and global_block_indexes(2) == [0, 1]


def dinov2_reg_file(folder, depth, width=64):
    """A DINOv2 ViT/14 with registers and LayerScale in the authors' layout (tests/test_formats.py), ``depth``
    blocks of ``width`` (one head: the reader takes the published models' width / 64)."""
    from test_formats import dinov2_layout, randomize
    from timm.models.vision_transformer import VisionTransformer

    vit = randomize(VisionTransformer(img_size=42, patch_size=14, embed_dim=width, depth=depth, num_heads=1,
                                      num_classes=0, init_values=1e-5, reg_tokens=4, no_embed_class=True), depth)
    path = folder / f"depth{depth}" / "dinov2_vits14_reg4_pretrain.pth"
    path.parent.mkdir()
    torch.save(dinov2_layout(vit, seed=depth), path)
    return path, vit


def fitted(name, path, tmp_path):
    from transfer.detection.engine import Recipe

    return Recipe.load(CONFIGS / name, init_checkpoint=str(path), device="cpu", output_dir=str(tmp_path / "out"))


def optimizer_groups(cfg, model, *names):
    """(lr, weight decay) of the parameters ``names`` under the config's optimizer."""
    from detectron2.config import instantiate

    cfg.optimizer.params.model = model
    group_of = {id(p): (g["lr"], g["weight_decay"]) for g in instantiate(cfg.optimizer).param_groups
                for p in g["params"]}
    named = dict(model.named_parameters())
    return [group_of[id(named[k])] for k in names]


def test_the_b_recipe_fits_a_deeper_vit_and_builds_one_that_loads_the_file(tmp_path):
    """ViTDet-B's recipe with a 24-block DINOv2-reg file: ViT-L's attention pattern (global 5, 11, 17, 23, not B's
    2, 5, 8, 11 with 12-23 global) and the lr decay over 24 blocks at B's rate 0.7; the model built from the fitted
    config takes every tensor of the file."""
    from detectron2.config import instantiate

    from transfer.detection.checkpoint import Checkpointer

    path, vit = dinov2_reg_file(tmp_path, depth=24)
    recipe = fitted("COCO/mask_rcnn_vitdet_b_100ep_from_checkpoint.py", path, tmp_path)
    net = recipe.cfg.model.backbone.net
    assert (net.depth, net.embed_dim, net.num_heads, net.reg_tokens, net.patch_size) == (24, 64, 1, 4, 16)
    assert sorted(set(range(24)) - set(net.window_block_indexes)) == [5, 11, 17, 23]
    lr_func = recipe.cfg.optimizer.params.lr_factor_func
    assert (lr_func.keywords["num_layers"], lr_func.keywords["lr_decay_rate"]) == (24, 0.7)
    assert net.drop_path_rate == 0.1  # the recipe's
    assert any("global attention in blocks [5, 11, 17, 23]" in n for n in recipe.notes)
    assert any("lr decay over 24 blocks (the config's 12)" in n for n in recipe.notes)

    torch.manual_seed(0)
    model = instantiate(recipe.cfg.model)
    assert {i for i, b in enumerate(model.backbone.net.blocks) if b.window_size == 0} == {5, 11, 17, 23}
    assert model.backbone.output_shape()["p2"].channels == 256  # the pyramid takes the width by itself
    checkpointer = Checkpointer(model)
    checkpointer.load(str(path))  # placed strictly: a tensor without a place, or a place without one, stops it
    built = model.backbone.net
    assert torch.equal(built.blocks[23].ls2.gamma, vit.blocks[23].ls2.gamma)
    assert torch.equal(built.reg_token, vit.reg_token)
    # registers as the embedding (DINOv2's and timm's layer decay), not at the heads' full lr; LayerScale not decayed
    names = ("patch_embed.proj.weight", "reg_token", "blocks.0.mlp.fc2.weight", "blocks.23.mlp.fc2.weight",
             "blocks.23.ls1.gamma")
    lrs, decays = zip(*optimizer_groups(recipe.cfg, model, *(f"backbone.net.{k}" for k in names)))
    assert lrs == pytest.approx([1e-4 * 0.7 ** 25] * 2 + [1e-4 * 0.7 ** 24] + [1e-4 * 0.7] * 2)
    assert decays == (0.1, 0.1, 0.1, 0.1, 0.0)

    # A run's checkpoint (its pretrain_info records the network) fits the config the same way, for --eval-only
    # --checkpoint OUTPUT/model_final.pth and --resume in the run's folder; --eval-only with neither stops.
    from pretrain.errors import ConfigError
    from transfer.detection.engine import Recipe

    run = tmp_path / "run"
    run.mkdir()
    torch.save({"model": model.state_dict(), "pretrain_info": checkpointer.pretrained, "iteration": 9},
               run / "model_final.pth")
    (run / "last_checkpoint").write_text("model_final.pth")
    config = CONFIGS / "COCO/mask_rcnn_vitdet_b_100ep_from_checkpoint.py"
    for how in (dict(init_checkpoint=str(run / "model_final.pth"), eval_only=True), dict(resume="auto", eval_only=True),
                dict(resume=str(run / "model_final.pth"), eval_only=True), dict(resume="auto")):
        again = Recipe.load(config, device="cpu", output_dir=str(run), **how).cfg
        assert normalised(again.model) == normalised(recipe.cfg.model), how
    with pytest.raises(ConfigError, match="has none to build it from"):
        Recipe.load(config, device="cpu", output_dir=str(tmp_path / "elsewhere"), eval_only=True, resume="auto")
    # a first run with --resume (nothing to resume yet) and no checkpoint: the config's ViT, at random
    first = Recipe.load(config, device="cpu", output_dir=str(tmp_path / "elsewhere"), resume="auto")
    assert first.cfg.model.backbone.net.depth == 12 and not first.notes


@pytest.mark.parametrize("name,depth,global_blocks,decay", [
    ("COCO/mask_rcnn_vitdet_b_100ep_from_checkpoint.py", 12, [2, 5, 8, 11], 0.7),  # B's own depth: B's pattern
    ("COCO/mask_rcnn_vitdet_l_100ep_from_checkpoint.py", 12, [2, 5, 8, 11], 0.8),  # L's recipe, B's depth
    ("LVIS/mask_rcnn_vitdet_l_100ep_from_checkpoint.py", 24, [5, 11, 17, 23], 0.8),
])
def test_the_attention_pattern_and_lr_decay_follow_the_files_depth(tmp_path, name, depth, global_blocks, decay):
    from transfer.detection.backbones import vit_lr_decay_rate

    recipe = fitted(name, dinov2_reg_file(tmp_path, depth)[0], tmp_path)
    net = recipe.cfg.model.backbone.net
    assert sorted(set(range(depth)) - set(net.window_block_indexes)) == global_blocks
    lr_func = recipe.cfg.optimizer.params.lr_factor_func
    assert lr_func.func is vit_lr_decay_rate  # registers: in the embedding's layer
    assert dict(lr_func.keywords) == {"num_layers": depth, "lr_decay_rate": decay}
    changed = depth != load(name).model.backbone.net.depth
    assert any("not the config's" in n for n in recipe.notes) == changed
