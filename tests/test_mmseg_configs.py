"""Every mmseg config builds on a CPU (model, optimizer, schedule) and says the recipe it claims."""
import copy
import importlib.util

import pytest
import torch

from conftest import REPO

# mmseg is looked up, not imported: collection stays light.
pytestmark = [pytest.mark.skipif(importlib.util.find_spec("mmseg") is None,
                                 reason="mmsegmentation is not installed (tools/setup_env.sh installs it)"),
              pytest.mark.filterwarnings("ignore:torch.meshgrid", "ignore::UserWarning")]


# The ADE20K UperNet configs (MoCo's Table 6 FCN configs, fcn_*: tests/test_moco_semantic_seg.py).
FULL = sorted((REPO / "configs" / "mmseg").glob("upernet_*.py"))
# (MAETimmViT's configs build the network their checkpoint describes: built below fitted to a file, and in
# tests/test_mmseg_hosts.py.)
TINY = sorted(p for p in (REPO / "configs" / "mmseg" / "tiny").glob("upernet_*.py") if "timm-vit" not in p.name)
MAE_B = REPO / "configs/mmseg/upernet_mae-vit-b_8xb2-amp-160k_ade20k-512x512.py"
TIMM_B = REPO / "configs/mmseg/upernet_timm-vit-b_8xb2-amp-160k_ade20k-512x512.py"


def load(path):
    from transfer.segmentation.runner import load_seg_config

    return load_seg_config(path)


def build(cfg):
    """The model, optimizer wrapper and lr schedulers of a config, as the Runner builds them on a CPU."""
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import PARAM_SCHEDULERS, init_default_scope
    from mmseg.registry import MODELS

    from transfer.segmentation.runner import adapt_to_device

    cfg = copy.deepcopy(cfg)
    adapt_to_device(cfg, cuda=False)
    init_default_scope("mmseg")
    model = MODELS.build(cfg.model)
    wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    schedulers = [PARAM_SCHEDULERS.build(dict(s, optimizer=wrapper)) for s in cfg.param_scheduler]
    return model, wrapper, schedulers


def test_the_expected_configs_exist():
    names = {p.name for p in FULL}
    assert names == {
        "upernet_mae-vit-b_8xb2-amp-160k_ade20k-512x512.py", "upernet_timm-vit-b_8xb2-amp-160k_ade20k-512x512.py",
        "upernet_r50-moco_4xb4-80k_ade20k-512x512.py", "upernet_r50-moco_4xb4-160k_ade20k-512x512.py",
        "upernet_r50-supervised_4xb4-80k_ade20k-512x512.py", "upernet_r50-supervised_4xb4-160k_ade20k-512x512.py",
    }
    assert len(TINY) == 4


@pytest.mark.parametrize("path", [p for p in FULL if p != TIMM_B] + TINY, ids=lambda p: p.stem)
def test_config_builds_on_cpu(path):
    cfg = load(path)
    model, wrapper, schedulers = build(cfg)
    assert type(model.backbone).__name__ in ("MAEViTEncoder", "ResNetEncoder")
    assert model.decode_head.num_classes == model.auxiliary_head.num_classes
    assert cfg.sslkit_results.task in ("ade20k_seg", "semantic_seg") and cfg.sslkit_results.backbone
    n_params = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for g in wrapper.optimizer.param_groups for p in g["params"]) == n_params
    assert schedulers[-1].end == cfg.train_cfg.max_iters
    if path in FULL:
        assert model.decode_head.num_classes == 150 and cfg.train_dataloader.dataset.type == "ADE20KDataset"
        assert cfg.train_dataloader.dataset.data_root == "data/ade/ADEChallengeData2016"
        assert cfg.model.backbone.init_cfg.type == "Pretrained" and cfg.model.pretrained is None
    else:  # tiny: random init unless --checkpoint, plain BN, a quick forward pass works
        assert cfg.model.backbone.init_cfg is None
        model.eval()
        with torch.no_grad():
            out = model(torch.randn(1, 3, 64, 64), mode="tensor")
        assert out.shape[:2] == (1, model.decode_head.num_classes)


def test_mae_vit_b_recipe_is_mmseg_mae_recipe():
    cfg = load(MAE_B)
    bb = cfg.model.backbone
    assert (bb.img_size, bb.patch_size, bb.embed_dims, bb.num_layers, bb.num_heads) == ((512, 512), 16, 768, 12, 12)
    assert list(bb.out_indices) == [3, 5, 7, 11] and bb.drop_path_rate == 0.1 and bb.init_values == 1.0
    assert cfg.model.neck.type == "Feature2Pyramid" and list(cfg.model.neck.rescales) == [4, 2, 1, 0.5]
    assert cfg.model.decode_head.type == "UPerHead"
    assert cfg.model.test_cfg == dict(mode="slide", crop_size=(512, 512), stride=(341, 341))
    ow = cfg.optim_wrapper
    assert ow.type == "AmpOptimWrapper" and ow.constructor == "LearningRateDecayOptimizerConstructor"
    assert (ow.optimizer.type, ow.optimizer.lr, ow.optimizer.weight_decay) == ("AdamW", 1e-4, 0.05)
    assert (ow.paramwise_cfg.decay_rate, ow.paramwise_cfg.num_layers) == (0.65, 12)
    assert cfg.train_cfg.max_iters == 160000 and cfg.train_dataloader.batch_size * 8 == 16
    assert cfg.crop_size == (512, 512)
    assert any(t.get("reduce_zero_label") for t in cfg.train_dataloader.dataset.pipeline)

    model, wrapper, schedulers = build(cfg)
    assert model.backbone.pos_embed.shape == (1, 32 * 32 + 1, 768)  # the 14x14 table is resized into this
    scale = {n: g["lr_scale"] for g in wrapper.optimizer.param_groups for n in g["param_names"]}
    assert scale["backbone.layers.11.attn.qkv.weight"] == pytest.approx(0.65)
    assert scale["backbone.layers.0.attn.qkv.weight"] == pytest.approx(0.65 ** 12)
    assert scale["backbone.patch_embed.projection.weight"] == pytest.approx(0.65 ** 13)
    assert scale["decode_head.conv_seg.weight"] == 1.0
    # Warm-up 1500 iterations, then linear decay to zero at 160k (the LinearLR + PolyLR of mmseg's config).
    assert [type(s).__name__ for s in schedulers] == ["LinearLR", "PolyLR"]
    assert schedulers[0].end == 1500 and schedulers[1].power == 1.0 and schedulers[1].eta_min == 0.0


def test_timm_vit_b_recipe_is_mae_vit_b_recipe_but_the_host():
    """MAE's ViT-B UperNet recipe (schedule, optimizer, layer decay, crop, batch, AMP, neck, heads, test) with
    MAETimmViT as the backbone: nothing else differs."""
    timm_b, mae_b = load(TIMM_B).to_dict(), load(MAE_B).to_dict()
    bb = timm_b["model"].pop("backbone")
    assert bb == dict(type="MAETimmViT", embed_dims=768, out_indices=(3, 5, 7, 11), img_size=(512, 512),
                      drop_path_rate=mae_b["model"].pop("backbone")["drop_path_rate"], init_cfg=None)
    for d in (timm_b, mae_b):
        d.pop("custom_imports"), d.pop("sslkit_results")
    assert timm_b == mae_b
    assert load(TIMM_B).sslkit_results.pretrain is None  # the checkpoint's label


def _fitted_timm_b(path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("tool_train_seg", REPO / "tools" / "train_seg.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    cfg, _ = tool.build_config(tool.parse_args([str(TIMM_B), "--checkpoint", str(path)]))
    return cfg


def _dinov2_reg_vits14_file(folder, width):
    """dinov2_vits14_reg4_pretrain.pth's shape but the width (12 blocks, patch 14, LayerScale, 4 registers)."""
    from timm.models.vision_transformer import VisionTransformer

    from test_formats import dinov2_layout, randomize

    vit = randomize(VisionTransformer(img_size=42, patch_size=14, embed_dim=width, depth=12, num_heads=1,
                                      num_classes=0, init_values=1e-5, reg_tokens=4, no_embed_class=True), 1)
    path = folder / "dinov2_vits14_reg4_pretrain.pth"
    torch.save(dinov2_layout(vit, seed=5), path)
    return path


def _clip_vitl14_file(folder, width):
    """OpenAI's ViT-L/14 CLIP state dict's shape but the width (24 blocks, patch 14, ln_pre, QuickGELU)."""
    from test_formats_clip import CLIP

    torch.manual_seed(0)
    path = folder / "clip_vitl14.pth"
    torch.save(CLIP(16, 28, 24, width, 14, 6, 20, 64, 1, 1).state_dict(), path)
    return path


@pytest.mark.parametrize("name", ["dinov2-reg-s14", "clip-l14"])
def test_timm_vit_b_config_is_fitted_to_the_checkpoints_shape(tmp_path, name):
    """The ViT-B config fitted by tools/train_seg.py to a ViT-S/14 DINOv2-with-registers and a ViT-L/14 CLIP
    file (their depths; a tiny width, 64, for speed): the file's width in the backbone, neck and both heads,
    the maps at ViT-B's relative depths (ViT-L: 7/11/15/23, as mmseg's ViT-L / BEiT-L recipes), layer decay over
    its blocks, CLIP's input normalisation; each change recorded in the config the run writes."""
    from pretrain.backbones import read_backbone
    from pretrain.formats.clip import CLIP_MEAN, CLIP_STD

    width = 64
    path = (_dinov2_reg_vits14_file if name == "dinov2-reg-s14" else _clip_vitl14_file)(tmp_path, width)
    shape = read_backbone(str(path)).shape
    depth, indices = {"dinov2-reg-s14": (12, (3, 5, 7, 11)), "clip-l14": (24, (7, 11, 15, 23))}[name]
    assert (shape["embed_dim"], shape["depth"], shape["patch_size"]) == (width, depth, 14)  # the file, as meant
    cfg = _fitted_timm_b(path)
    m = cfg.model
    assert (m.backbone.embed_dims, m.neck.embed_dim, m.auxiliary_head.in_channels) == (width,) * 3
    assert list(m.decode_head.in_channels) == [width] * 4
    assert tuple(m.backbone.out_indices) == indices and cfg.optim_wrapper.paramwise_cfg.num_layers == depth
    mean = (torch.tensor(CLIP_MEAN if name == "clip-l14" else (0.485, 0.456, 0.406)) * 255).tolist()
    torch.testing.assert_close(torch.tensor(m.data_preprocessor.mean), torch.tensor(mean))
    if name == "clip-l14":
        torch.testing.assert_close(torch.tensor(m.data_preprocessor.std), torch.tensor(CLIP_STD) * 255)
    notes = cfg.sslkit_fitted_to_checkpoint
    assert any(n.startswith("backbone embed_dims 768 -> 64") for n in notes)
    assert any("out_indices" in n for n in notes) == (depth != 12)
    assert "sslkit_fitted_to_checkpoint" in cfg.pretty_text  # in the config the Runner writes to the work dir

    # It builds the file's network, and layer decay spans its blocks: the last at 0.65, the first 0.65 ** depth.
    model, wrapper, _ = build(cfg)
    assert len(model.backbone.layers) == depth and model.backbone.out_indices == list(indices)
    scale = {n: g["lr_scale"] for g in wrapper.optimizer.param_groups for n in g["param_names"]}
    assert scale[f"backbone.layers.{depth - 1}.attn.qkv.weight"] == pytest.approx(0.65)
    assert scale["backbone.layers.0.attn.qkv.weight"] == pytest.approx(0.65 ** depth)
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 56, 56), mode="tensor")
    assert out.shape[:2] == (1, 150)


def test_the_segmentation_rung_routes_published_vits_to_the_timm_host(tmp_path):
    """ADE20K's rung: the published ViTs (options, or a shape no recipe has) take the MAETimmViT configs, ViT-B's
    at the MAE ViT-B recipe's GPUs and cost; the ladder plans a DINOv2-with-registers file of the pico width with
    the tiny one."""
    from pretrain.synthetic import write_segmentation_dataset
    from test_published_backbones_transfer import pico_dinov2_reg_file

    from transfer import ladder
    from transfer.ladder.rung import get_rung

    rung = get_rung("segmentation")
    b, pico = rung.checkpoint_recipes["vit_base_patch16"], rung.checkpoint_recipes["vit_pico_patch8"]
    assert set(rung.checkpoint_recipes) == {"vit_base_patch16", "vit_pico_patch8"}
    assert b.config == str(TIMM_B.relative_to(REPO))
    assert pico.config == "configs/mmseg/tiny/upernet_timm-vit_ade20k-64x64.py"
    assert (b.gpus, b.gpu_hours) == (rung.recipes["vit_base_patch16"].gpus, rung.recipes["vit_base_patch16"].gpu_hours)
    assert pico.gpu_hours == 0
    for recipe in (b, pico):
        assert load(REPO / recipe.config).model.backbone.type == "MAETimmViT"
    write_segmentation_dataset(tmp_path / "seg", "train", 2, size=(32, 32))
    plan = ladder.plan(pico_dinov2_reg_file(tmp_path), tmp_path / "out", ["segmentation"],
                       {"ade20k": str(tmp_path / "seg")}, 1, "random")
    assert [j.command[1] for j in plan.jobs] == [pico.config] * 2  # the file and its random twin


@pytest.mark.parametrize("iters", ["80k", "160k"])
def test_r50_moco_and_supervised_differ_only_in_the_checkpoint(iters):
    moco = load(REPO / f"configs/mmseg/upernet_r50-moco_4xb4-{iters}_ade20k-512x512.py")
    sup = load(REPO / f"configs/mmseg/upernet_r50-supervised_4xb4-{iters}_ade20k-512x512.py")
    assert moco.model.backbone.init_cfg.checkpoint != sup.model.backbone.init_cfg.checkpoint
    assert (moco.sslkit_results.pretrain, sup.sslkit_results.pretrain) == ("moco_v2", "supervised")

    def strip(cfg):
        d = copy.deepcopy(cfg.to_dict())
        del d["model"]["backbone"]["init_cfg"]["checkpoint"], d["sslkit_results"]["pretrain"]
        return d

    assert strip(moco) == strip(sup)
    assert moco.train_cfg.max_iters == {"80k": 80000, "160k": 160000}[iters]
    assert moco.train_dataloader.batch_size * 4 == 16 and moco.crop_size == (512, 512)
    assert moco.model.backbone.norm_cfg.type == "SyncBN" and moco.model.decode_head.norm_cfg.type == "SyncBN"
    model, _, _ = build(moco)
    # torchvision's stem: one 7x7 conv (mmseg's default ResNetV1c has a three-conv deep stem).
    assert model.backbone.conv1.weight.shape == (64, 3, 7, 7) and not hasattr(model.backbone, "stem")
    assert model.backbone.depth == 50 and model.backbone.style == "pytorch"


def test_cpu_fallbacks():
    from transfer.segmentation.runner import adapt_to_device

    cfg = load(MAE_B)
    assert adapt_to_device(copy.deepcopy(cfg), cuda=True) == []
    changes = adapt_to_device(cfg, cuda=False)
    assert cfg.optim_wrapper.type == "OptimWrapper" and "loss_scale" not in cfg.optim_wrapper
    assert "SyncBN" not in str(cfg.model.to_dict()) and cfg.env_cfg.dist_cfg.backend == "gloo"
    assert any("SyncBN" in c for c in changes) and any("Amp" in c for c in changes)


def test_set_iterations_scales_the_schedule():
    from transfer.segmentation.runner import set_iterations

    cfg = load(MAE_B)
    set_iterations(cfg, 320)
    assert cfg.train_cfg.max_iters == 320 and cfg.train_cfg.val_interval == 32
    assert [(s.begin, s.end) for s in cfg.param_scheduler] == [(0, 3), (3, 320)]
    assert cfg.default_hooks.checkpoint.interval == 32
