"""The published ViTs in the project's ViTDet backbone (transfer.detection.backbones.ViT), with nothing lost:
DINOv2 with registers (LayerScale, SwiGLU, patch 14) and CLIP (ln_pre, QuickGELU, LayerNorm eps 1e-5), saved in
their released layouts (the files of tests/test_formats.py and tests/test_formats_clip.py), converted, give the
features of timm's model of the export run as ViTDet runs a ViT (no class token, global attention); every source
tensor is used or listed as dropped; a model that lacks an option stops the load; and the tiny ViTDet config takes
the options from the checkpoint, end to end through tools/train_net.py. BEiT v1 / v2 and data2vec keep their relative
position bias per block: the authors' model's patch features, globally and per window (the table resampled).

Skipped without detectron2.
"""
import copy
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


# ------------------------------------------------------------------ BEiT v1 / v2, data2vec: its relative position bias
# tests/test_formats.py's BEiT files (the authors' layouts, random weights: 64 wide, 2 blocks, 4 heads, patch 8,
# pretrained at 32 px: a 4 x 4 grid); the reference is the authors' fine-tuning model (re-derived there) run as
# ViTDet runs a ViT: no class token (the position table's class row left out, the attention's bias the
# patch-to-patch part of the authors' table as their relative position index reads it), windowed blocks run per
# window with the table resampled to the window (bicubic; the authors' index of that window).
def beit_file(folder, case_name="beit-pt22k"):
    from test_formats import BEIT_CASES

    case = BEIT_CASES[case_name]()
    path = folder / case.filename
    torch.save(case.ckpt, path)
    return path, case.reference.net


def authors_patch_bias(rel, size):
    """The authors' relative position bias (heads, size^2, size^2) between the patches of a size x size window."""
    from test_formats import beit_relative_position_index
    from timm.layers import resize_rel_pos_bias_table_simple

    if size == rel.window:
        return rel()[:, 1:, 1:]  # the authors' module: [class, patches] rows and columns
    table = rel.relative_position_bias_table
    table = resize_rel_pos_bias_table_simple(table, (size, size), ((2 * size - 1) ** 2 + 3, table.shape[1]))
    n = size * size + 1
    return table[beit_relative_position_index(size).view(-1)].view(n, n, -1).permute(2, 0, 1)[:, 1:, 1:]


def authors_patch_map(net, img, windows=None):
    """The authors' BEiT blocks over the patch tokens only (``windows``: block -> window side; else global)."""
    net = copy.deepcopy(net)
    x = net.patch_embed.proj(img)
    B, C, H, W = x.shape
    x = x.flatten(2).transpose(1, 2)
    if net.pos_embed is not None:
        x = x + net.pos_embed[:, 1:]
    for i, blk in enumerate(net.blocks):
        s = (windows or {}).get(i, H)
        bias = authors_patch_bias(blk.attn.rel, s)
        blk.attn.rel = None  # its bias goes in as the block's rel_pos_bias, the class rows left out
        t = x.view(B, H // s, s, W // s, s, C).permute(0, 1, 3, 2, 4, 5).reshape(-1, s * s, C)
        t = blk(t, bias.unsqueeze(0))
        x = t.view(B, H // s, W // s, s, s, C).permute(0, 1, 3, 2, 4, 5).reshape(B, H * W, C)
    return x.transpose(1, 2).reshape(B, C, H, W)


def hosted_beit(converted, img_size, window_block_indexes=(), window_size=0):
    """The project's ViTDet backbone with the converted BEiT's arguments, loaded strictly: every tensor filled."""
    from transfer.detection.backbones import ViT

    vit = ViT(img_size=img_size, **converted["sslkit"]["net"], window_size=window_size,
              window_block_indexes=list(window_block_indexes))
    vit.load_state_dict({k[len("backbone.net."):]: v for k, v in converted["model"].items()})
    return vit.eval()


@pytest.mark.parametrize("case_name", ["beit-pt22k", "beit-training", "beit_v2-pt1k", "data2vec"])
def test_beit_gives_the_authors_patch_features(tmp_path, case_name):
    from transfer.detection.convert import load_converted

    path, authors = beit_file(tmp_path, case_name)
    converted = load_converted(path)[0]
    net = converted["sslkit"]["net"]
    assert (net["rel_pos_bias_grid"], net["use_rel_pos"], net["init_values"]) == (4, False, 0.1)
    assert net["use_abs_pos"] == (case_name == "beit-training")  # the one file with an absolute position table
    vit = hosted_beit(converted, 32)
    img = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = authors_patch_map(authors, img)
        assert torch.allclose(vit(img)["last_feat"], want, atol=1e-5)
        # the bias and LayerScale matter: without them the features differ
        for blk in vit.blocks:
            blk.attn.relative_position_bias_table.zero_()
        assert not torch.allclose(vit(img)["last_feat"], want, atol=1e-3)
        vit = hosted_beit(converted, 32)
        vit.blocks[0].ls1.gamma.fill_(1.0)
        assert not torch.allclose(vit(img)["last_feat"], want, atol=1e-3)


@pytest.mark.parametrize("img_size, window", [(32, 2), (48, 3), (64, 4)])
def test_beit_windows_and_other_grids_take_the_table_resampled(tmp_path, img_size, window):
    """Block 0 windowed, block 1 global: a window (and a global grid: 6 x 6 at 48 px, 8 x 8 at 64) of another size
    than the table's 4 x 4 takes the table resampled bicubically; a window of the table's size takes it as it is."""
    from transfer.detection.convert import load_converted

    path, authors = beit_file(tmp_path, "data2vec")
    converted = load_converted(path)[0]
    vit = hosted_beit(converted, img_size, window_block_indexes=[0], window_size=window)
    img = torch.randn(1, 3, img_size, img_size)
    with torch.no_grad():
        got = vit(img)["last_feat"]
        assert torch.allclose(got, authors_patch_map(authors, img, {0: window}), atol=1e-5)
        assert not torch.allclose(got, authors_patch_map(authors, img), atol=1e-3)  # windows change it


def test_beits_bias_applies_between_patches_when_prefix_tokens_join(tmp_path):
    """attention_with_prefix (the registers' path through a global block) adds BEiT's bias between the patches:
    with no prefix token it is the block's attention; prefix tokens change the patches' outputs."""
    from transfer.detection.backbones import attention_with_prefix
    from transfer.detection.convert import load_converted

    vit = hosted_beit(load_converted(beit_file(tmp_path)[0])[0], 32)
    attn = vit.blocks[0].attn
    x = torch.randn(2, 4, 4, 64)
    with torch.no_grad():
        alone, none = attention_with_prefix(attn, x, x.new_zeros(2, 0, 64))
        assert none.shape == (2, 0, 64) and torch.allclose(alone, attn(x), atol=1e-6)
        joined, prefix = attention_with_prefix(attn, x, torch.randn(2, 3, 64))
        assert prefix.shape == (2, 3, 64) and not torch.allclose(joined, alone, atol=1e-3)


def test_the_beit_report_accounts_for_every_source_tensor(tmp_path):
    from pretrain.backbones import read_backbone
    from transfer.detection.convert import VIT_PREFIX, convert, vit_to_detectron2

    path = beit_file(tmp_path, "beit_v2-training")[0]
    export = read_backbone(path)
    report = convert(path, tmp_path / "out.pth")
    assert report.ok and not report.mismatched, report.mismatched
    saved = torch.load(report.output, weights_only=True)["model"]
    adapted = vit_to_detectron2(export)[3]["adapted"]
    used = {k[len(VIT_PREFIX):] for k in saved}
    dropped_here = set(report.dropped) - set(export.dropped)
    # every tensor of the export: used under its name, adapted into another, or dropped by design; none twice
    kept = used & set(export.state_dict)
    assert kept | set(adapted) | dropped_here == set(export.state_dict)
    assert not kept & set(adapted) and not (kept | set(adapted)) & dropped_here
    assert dropped_here == {"cls_token", "norm.weight", "norm.bias"}
    assert {"model.mask_token", "model.lm_head.weight", "model.cls_pt_layers.0.attn.q_bias"} <= set(report.dropped)
    assert set(adapted.values()) <= used and adapted["blocks.1.gamma_2"] == "blocks.1.ls2.gamma"
    sd = export.state_dict
    q, v = sd["blocks.0.attn.q_bias"], sd["blocks.0.attn.v_bias"]
    assert torch.equal(saved[VIT_PREFIX + "blocks.0.attn.qkv.bias"], torch.cat([q, torch.zeros_like(q), v]))
    table = sd["blocks.1.attn.relative_position_bias_table"]  # (2 * 4 - 1)^2 + 3 rows: the 3 class entries last
    assert torch.equal(saved[VIT_PREFIX + "blocks.1.attn.relative_position_bias_table"], table[:49])
    assert any("3 class-token entries" in n and "relative_position_bias_table" in n for n in report.notes)
    assert any("q_bias and v_bias -> blocks.*.attn.qkv.bias with a zero key bias" in n for n in report.notes)
    # no decomposed relative position terms: nothing of the ViT is left to train from scratch
    assert not [k for k in report.missing_by_design if k.startswith(VIT_PREFIX)]


def test_the_config_takes_beits_bias_and_a_model_without_it_stops_the_load(tmp_path):
    from detectron2.config import instantiate

    from pretrain.checkpoint import CheckpointFormatError
    from transfer.detection.checkpoint import Checkpointer
    from transfer.detection.engine import Recipe

    path = beit_file(tmp_path)[0]
    recipe = Recipe.load(CONFIG, init_checkpoint=str(path), device="cpu", output_dir=str(tmp_path / "o"))
    net = recipe.cfg.model.backbone.net
    assert (net.rel_pos_bias_grid, net.use_rel_pos, net.use_abs_pos, net.depth) == (4, False, False, 2)
    assert list(recipe.cfg.model.pixel_mean) == [127.5] * 3  # BEiT v1's 22k normalisation, (0.5, 0.5, 0.5)
    model = instantiate(recipe.cfg.model)
    Checkpointer(model).load(str(path))
    attn = model.backbone.net.blocks[0].attn
    assert torch.equal(attn.relative_position_bias_table, read_table(path)[:49])
    # the tables, trained, get no weight decay (BEiT's fine-tuning): the optimizer's group of the table says 0
    recipe.cfg.optimizer.params.model = model
    decay = {id(p): g["weight_decay"] for g in instantiate(recipe.cfg.optimizer).param_groups for p in g["params"]}
    assert decay[id(attn.relative_position_bias_table)] == 0.0 and decay[id(attn.qkv.weight)] > 0
    # a ViTDet without the bias (detectron2's decomposed terms) stops rather than dropping the tables
    net.update(rel_pos_bias_grid=0, use_rel_pos=True)
    with pytest.raises(CheckpointFormatError, match="relative_position_bias_table: no place"):
        Checkpointer(instantiate(recipe.cfg.model)).load(str(path))


def read_table(path):
    from pretrain.backbones import read_backbone

    return read_backbone(path).state_dict["blocks.0.attn.relative_position_bias_table"]


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


@pytest.mark.slow
def test_tiny_mask_rcnn_trains_from_a_beit_file(tmp_path):
    from test_rungs_detection_extra import coco_subset

    from transfer.results import read_results

    root = coco_subset(shared_data("coco_tiny50"), tmp_path / "coco", "instances", 2)
    path = beit_file(tmp_path)[0]
    out = tmp_path / "beit"
    run_tool("tools/train_net.py", "--config-file", CONFIG, "--train-json",
             root / "annotations/instances_train2017.json", "--test-json", root / "annotations/instances_val2017.json",
             "--output-dir", out, "--checkpoint", path, "--max-iters", 2, env=ONE_THREAD)
    record = read_results(out)
    assert record["task"] == "coco_instance_seg" and record["pretrain"] == "beit"
    assert 0.0 <= record["metrics"]["box_AP"] <= 100.0
    config = (out / "config.yaml").read_text()
    assert "rel_pos_bias_grid: 4" in config and "use_rel_pos: false" in config
