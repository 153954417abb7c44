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
# (MAETimmViT's config builds the network its checkpoint describes: tests/test_mmseg_hosts.py builds it.)
TINY = sorted(p for p in (REPO / "configs" / "mmseg" / "tiny").glob("upernet_*.py") if "timm-vit" not in p.name)
MAE_B = REPO / "configs/mmseg/upernet_mae-vit-b_8xb2-amp-160k_ade20k-512x512.py"


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
        "upernet_mae-vit-b_8xb2-amp-160k_ade20k-512x512.py",
        "upernet_r50-moco_4xb4-80k_ade20k-512x512.py", "upernet_r50-moco_4xb4-160k_ade20k-512x512.py",
        "upernet_r50-supervised_4xb4-80k_ade20k-512x512.py", "upernet_r50-supervised_4xb4-160k_ade20k-512x512.py",
    }
    assert len(TINY) == 4


@pytest.mark.parametrize("path", FULL + TINY, ids=lambda p: p.stem)
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
