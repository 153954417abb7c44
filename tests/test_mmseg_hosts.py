"""The published ViTs mmseg's MAE backbone cannot hold, hosted in mmseg as their timm network
(``transfer.segmentation.timm_vit.MAETimmViT``): tiny files in the released layouts (DINOv2 with registers,
LayerScale, SwiGLU, patch 14; OpenAI's CLIP with ln_pre, QuickGELU, eps 1e-5; BEiT with the shared relative
position table) loaded into the mmseg backbone give the export's timm model's block outputs to 1e-5, every
source tensor accounted for; a tiny UperNet trains end to end through tools/train_seg.py."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import timm
import torch
import torch.nn as nn
from timm.layers import SwiGLUPacked
from timm.models.vision_transformer import VisionTransformer

# mmseg is looked up, not imported: collection stays light (tests/test_setup.py).
pytestmark = pytest.mark.skipif(importlib.util.find_spec("mmseg") is None,
                                reason="mmsegmentation is not installed (tools/setup_env.sh installs it)")

from conftest import run_tool, shared_data  # noqa: E402
from pretrain.backbones import read_backbone  # noqa: E402
from pretrain.checkpoint import CheckpointFormatError  # noqa: E402
from pretrain.errors import ConfigError  # noqa: E402
from test_formats import BEIT_CASES, dinov2_layout, randomize  # noqa: E402
from test_formats_clip import CLIP  # noqa: E402

CONFIG = "configs/mmseg/tiny/upernet_timm-vit_ade20k-64x64.py"
WIDTH, DEPTH = 128, 4  # the tiny config's: 2 heads of 64 (the readers' width / 64)


def dinov2_reg_file(folder) -> str:
    """dinov2_vits14_reg4_pretrain.pth's layout (the authors' names, mask token), SwiGLU as ViT-g's: tiny."""
    vit = randomize(VisionTransformer(img_size=42, patch_size=14, embed_dim=WIDTH, depth=DEPTH, num_heads=2,
                                      num_classes=0, init_values=1e-5, reg_tokens=4, no_embed_class=True,
                                      mlp_layer=SwiGLUPacked, act_layer=nn.SiLU), 1)
    path = folder / "dinov2_vitg14_reg4_pretrain.pth"
    torch.save(dinov2_layout(vit, seed=5), path)
    return str(path)


def clip_file(folder) -> str:
    """OpenAI's state dict (clip.load(jit=False).state_dict()) of a tiny ViT CLIP: ln_pre, QuickGELU, eps 1e-5."""
    torch.manual_seed(0)
    model = CLIP(16, 32, DEPTH, WIDTH, 8, 6, 20, 64, 1, 1)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    path = folder / "clip_vit_b16.pth"
    torch.save(model.state_dict(), path)
    return str(path)


def beit_file(folder) -> str:
    """beit_base_patch16_224_pt22k.pth's layout: a shared relative position table, q / v biases, LayerScale."""
    case = BEIT_CASES["beit-pt22k"]()
    path = folder / case.filename
    torch.save(case.ckpt, path)
    return str(path)


FILES = {"dinov2-reg4-swiglu": dinov2_reg_file, "clip": clip_file, "beit": beit_file}


def host_for(path, out_indices=None, **kw):
    from transfer.segmentation.timm_vit import MAETimmViT

    export = read_backbone(path)
    depth = export.shape["depth"]
    host = MAETimmViT(embed_dims=export.shape["embed_dim"], out_indices=out_indices or tuple(range(depth)),
                      init_cfg=dict(type="Pretrained", checkpoint=path), **kw)
    host.init_weights()
    return host.eval(), export


@pytest.mark.parametrize("name", list(FILES))
def test_host_block_maps_equal_the_exports_timm_model(tmp_path, name):
    """Each block's map = timm's own forward_intermediates of the model timm rebuilds from the export folder
    (config.json + safetensors), prefix tokens left out; the report names every source tensor."""
    path = FILES[name](tmp_path)
    host, export = host_for(path)
    folder = export.save(tmp_path / "export")
    reference = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    size = export.shape["img_size"]
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        ours = host(x)
        theirs = reference.forward_intermediates(x, indices=list(range(export.shape["depth"])), norm=False,
                                                 output_fmt="NCHW", intermediates_only=True)
    assert len(ours) == len(theirs) == export.shape["depth"]
    for a, b in zip(ours, theirs):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    # Every tensor of the export is in the host (nothing missing, nothing left at its random value).
    from transfer.segmentation.timm_vit import timm_vit_to_host

    sd, report = timm_vit_to_host(export, host.state_dict())
    final_norm = [k for k in export.state_dict if k.startswith("norm.")]
    assert final_norm and report.ok and report.converted == len(sd) == len(export.state_dict) - len(final_norm)
    assert "norm.weight" in report.dropped and set(export.dropped) <= set(report.dropped)
    for k, v in sd.items():
        assert torch.equal(host.state_dict()[k], v), k


def test_patch14_input_of_another_size_is_padded_and_the_table_resampled(tmp_path):
    host, export = host_for(dinov2_reg_file(tmp_path))
    with torch.no_grad():
        maps = host(torch.randn(1, 3, 64, 64))  # 64 = 4 * 14 + 8: padded to 70, a 5x5 grid
    assert [tuple(m.shape) for m in maps] == [(1, WIDTH, 5, 5)] * DEPTH


def test_beit_tables_are_resampled_to_the_crop(tmp_path):
    """A crop other than the pretraining size: the trained tables resampled as timm's Beit.set_input_size does."""
    host, export = host_for(beit_file(tmp_path), img_size=64)
    reference = timm.create_model(f"local-dir:{export.save(tmp_path / 'export')}", pretrained=True).eval()
    reference.set_input_size(img_size=(64, 64))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        maps = host(x)
        theirs = reference.forward_intermediates(x, indices=[0, 1], norm=False, intermediates_only=True)
    grid = 64 // export.shape["patch_size"]
    assert tuple(maps[0].shape[-2:]) == (grid, grid) != (export.shape["img_size"] // export.shape["patch_size"],) * 2
    table = host.layers[0].attn.relative_position_bias_table
    assert table.shape[0] == (2 * grid - 1) ** 2 + 3  # the crop's grid (+ the class token's 3 rows)
    for a, b in zip(maps, theirs):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_a_file_that_does_not_fit_stops_the_run(tmp_path):
    """A tensor the host has no place for is a mismatch (an error naming it), never dropped silently."""
    from transfer.segmentation.timm_vit import MAETimmViT

    path = dinov2_reg_file(tmp_path)
    host = MAETimmViT(embed_dims=WIDTH, out_indices=(0, 1, 2, 3), init_cfg=dict(type="Pretrained", checkpoint=path))
    export = read_backbone(path)
    export.state_dict["blocks.0.attn.extra_bias"] = torch.zeros(WIDTH)
    with pytest.raises(CheckpointFormatError, match="extra_bias"):
        host.load_export(export)
    with pytest.raises(ConfigError, match="width 128"):
        MAETimmViT(embed_dims=96, init_cfg=dict(type="Pretrained", checkpoint=path))
    with pytest.raises(ConfigError, match="--checkpoint"):
        MAETimmViT(embed_dims=WIDTH)


@pytest.mark.parametrize("name", list(FILES))
def test_mmseg_mae_backbone_refuses_what_it_cannot_compute(tmp_path, name):
    """mmseg's MAE (MAEViTEncoder) has no registers / SwiGLU / ln_pre / QuickGELU / BEiT q-v biases: such a file
    is refused there naming the options and the host that has them (QuickGELU and eps are no tensor: a renaming
    alone would lose them without a word)."""
    from transfer.segmentation.vit import MAEViTEncoder

    path = FILES[name](tmp_path)
    export = read_backbone(path)
    mae = MAEViTEncoder(img_size=export.shape["img_size"], patch_size=export.shape["patch_size"],
                        embed_dims=WIDTH, num_layers=export.shape["depth"], num_heads=2, out_indices=(0, 1))
    with pytest.raises(CheckpointFormatError, match="MAETimmViT"):
        mae.load_pretrained(path)


def test_plain_dinov2_still_loads_into_mmseg_mae(tmp_path):
    """LayerScale and patch 14 without registers: mmseg's MAE holds them (gamma_1 / gamma_2) and computes timm's
    blocks (its maps = timm's block outputs)."""
    from transfer.segmentation.vit import MAEViTEncoder

    vit = randomize(VisionTransformer(img_size=42, patch_size=14, embed_dim=WIDTH, depth=2, num_heads=2,
                                      num_classes=0, init_values=1e-5), 2)
    path = tmp_path / "dinov2_vits14_pretrain.pth"
    torch.save(dinov2_layout(vit, seed=5), path)
    mae = MAEViTEncoder(img_size=42, patch_size=14, embed_dims=WIDTH, num_layers=2, num_heads=2, out_indices=(0, 1))
    mae.load_pretrained(path)
    x = torch.randn(1, 3, 42, 42)
    with torch.no_grad():
        mae.eval()
        ours = mae(x)
        theirs = vit.forward_intermediates(x, indices=[0, 1], norm=False, intermediates_only=True)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_layer_decay_finds_the_blocks(tmp_path):
    """mmseg's LearningRateDecayOptimizerConstructor (the configs' constructor) gives each block its own rate."""
    from mmengine.config import Config
    from mmseg.registry import MODELS, OPTIM_WRAPPERS  # noqa: F401
    from mmseg.utils import register_all_modules
    from mmengine.optim import build_optim_wrapper

    register_all_modules()
    import transfer.segmentation.timm_vit  # noqa: F401

    cfg = Config.fromfile(CONFIG)
    cfg.model.backbone.init_cfg = dict(type="Pretrained", checkpoint=dinov2_reg_file(tmp_path))
    model = MODELS.build(cfg.model)
    wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    scales = {n: g["lr_scale"] for g in wrapper.optimizer.param_groups for n in g["param_names"]}
    assert scales["backbone.patch_embed.proj.weight"] < scales["backbone.layers.0.attn.qkv.weight"] \
        < scales["backbone.layers.3.attn.qkv.weight"] < scales["decode_head.conv_seg.weight"]


def test_train_seg_takes_the_checkpoints_input_normalisation(tmp_path):
    """CLIP's own mean / std (the export's) in the data preprocessor, 0-255 as mmseg's; ImageNet's file: as is."""
    import importlib.util

    from conftest import REPO
    from pretrain.formats.clip import CLIP_MEAN, CLIP_STD

    spec = importlib.util.spec_from_file_location("tool_train_seg", REPO / "tools" / "train_seg.py")
    t = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(t)
    cfg, _ = t.build_config(t.parse_args([CONFIG, "--checkpoint", clip_file(tmp_path), "--data-root", str(tmp_path)]))
    pre = cfg.model.data_preprocessor
    torch.testing.assert_close(torch.tensor(pre.mean), torch.tensor(CLIP_MEAN) * 255)
    torch.testing.assert_close(torch.tensor(pre.std), torch.tensor(CLIP_STD) * 255)
    cfg, _ = t.build_config(t.parse_args([CONFIG, "--checkpoint", dinov2_reg_file(tmp_path)]))
    assert list(cfg.model.data_preprocessor.mean) == [123.675, 116.28, 103.53]  # the config's, ImageNet's
    # A preprocessor that keeps the loaded (BGR) order gets the values in that order.
    from transfer.segmentation.runner import load_seg_config, match_input_normalisation, set_backbone_checkpoint

    cfg = load_seg_config(CONFIG)
    set_backbone_checkpoint(cfg, clip_file(tmp_path))
    cfg.model.data_preprocessor.bgr_to_rgb = False
    assert match_input_normalisation(cfg)
    torch.testing.assert_close(torch.tensor(cfg.model.data_preprocessor.mean), torch.tensor(CLIP_MEAN[::-1]) * 255)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["dinov2-reg4-swiglu", "clip"])
def test_tiny_upernet_trains_from_the_file(tmp_path, name):
    """tools/train_seg.py: the checkpoint's network built, loaded with its report, 2 iterations on the ADE20K
    sample, evaluated, results.json written."""
    root = shared_data("ade20k_sample") / "ADEChallengeData2016"
    path = FILES[name](tmp_path)
    out = tmp_path / "run"
    proc = run_tool("tools/train_seg.py", CONFIG, "--checkpoint", path, "--data-root", root, "--max-iters", "2",
                    "--output-dir", out, "--cfg-options", "train_dataloader.batch_size=2",
                    env={"OMP_NUM_THREADS": "1"})
    log = proc.stdout + proc.stderr
    assert "-> MAETimmViT" in log and "mismatched:                   none" in log  # the report, all accounted for
    rec = json.loads((out / "results.json").read_text())
    # The file's ViT by name (the config's placeholder "vit_timm" fitted), as its published rows and baselines.
    assert (rec["task"], rec["backbone"]) == ("ade20k_seg", read_backbone(path).arch) and rec["checkpoint"] == path
    assert rec["pretrain"] == {"dinov2-reg4-swiglu": "dinov2", "clip": "clip"}[name]
    assert ("input normalisation of the checkpoint" in log) == (name == "clip")  # CLIP's own mean / std
    assert set(rec["metrics"]) == {"mIoU", "mAcc", "aAcc"} and rec["recipe"]["iterations"] == 2


# ------------------------------------------------------------------ the config fitted to the checkpoint
def train_seg_tool():
    import importlib.util

    from conftest import REPO

    spec = importlib.util.spec_from_file_location("tool_train_seg", REPO / "tools" / "train_seg.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


def build_segmentor(cfg):
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    import transfer.segmentation.timm_vit  # noqa: F401

    init_default_scope("mmseg")
    model = MODELS.build(cfg.model)
    model.init_weights()
    return model.eval()


def test_out_indices_keep_their_relative_depth():
    from transfer.segmentation.runner import scale_out_indices

    assert scale_out_indices((3, 5, 7, 11), 12, 24) == [7, 11, 15, 23]  # ViT-B's -> ViT-L's (mmseg's recipes)
    assert scale_out_indices((3, 5, 7, 11), 12, 12) == [3, 5, 7, 11]
    assert scale_out_indices((3, 5, 7, 11), 12, 40) == [12, 19, 26, 39]
    assert scale_out_indices((0, 1, 2, 3), 4, 12) == [2, 5, 8, 11]
    assert scale_out_indices((3, 5, 7, 11), 12, 5) == [1, 2, 3, 4]  # rounding meets at small depths: kept apart
    with pytest.raises(ConfigError, match="3 blocks cannot give the config's 4 maps"):
        scale_out_indices((3, 5, 7, 11), 12, 3)


def test_a_config_of_another_width_is_fitted_not_refused(tmp_path):
    """The tiny config (128 wide, 4 blocks) with a 96-wide, 6-block DINOv2-with-registers file: tools/train_seg.py
    fits the backbone, neck and heads to 96, the maps to 6 blocks, layer decay to 6; the segmentor builds with the
    file's weights and runs."""
    vit = randomize(VisionTransformer(img_size=42, patch_size=14, embed_dim=96, depth=6, num_heads=1, num_classes=0,
                                      init_values=1e-5, reg_tokens=4, no_embed_class=True), 1)
    path = tmp_path / "dinov2_vits14_reg4_pretrain.pth"
    torch.save(dinov2_layout(vit, seed=5), path)
    tool = train_seg_tool()
    cfg, _ = tool.build_config(tool.parse_args([CONFIG, "--checkpoint", str(path)]))
    m = cfg.model
    assert (m.backbone.embed_dims, m.neck.embed_dim, m.auxiliary_head.in_channels) == (96, 96, 96)
    assert list(m.decode_head.in_channels) == [96] * 4 and cfg.optim_wrapper.paramwise_cfg.num_layers == 6
    assert tuple(m.backbone.out_indices) == (1, 2, 4, 5)  # 1/4, 2/4, 3/4, 4/4 of 6 blocks (rounded half up)
    # one note per change (the normalisation is ImageNet's), the results' backbone name the file's
    assert len(cfg.sslkit_fitted_to_checkpoint) == 7 and cfg.sslkit_results.backbone == read_backbone(path).arch
    model = build_segmentor(cfg)
    torch.testing.assert_close(model.backbone.layers[5].attn.qkv.weight, vit.blocks[5].attn.qkv.weight)
    x = torch.randn(1, 3, 42, 42)
    with torch.no_grad():
        maps = model.backbone(x)
        theirs = vit.forward_intermediates(x, indices=[1, 2, 4, 5], norm=False, intermediates_only=True)
        out = model(torch.randn(1, 3, 64, 64), mode="tensor")
    for a, b in zip(maps, theirs, strict=True):  # the blocks the fitted out_indices name
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert out.shape[:2] == (1, 150)


def test_a_resnet_file_is_refused_with_the_reason(tmp_path):
    import torchvision

    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    tool = train_seg_tool()
    with pytest.raises(ConfigError, match=r"not a ViT: MAETimmViT builds ViTs; the ResNet configs"):
        tool.build_config(tool.parse_args([CONFIG, "--checkpoint", str(path)]))


# ------------------------------------------------------------------ --variant
def test_variant_student_is_the_backbone_loaded(tmp_path):
    """--variant student of a DINO training checkpoint: the student's weights in MAETimmViT (through
    tools/train_seg.py's config) and in mmseg's MAE backbone (the conversion path); recorded in results.json's
    recipe; refused where there is no checkpoint or the backbone reads none."""
    from test_published_backbones_transfer import pico_dino_training_file

    from transfer.segmentation.runner import results_recipe, trained_record
    from transfer.segmentation.vit import MAEViTEncoder

    path, nets = pico_dino_training_file(tmp_path)
    tool = train_seg_tool()
    cfg, _ = tool.build_config(tool.parse_args([CONFIG, "--checkpoint", str(path), "--variant", "student"]))
    assert cfg.model.backbone.variant == "student" and cfg.model.backbone.embed_dims == 96  # fitted to the pico
    host = build_segmentor(cfg).backbone
    for variant, net in nets.items():
        same = torch.equal(host.layers[2].mlp.fc1.weight, net.blocks[2].mlp.fc1.weight)
        assert same == (variant == "student"), variant
    torch.testing.assert_close(host.pos_embed, nets["student"].pos_embed)

    mae = MAEViTEncoder(img_size=32, patch_size=8, embed_dims=96, num_layers=4, num_heads=3, out_indices=(0, 3),
                        variant="student")
    mae.load_pretrained(path)
    assert torch.equal(mae.layers[2].ffn.layers[0][0].weight, nets["student"].blocks[2].mlp.fc1.weight)
    mae = MAEViTEncoder(img_size=32, patch_size=8, embed_dims=96, num_layers=4, num_heads=3, out_indices=(0, 3))
    mae.load_pretrained(path)  # the default: the teacher
    assert torch.equal(mae.layers[2].ffn.layers[0][0].weight, nets["teacher"].blocks[2].mlp.fc1.weight)

    trained = trained_record(cfg, 1)
    assert trained["variant"] == "student" and results_recipe(cfg, trained)["variant"] == "student"
    assert "variant" not in results_recipe(cfg, trained_record(tool.build_config(
        tool.parse_args([CONFIG, "--checkpoint", str(path)]))[0], 1))
    with pytest.raises(ConfigError, match="there is none"):
        tool.build_config(tool.parse_args(["configs/mmseg/tiny/upernet_vit-pico_ade20k-64x64.py", "--random-init",
                                           "--variant", "student"]))
    from transfer.segmentation.runner import load_seg_config, set_variant

    cfg = load_seg_config("configs/mmseg/tiny/upernet_r18_ade20k-64x64.py")
    cfg.model.backbone.update(type="ResNetV1c", init_cfg=dict(type="Pretrained", checkpoint=str(path)))
    with pytest.raises(ConfigError, match="ResNetV1c backbone reads no variant"):  # mmseg's own: it would not
        set_variant(cfg, "student")


def test_variant_student_of_a_resnet_training_checkpoint(tmp_path):
    """DINO's RN-50 training checkpoint (pico: a ResNet-18): mmseg's ResNet loads the student with the variant."""
    from test_formats import dino_full

    from transfer.segmentation.resnet import ResNetEncoder

    student, teacher = dino_full("student", resnet=True), dino_full("teacher", resnet=True)
    path = tmp_path / "checkpoint.pth"
    torch.save(student.ckpt, path)
    for variant, case in (("student", student), (None, teacher)):
        encoder = ResNetEncoder(depth=18, variant=variant)
        encoder.load_pretrained(path)
        assert torch.equal(encoder.layer3[1].conv2.weight, case.reference.layer3[1].conv2.weight), variant
    assert not torch.equal(student.reference.layer3[1].conv2.weight, teacher.reference.layer3[1].conv2.weight)


@pytest.mark.slow
def test_tiny_upernet_trains_the_student_of_a_training_checkpoint_fitted(tmp_path):
    """tools/train_seg.py on DINO's training checkpoint of pico ViTs (96 wide: not the config's 128) with
    --variant student: the config fitted (printed, in the config written to the work dir), 2 iterations,
    results.json recording the variant."""
    from test_published_backbones_transfer import pico_dino_training_file

    root = shared_data("ade20k_sample") / "ADEChallengeData2016"
    path, _ = pico_dino_training_file(tmp_path)
    out = tmp_path / "run"
    proc = run_tool("tools/train_seg.py", CONFIG, "--checkpoint", path, "--variant", "student", "--data-root", root,
                    "--max-iters", "2", "--output-dir", out, "--cfg-options", "train_dataloader.batch_size=2",
                    env={"OMP_NUM_THREADS": "1"})
    log = proc.stdout + proc.stderr
    assert "fitted to the checkpoint: backbone embed_dims 128 -> 96" in log
    assert "mismatched:                   none" in log  # the student's every tensor accounted for
    written = (out / Path(CONFIG).name).read_text()  # mmengine's copy of the run's config
    assert "sslkit_fitted_to_checkpoint" in written and "embed_dims=96" in written
    rec = json.loads((out / "results.json").read_text())
    assert rec["recipe"]["variant"] == "student" and rec["pretrain"] == "dino" and rec["recipe"]["iterations"] == 2
