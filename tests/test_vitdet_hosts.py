"""The published ViTs in the project's ViTDet backbone (transfer.detection.backbones.ViT), with nothing lost:
DINOv2 with registers (LayerScale, SwiGLU, patch 14) and CLIP (ln_pre, QuickGELU, LayerNorm eps 1e-5), saved in
their released layouts (the files of tests/test_formats.py and tests/test_formats_clip.py), converted, give the
features of timm's model of the export run as ViTDet runs a ViT (no class token, global attention); every source
tensor is used or listed as dropped; a model that lacks an option stops the load; and the tiny ViTDet config takes
the options from the checkpoint, end to end through tools/train_net.py.

Skipped without detectron2.
"""
import json

import pytest
import torch

from conftest import ONE_THREAD, REPO, run_tool, shared_data

pytestmark = pytest.mark.detectron2
CONFIG = REPO / "configs" / "detectron2" / "tiny" / "mask_rcnn_vitdet_pico_from_checkpoint.py"


# ------------------------------------------------------------------ the released files
def dinov2_reg_file(folder):
    """A tiny DINOv2 ViT-g/14 with registers in the authors' layout (LayerScale, SwiGLU, 4 registers, 42 px)."""
    from test_formats import dinov2_backbone

    case = dinov2_backbone(reg=True, swiglu=True)
    path = folder / case.filename
    torch.save(case.ckpt, path)
    return path, case.img


def clip_file(folder, kind="openai-torchscript"):
    """A tiny CLIP ViT/8 as OpenAI released it (TorchScript; QuickGELU, ln_pre, eps 1e-5), or an OpenCLIP hub file
    (GELU, LayerScale)."""
    from test_formats_clip import IMG, write_case

    case = write_case(kind, folder)
    return folder / case.filename, IMG


def timm_patch_map(vit, img):
    """timm's ViT run as ViTDet runs it: its own position embedding, norm_pre and blocks, with the class token
    left out (ViTDet has none) and the registers through every block; the patch tokens as a (B, C, H, W) map."""
    x = vit._pos_embed(vit.patch_embed(img))  # [class, registers, patches]
    if vit.cls_token is not None:
        x = x[:, 1:]
    x = vit.blocks(vit.norm_pre(x))[:, vit.num_reg_tokens:]
    side = img.shape[-1] // vit.patch_embed.patch_size[0]
    return x.transpose(1, 2).reshape(x.shape[0], -1, side, side)


def hosted_vit(converted, img_size, window_block_indexes=(), window_size=0):
    """The project's ViTDet backbone with the converted file's arguments, loaded strictly (relative position terms,
    zero-initialised, the only tensors the file does not fill)."""
    from transfer.detection.backbones import ViT

    net = converted["sslkit"]["net"]
    vit = ViT(img_size=img_size, **net, use_rel_pos=True, window_size=window_size,
              window_block_indexes=list(window_block_indexes))
    sd = {k[len("backbone.net."):]: v for k, v in converted["model"].items()}
    result = vit.load_state_dict(sd, strict=False)
    assert not result.unexpected_keys
    assert all(k.endswith(("rel_pos_h", "rel_pos_w")) for k in result.missing_keys), result.missing_keys
    return vit.eval()


def export_timm(path, folder, allow_pickle=False):
    import timm

    from pretrain.backbones import read_backbone

    export = read_backbone(path, allow_pickle=allow_pickle)
    return export, timm.create_model(f"local-dir:{export.save(folder / 'export')}", pretrained=True).eval()


# ------------------------------------------------------------------ features
def test_dinov2_with_registers_gives_timms_features(tmp_path):
    from transfer.detection.convert import load_converted

    path, img_size = dinov2_reg_file(tmp_path)
    export, timm_vit = export_timm(path, tmp_path)
    converted = load_converted(path, patch_size=14)[0]  # as trained (the pyramid would take 16)
    net = converted["sslkit"]["net"]
    assert (net["reg_tokens"], net["mlp_layer"], net["patch_size"], net["pretrain_use_cls_token"]) == (
        4, "swiglu", 14, False)
    assert net["init_values"] is not None
    vit = hosted_vit(converted, img_size)
    assert type(vit.blocks[0].mlp).__name__ == "GluMlp" and vit.reg_token.shape == (1, 4, 128)
    img = torch.randn(2, 3, img_size, img_size)
    with torch.no_grad():
        want = timm_patch_map(timm_vit, img)
        got = vit(img)["last_feat"]
        assert torch.allclose(got, want, atol=1e-5)
        # LayerScale and the registers matter: without them the features differ (nothing could go unnoticed)
        for blk in vit.blocks:
            blk.ls1.gamma.fill_(1.0)
        assert not torch.allclose(vit(img)["last_feat"], want, atol=1e-3)
        vit = hosted_vit(converted, img_size)
        vit.reg_token.zero_()
        assert not torch.allclose(vit(img)["last_feat"], want, atol=1e-3)


@pytest.mark.parametrize("kind", ["openai-torchscript", "openclip-hub"])
def test_clip_gives_timms_features(tmp_path, kind):
    from transfer.detection.convert import load_converted

    path, img_size = clip_file(tmp_path, kind)
    export, timm_vit = export_timm(path, tmp_path)
    converted = load_converted(path)[0]
    net = converted["sslkit"]["net"]
    assert net["pre_norm"] and net["norm_eps"] == 1e-5 and net["pretrain_use_cls_token"]
    assert net["act_layer"] == ("quick_gelu" if kind == "openai-torchscript" else "gelu")
    assert (net["init_values"] is not None) == (kind == "openclip-hub")  # OpenCLIP's LayerScale
    vit = hosted_vit(converted, img_size)
    assert vit.blocks[0].norm1.eps == vit.norm_pre.eps == 1e-5 and vit.patch_embed.proj.bias is None
    assert type(vit.blocks[0].mlp.act).__name__ == type(timm_vit.blocks[0].mlp.act).__name__
    mean = converted["sslkit"]["pixel_mean"]
    assert mean == pytest.approx([255 * m for m in export.mean]) and mean != pytest.approx([123.675, 116.28, 103.53])
    img = torch.randn(2, 3, img_size, img_size)
    with torch.no_grad():
        want = timm_patch_map(timm_vit, img)
        assert torch.allclose(vit(img)["last_feat"], want, atol=1e-5)
        vit.norm_pre = torch.nn.Identity()  # ln_pre matters
        assert not torch.allclose(vit(img)["last_feat"], want, atol=1e-3)


def test_registers_join_the_global_blocks_and_pass_the_windowed_ones(tmp_path):
    """The registers' design with window attention: a windowed block sees no register (it equals the block run
    without them), a global block sees them; and the pyramid gets the patch map only."""
    from transfer.detection.backbones import run_block
    from transfer.detection.convert import load_converted

    path, img_size = dinov2_reg_file(tmp_path)
    converted = load_converted(path, patch_size=14)[0]
    vit = hosted_vit(converted, img_size, window_block_indexes=[0], window_size=2)
    x = torch.randn(1, 3, 3, 128)
    regs = torch.randn(1, 4, 128)
    with torch.no_grad():
        windowed, kept = run_block(vit.blocks[0], x, regs)
        assert torch.equal(kept, regs) and torch.allclose(windowed, run_block(vit.blocks[0], x)[0])
        joined, changed = run_block(vit.blocks[1], x, regs)
        assert not torch.allclose(changed, regs) and not torch.allclose(joined, run_block(vit.blocks[1], x)[0])
        assert vit(torch.randn(1, 3, img_size, img_size))["last_feat"].shape == (1, 128, 3, 3)


# ------------------------------------------------------------------ the report
@pytest.mark.parametrize("which", ["dinov2", "clip"])
def test_the_report_accounts_for_every_source_tensor(tmp_path, which):
    from pretrain.backbones import read_backbone
    from transfer.detection.convert import VIT_PREFIX, convert

    path = (dinov2_reg_file if which == "dinov2" else clip_file)(tmp_path)[0]
    export = read_backbone(path)
    report = convert(path, tmp_path / "out.pth")
    assert report.ok and not report.mismatched, report.mismatched
    saved = torch.load(report.output, weights_only=True)
    used = {k[len(VIT_PREFIX):] for k in saved["model"]}
    dropped_here = set(report.dropped) - set(export.dropped)
    # every tensor of the export is used or dropped by design (class token, final norm), none both
    assert used | dropped_here == set(export.state_dict) and not used & dropped_here
    assert dropped_here <= {"cls_token", "norm.weight", "norm.bias"}
    assert all(k.endswith(("rel_pos_h", "rel_pos_w")) for k in report.missing_by_design if k.startswith(VIT_PREFIX))
    if which == "dinov2":
        assert "mask_token" in report.dropped  # the authors' file's, by design
        assert {"reg_token", "blocks.0.ls1.gamma", "blocks.1.ls2.gamma"} <= used
        # patch 14 -> 16 for the pyramid, as the ViTDet authors resized ViT-H/14 (bicubic)
        assert any("14x14 -> 16x16 (bicubic, as the ViTDet authors)" in n for n in report.notes)
        assert saved["model"][VIT_PREFIX + "patch_embed.proj.weight"].shape[-1] == 16
        assert saved["sslkit"]["net"]["patch_size"] == 16


def test_beit_is_refused_with_the_reason(tmp_path):
    from test_formats import BEIT_CASES

    from pretrain.checkpoint import CheckpointFormatError
    from transfer.detection.convert import load_converted

    case = BEIT_CASES["beit-pt22k"]()
    path = tmp_path / case.filename
    torch.save(case.ckpt, path)
    with pytest.raises(CheckpointFormatError, match="relative position"):
        load_converted(path)


# ------------------------------------------------------------------ the config takes the checkpoint's options
def test_the_config_takes_the_checkpoints_options_and_a_model_without_them_stops_the_load(tmp_path):
    from detectron2.config import instantiate

    from pretrain.checkpoint import CheckpointFormatError
    from transfer.detection.checkpoint import Checkpointer
    from transfer.detection.engine import Recipe

    dinov2 = dinov2_reg_file(tmp_path)[0]
    recipe = Recipe.load(CONFIG, init_checkpoint=str(dinov2), device="cpu", output_dir=str(tmp_path / "o"))
    net = recipe.cfg.model.backbone.net
    assert (net.reg_tokens, net.mlp_layer, net.patch_size, net.depth, net.pretrain_use_cls_token) == (
        4, "swiglu", 16, 2, False)  # patch 14 -> 16 for the pyramid
    assert any("14x14 -> 16x16 for the pyramid" in n and "bicubic by default" in n for n in recipe.notes)
    assert tuple(recipe.cfg.model.backbone.scale_factors) == (4.0, 2.0, 1.0)  # strides 4, 8, 16 as the config's
    torch.manual_seed(0)
    model = instantiate(recipe.cfg.model)
    checkpointer = Checkpointer(model)
    checkpointer.load(str(dinov2))
    assert checkpointer.pretrained["pretrain"] == "dinov2"
    assert model.backbone.net.patch_embed.proj.weight.shape[-1] == 16

    clip = clip_file(tmp_path)[0]
    recipe = Recipe.load(CONFIG, init_checkpoint=str(clip), device="cpu", output_dir=str(tmp_path / "o"))
    net = recipe.cfg.model.backbone.net
    assert (net.pre_norm, net.act_layer, net.norm_eps, net.patch_size) == (True, "quick_gelu", 1e-5, 8)
    assert list(recipe.cfg.model.pixel_std) != [58.395, 57.12, 57.375]  # CLIP's, not ImageNet's
    clip_model = instantiate(recipe.cfg.model)
    Checkpointer(clip_model).load(str(clip))

    # The plain ViTDet config (no option from the checkpoint) stops rather than dropping what it has no place for
    plain = Recipe.load(CONFIG.with_name("mask_rcnn_vitdet_pico.py"), device="cpu", output_dir=str(tmp_path / "o"))
    plain.cfg.model.backbone.net.update(embed_dim=128, depth=2, num_heads=2, patch_size=14, mlp_ratio=4.0)
    with pytest.raises(CheckpointFormatError, match="no place"):
        Checkpointer(instantiate(plain.cfg.model)).load(str(dinov2))
    # ... and a model of CLIP's tensors but GELU and eps 1e-6 stops too (no tensor tells them apart)
    recipe.cfg.model.backbone.net.update(act_layer="gelu", norm_eps=1e-6)
    with pytest.raises(CheckpointFormatError, match="eps"):
        Checkpointer(instantiate(recipe.cfg.model)).load(str(clip))


# ------------------------------------------------------------------ end to end
@pytest.mark.slow
def test_tiny_mask_rcnn_trains_from_dinov2_reg_and_clip_files(tmp_path):
    from test_rungs_detection_extra import coco_subset

    from transfer.results import read_results

    root = coco_subset(shared_data("coco_tiny50"), tmp_path / "coco", "instances", 2)
    for name, make in (("dinov2", dinov2_reg_file), ("clip", clip_file)):
        path = make(tmp_path)[0]
        out = tmp_path / name
        run_tool("tools/train_net.py", "--config-file", CONFIG, "--train-json",
                 root / "annotations/instances_train2017.json", "--test-json",
                 root / "annotations/instances_val2017.json", "--output-dir", out, "--checkpoint", path,
                 "--max-iters", 2, env=ONE_THREAD)
        record = read_results(out)
        assert record["task"] == "coco_instance_seg" and record["pretrain"] == name
        assert 0.0 <= record["metrics"]["box_AP"] <= 100.0
        config = (out / "config.yaml").read_text()
        assert ("reg_tokens: 4" in config) == (name == "dinov2") and ("quick_gelu" in config) == (name == "clip")
        assert ("patch_size: 16" in config) == (name == "dinov2")  # 14 resized; CLIP's 8 as it is
        if name == "dinov2":  # the checkpointer resized the kernel (bicubic, as the ViTDet authors)
            assert "resized the patch embedding to 16x16 (bicubic)" in (out / "log.txt").read_text()
        json.loads((out / "results.json").read_text())
