"""Conversions into detectron2's ViT (ViTDet) and ResNet: key reports, and features equal to the source model's.

detectron2 is on no package registry; without it these tests skip (install it by hand:
pip install --no-build-isolation 'git+https://github.com/facebookresearch/detectron2.git').
"""
import pickle

import pytest
import torch

from conftest import REPO, run_tool

pytestmark = pytest.mark.detectron2  # skips without detectron2 (fails where CI requires it)


def tiny_mae(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2):
    from pretrain.methods.mae import MaskedAutoencoderViT

    torch.manual_seed(0)
    return MaskedAutoencoderViT(img_size=img_size, patch_size=patch_size, embed_dim=embed_dim, depth=depth,
                                num_heads=num_heads, decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)


def d2_vit(weights, embed_dim=32, depth=2, num_heads=2, patch_size=8, pretrain_img_size=32, window_blocks=(),
           window_size=0):
    """detectron2's ViT of that shape, loaded strictly with converted weights (relative position terms at zero)."""
    from functools import partial

    from detectron2.modeling import ViT

    vit = ViT(img_size=pretrain_img_size, patch_size=patch_size, embed_dim=embed_dim, depth=depth, num_heads=num_heads,
              norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), use_rel_pos=True, window_size=window_size,
              window_block_indexes=list(window_blocks), pretrain_img_size=pretrain_img_size)
    sd = {k[len("backbone.net."):]: v for k, v in weights.items()}
    result = vit.load_state_dict(sd, strict=False)
    assert not result.unexpected_keys
    assert all(k.endswith(("rel_pos_h", "rel_pos_w")) for k in result.missing_keys), result.missing_keys
    return vit.eval()


def reference_tokens(patch_embed, pos_embed, blocks, img, windows=None):
    """The source model's own modules, run as ViTDet runs them: patch tokens only (no class token),
    attention within ``windows`` x ``windows`` windows for the blocks listed in ``windows_at``."""
    x = patch_embed(img) + pos_embed[:, -patch_embed.num_patches:]
    n, length, d = x.shape
    side = int(length ** 0.5)
    for i, blk in enumerate(blocks):
        if windows and i in windows["at"]:
            w = windows["size"]
            g = x.reshape(n, side // w, w, side // w, w, d).permute(0, 1, 3, 2, 4, 5).reshape(-1, w * w, d)
            g = blk(g).reshape(n, side // w, side // w, w, w, d).permute(0, 1, 3, 2, 4, 5)
            x = g.reshape(n, length, d)
        else:
            x = blk(x)
    return x.transpose(1, 2).reshape(n, d, side, side)


# ------------------------------------------------------------------ ViTs
def test_mae_to_vitdet_gives_the_source_features(tmp_path):
    from pretrain.checkpoint import save_atomic
    from transfer.detection.convert import convert, load_converted

    mae = tiny_mae().eval()
    src = save_atomic({"model": mae.state_dict(), "epoch": 3}, tmp_path / "mae.pth")
    report = convert(src, tmp_path / "vit.pth")
    assert report.ok and report.output
    # Missing by design: exactly the relative position terms and what is not the ViT (pyramid, heads).
    rel = [k for k in report.missing_by_design if k.startswith("backbone.net.")]
    assert rel and all(k.endswith(("attn.rel_pos_h", "attn.rel_pos_w")) for k in rel)
    assert any(k.startswith("backbone.simfp_") for k in report.missing_by_design)
    assert any(k.startswith("roi_heads.") for k in report.missing_by_design)
    assert {"cls_token", "norm.weight", "norm.bias", "mask_token", "decoder_embed.weight"} <= set(report.dropped)

    saved = torch.load(report.output, weights_only=True)
    assert saved["__author__"] == "sslkit" and saved["matching_heuristics"] is False
    assert saved["sslkit"]["pretrain"] == "mae" and saved["sslkit"]["backbone"] == "vit_d32x2_patch8"
    assert saved["model"]["backbone.net.pos_embed"].shape == (1, 17, 32)  # the class row kept
    vit = d2_vit(saved["model"])
    img = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        got = vit(img)["last_feat"]
        want = reference_tokens(mae.patch_embed, mae.pos_embed, mae.blocks, img)
    assert torch.allclose(got, want, atol=1e-5)
    assert converted_equal(load_converted(src)[0]["model"], saved["model"])


def test_mocov3_vit_to_vitdet_gives_the_base_encoders_features(tmp_path):
    """The MoCo v3 authors' layout: the base encoder is the ViT, with the heads its architecture names."""
    from pretrain.checkpoint import save_atomic
    from pretrain.methods.mocov3 import MoCoV3ViT, build_vit
    from transfer.detection.convert import convert

    torch.manual_seed(0)
    model = MoCoV3ViT(lambda **kw: build_vit("vit_pico", img_size=32, **kw), dim=16, mlp_dim=32).eval()
    src = save_atomic({"epoch": 300, "arch": "vit_pico", "state_dict": {f"module.{k}": v for k, v in
                                                                      model.state_dict().items()}}, tmp_path / "v3.pth.tar")
    report = convert(src, tmp_path / "vit.pth")
    assert report.ok and any(k.startswith("momentum_encoder.") for k in report.dropped)
    saved = torch.load(report.output, weights_only=True)
    assert saved["sslkit"]["pretrain"] == "moco_v3" and saved["sslkit"]["pretrain_epochs"] == 300
    assert saved["sslkit"]["num_heads"] == 3
    vit = d2_vit(saved["model"], embed_dim=96, depth=4, num_heads=3)
    net = model.base_encoder
    img = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        got = vit(img)["last_feat"]
        want = reference_tokens(net.patch_embed, net.pos_embed, net.blocks, img)
    assert torch.allclose(got, want, atol=1e-5)


def converted_equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_encoder_only_releases_convert_and_are_labelled_by_what_is_known(tmp_path):
    from pretrain.checkpoint import save_atomic
    from pretrain.methods.mae import encoder_state_dict
    from transfer.detection.convert import load_converted

    mae = tiny_mae()
    encoder = encoder_state_dict(mae.state_dict())  # the layout of the authors' mae_pretrain_vit_*.pth
    release = load_converted(save_atomic({"model": encoder}, tmp_path / "mae_pretrain_vit_tiny.pth"))[0]
    anonymous = load_converted(save_atomic({"model": encoder}, tmp_path / "encoder.pth"))[0]
    full = load_converted({"model": mae.state_dict()})[0]
    assert (release["sslkit"]["pretrain"], anonymous["sslkit"]["pretrain"]) == ("mae", "unknown")
    assert converted_equal(release["model"], full["model"]) and converted_equal(anonymous["model"], full["model"])


def test_window_attention_blocks_match_the_source_blocks_within_windows():
    from transfer.detection.convert import load_converted

    mae = tiny_mae().eval()
    weights = load_converted({"model": mae.state_dict()})[0]["model"]
    vit = d2_vit(weights, window_blocks=[0], window_size=2)
    img = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        got = vit(img)["last_feat"]
        want = reference_tokens(mae.patch_embed, mae.pos_embed, mae.blocks, img, windows={"at": [0], "size": 2})
        plain = reference_tokens(mae.patch_embed, mae.pos_embed, mae.blocks, img)
    assert torch.allclose(got, want, atol=1e-5)
    assert not torch.allclose(got, plain, atol=1e-3)  # the windows do change the result


@pytest.mark.parametrize("distilled", [False, True])
def test_timm_and_deit_vits_convert_with_their_classifier_dropped(distilled):
    from timm.models.deit import VisionTransformerDistilled
    from timm.models.vision_transformer import VisionTransformer

    from transfer.detection.convert import convert, load_converted

    torch.manual_seed(0)
    cls = VisionTransformerDistilled if distilled else VisionTransformer
    vit = cls(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=10).eval()
    sd = vit.state_dict()
    report = convert({"model": sd})
    assert report.ok
    assert {"head.weight", "cls_token"} <= set(report.dropped)
    assert ("dist_token" in report.dropped) == distilled
    converted = load_converted({"model": sd})[0]
    assert converted["sslkit"]["pretrain"] == "supervised"
    d2 = d2_vit(converted["model"])
    img = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = reference_tokens(vit.patch_embed, vit.pos_embed, vit.blocks, img)
        got = d2(img)["last_feat"]
    assert torch.allclose(got, want, atol=1e-5)


def test_patch_14_to_16_as_the_vitdet_authors_by_default():
    """ViT-H/14 -> /16 for ViTDet-H: the kernel interpolated bicubically (F.interpolate, align_corners=False), as
    the ViTDet authors made mae_pretrain_vit_huge_p14to16.pth; the backbone keeps its pretrained name."""
    import torch.nn.functional as F

    from transfer.detection.checkpoint import place_weights
    from transfer.detection.convert import convert, load_converted

    mae = tiny_mae(img_size=112, patch_size=14)
    report = convert({"model": mae.state_dict()}, patch_size=16)
    assert report.ok and any("14x14 -> 16x16 (bicubic, as the ViTDet authors)" in n for n in report.notes)
    converted = load_converted({"model": mae.state_dict()}, patch_size=16)[0]
    w = converted["model"]["backbone.net.patch_embed.proj.weight"]
    expected = F.interpolate(mae.patch_embed.proj.weight, size=(16, 16), mode="bicubic", align_corners=False)
    assert torch.equal(w, expected)
    assert converted["model"]["backbone.net.pos_embed"].shape == (1, 1 + 7 * 7, 32)  # 112 px on a 16-px grid
    assert converted["sslkit"]["pretrain_img_size"] == 112 and converted["sslkit"]["patch_size"] == 16
    assert converted["sslkit"]["backbone"] == "vit_d32x2_patch14"  # the pretrained ViT's name, as published rows
    # The checkpointer's in-memory resize (the ViTDet-H recipe loads the /14 file directly) does the same.
    unresized = load_converted({"model": mae.state_dict()})[0]["model"]
    model_state = {k: torch.empty(v.shape) for k, v in converted["model"].items()}
    placed, notes, problems = place_weights(unresized, model_state)
    assert not problems and torch.equal(placed["backbone.net.patch_embed.proj.weight"], expected)
    assert any("(bicubic)" in n for n in notes)


def test_patch_14_to_16_pseudo_inverse_option_embeds_an_upsampled_patch_as_before():
    """The pinv option (FlexiViT): the resized kernel applied to a patch resized 14 -> 16 equals the old kernel on
    the patch. A deviation from the published ViTDet-H, kept for users who want it."""
    import torch.nn.functional as F

    from transfer.detection.convert import convert, load_converted

    mae = tiny_mae(img_size=112, patch_size=14)
    report = convert({"model": mae.state_dict()}, patch_size=16, patch_resize="pinv")
    assert report.ok and any("pseudo-inverse resize: a deviation" in n for n in report.notes)
    converted = load_converted({"model": mae.state_dict()}, patch_size=16, patch_resize="pinv")[0]
    w = converted["model"]["backbone.net.patch_embed.proj.weight"]
    assert w.shape == (32, 3, 16, 16)
    patches = torch.randn(5, 3, 14, 14)
    old = F.conv2d(patches, mae.patch_embed.proj.weight).flatten()
    up = F.interpolate(patches, size=(16, 16), mode="bicubic", antialias=True, align_corners=False)
    new = F.conv2d(up, w).flatten()
    assert torch.allclose(new, old, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="applies to ViTs"):
        from pretrain.methods.moco import build_moco, moco_checkpoint

        load_converted(moco_checkpoint(build_moco("resnet18", K=8), "resnet18", 0), patch_size=16)


# ---------------------------------------------------------------- ResNets
def d2_resnet(depth, weights, norm="FrozenBN"):
    from detectron2.modeling.backbone import BasicStem, ResNet

    kw = {"stride_in_1x1": False} if depth >= 50 else {}
    net = ResNet(BasicStem(3, 64, norm=norm), ResNet.make_default_stages(depth, norm=norm, **kw),
                 out_features=["res2", "res3", "res4", "res5"])
    result = net.load_state_dict(weights, strict=False)
    assert not result.unexpected_keys and not [k for k in result.missing_keys if "num_batches" not in k]
    return net.eval()


def randomise_bn_statistics(net):
    torch.manual_seed(1)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.1)


def test_wide_resnet_is_refused_with_the_reason():
    import torchvision

    from pretrain.checkpoint import CheckpointFormatError
    from transfer.detection.convert import convert

    with torch.device("meta"):
        sd = torchvision.models.wide_resnet50_2().state_dict()
    with pytest.raises(CheckpointFormatError, match="wide_resnet50_2.*resnet18 to resnet152"):
        convert(sd)


@pytest.mark.parametrize("arch,moco", [("resnet18", True), ("resnet50", False)])
def test_resnet_conversion_gives_the_torchvision_features(tmp_path, arch, moco):
    import torchvision

    from pretrain.checkpoint import save_atomic
    from pretrain.methods.moco import build_moco, moco_checkpoint
    from transfer.detection.convert import convert

    if moco:
        model = build_moco(arch, K=16, mlp=True)
        net = model.encoder_q
        randomise_bn_statistics(net)
        src = save_atomic(moco_checkpoint(model, arch, 1), tmp_path / "moco.pth.tar")
    else:
        net = getattr(torchvision.models, arch)()
        randomise_bn_statistics(net)
        src = save_atomic(net.state_dict(), tmp_path / "tv.pth")
    report = convert(src, tmp_path / "r.pkl")
    assert report.ok and not report.missing_by_design
    assert any(k.endswith("fc.weight") or k.endswith("fc.0.weight") for k in report.dropped)
    if moco:
        assert any(k.startswith("encoder_k.") for k in report.dropped) and "queue" in report.dropped

    with open(report.output, "rb") as f:  # the MoCo authors' layout: numpy arrays + matching heuristics
        saved = pickle.load(f)
    assert saved["matching_heuristics"] is True and saved["__author__"] == "sslkit"
    assert saved["sslkit"]["pretrain"] == ("moco_v2" if moco else "supervised")
    assert {"stem.conv1.weight", "stem.conv1.norm.running_var", "res2.0.conv1.norm.weight", "res5.1.conv2.weight",
            "res3.0.shortcut.weight", "res3.0.shortcut.norm.bias"} <= set(saved["model"])
    weights = {k: torch.from_numpy(v) for k, v in saved["model"].items()}
    d2 = d2_resnet(int(arch[len("resnet"):]), weights)
    net.eval()
    img = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        feats = d2(img)
        x = net.maxpool(net.relu(net.bn1(net.conv1(img))))
        for i, layer in enumerate([net.layer1, net.layer2, net.layer3, net.layer4], start=2):
            x = layer(x)
            assert torch.allclose(feats[f"res{i}"], x, atol=1e-4), f"res{i}"


def test_moco_pkl_loads_into_c4_and_fpn_models_with_detectron2s_own_checkpointer(tmp_path):
    """Stock DetectionCheckpointer + matching heuristics put res5 in the C4 head and in the FPN backbone alike."""
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.config import LazyConfig, instantiate

    from pretrain.checkpoint import save_atomic
    from pretrain.methods.moco import build_moco, moco_checkpoint
    from transfer.detection.convert import convert

    model = build_moco("resnet18", K=16)
    src = save_atomic(moco_checkpoint(model, "resnet18", 1), tmp_path / "moco.pth.tar")
    out = convert(src, tmp_path / "r18.pkl").output
    q = model.encoder_q.state_dict()
    for name, res5 in (("mask_rcnn_R_18_C4", "roi_heads.res5"), ("mask_rcnn_R_18_FPN", "backbone.bottom_up.res5")):
        cfg = LazyConfig.load(str(REPO / f"configs/detectron2/tiny/{name}.py"))
        det = instantiate(cfg.model)
        DetectionCheckpointer(det).load(out)
        sd = det.state_dict()
        assert torch.equal(sd[f"{res5}.1.conv2.weight"], q["layer4.1.conv2.weight"])
        assert torch.equal(sd[f"{res5}.0.shortcut.norm.running_mean"], q["layer4.0.downsample.1.running_mean"])
        stem = "backbone.bottom_up.stem" if "FPN" in name else "backbone.stem"
        assert torch.equal(sd[f"{stem}.conv1.weight"], q["conv1.weight"])


# ------------------------------------------------------------- bad inputs
def test_wrong_inputs_say_what_was_expected_and_found(tmp_path):
    from pretrain.checkpoint import CheckpointFormatError, save_atomic
    from transfer.detection.convert import convert, load_converted

    with pytest.raises(CheckpointFormatError, match="expected a pretraining checkpoint.*found an unrecognised"):
        convert({"model": {"encoder.weight": torch.zeros(2)}})
    already = {"model": {"backbone.net.blocks.0.attn.qkv.weight": torch.zeros(3, 1)}}
    with pytest.raises(CheckpointFormatError, match="already converted"):
        load_converted(already)
    with pytest.raises(ValueError, match=".pkl or .pth"):
        convert({"model": tiny_mae().state_dict()}, tmp_path / "x.safetensors")
    # A pickle holding more than arrays is refused unless trusted.
    bad = tmp_path / "bad.pkl"
    with open(bad, "wb") as f:
        pickle.dump({"model": {"x": torch.nn.Linear(1, 1)}}, f)
    with pytest.raises(CheckpointFormatError, match="allow_pickle"):
        convert(bad)
    # Nothing is written when the conversion does not match its target.
    sd = tiny_mae().state_dict()
    sd["blocks.1.mlp.fc1.weight"] = torch.zeros(5, 5)
    save_atomic({"model": sd}, tmp_path / "broken.pth")
    report = convert(tmp_path / "broken.pth", tmp_path / "broken_d2.pth")
    assert not report.ok and any("blocks.1.mlp.fc1.weight" in m for m in report.mismatched)
    assert not (tmp_path / "broken_d2.pth").exists()


def test_convert_checkpoint_cli(tmp_path):
    from pretrain.checkpoint import save_atomic

    src = save_atomic({"model": tiny_mae().state_dict()}, tmp_path / "mae.pth")
    proc = run_tool("tools/convert_checkpoint.py", src, tmp_path / "vit.pkl", "--to", "detectron2")
    assert "missing by design" in proc.stdout and "mismatched:                   none" in proc.stdout
    assert "relative position terms" in proc.stdout and (tmp_path / "vit.pkl").is_file()
    save_atomic({"state_dict": {"foo.weight": torch.zeros(1)}}, tmp_path / "junk.pth")
    proc = run_tool("tools/convert_checkpoint.py", tmp_path / "junk.pth", tmp_path / "o.pkl", "--to", "detectron2",
                    check=False)
    assert proc.returncode != 0 and "expected a pretraining checkpoint" in proc.stderr


# ------------------------------------------------------------ checkpointer
def test_checkpointer_converts_in_memory_and_places_strictly(tmp_path):
    from detectron2.config import LazyConfig, instantiate

    from pretrain.checkpoint import CheckpointFormatError, save_atomic
    from pretrain.methods.mae import create_mae
    from transfer.detection.checkpoint import Checkpointer

    cfg = LazyConfig.load(str(REPO / "configs/detectron2/tiny/mask_rcnn_vitdet_pico.py"))
    det = instantiate(cfg.model)
    # The project's pico MAE, pretrained at 32 px: its 4 x 4 position grid is interpolated to the config's 8 x 8.
    mae = create_mae("mae_vit_pico_patch8", img_size=32, decoder_depth=1, decoder_embed_dim=16, decoder_num_heads=2)
    src = save_atomic({"model": mae.state_dict()}, tmp_path / "mae_pico.pth")
    ck = Checkpointer(det)
    ck.load(str(src))
    assert ck.pretrained["pretrain"] == "mae" and ck.pretrained["backbone"] == "vit_pico_patch8"
    sd = det.state_dict()
    assert torch.equal(sd["backbone.net.blocks.3.mlp.fc2.weight"], mae.blocks[3].mlp.fc2.weight)
    assert sd["backbone.net.pos_embed"].shape == (1, 65, 96)
    # A converted file loads in detectron2's own checkpointer as well, under the same names.
    from detectron2.checkpoint import DetectionCheckpointer

    from transfer.detection.convert import convert

    at64 = create_mae("mae_vit_pico_patch8", img_size=64, decoder_depth=1, decoder_embed_dim=16,
                      decoder_num_heads=2).state_dict()
    save_atomic({"model": at64}, tmp_path / "mae_pico64.pth")
    DetectionCheckpointer(det).load(convert(tmp_path / "mae_pico64.pth", tmp_path / "pico_d2.pth").output)
    sd = det.state_dict()
    assert torch.equal(sd["backbone.net.pos_embed"], at64["pos_embed"])
    assert torch.equal(sd["backbone.net.blocks.1.attn.qkv.bias"], at64["blocks.1.attn.qkv.bias"])
    # A ViT of another depth does not fit: an error that names the unfilled blocks.
    shallow = {k: v for k, v in at64.items() if not k.startswith(("blocks.2.", "blocks.3."))}
    save_atomic({"model": shallow}, tmp_path / "shallow.pth")
    with pytest.raises(CheckpointFormatError, match="blocks.2"):
        Checkpointer(det).load(str(tmp_path / "shallow.pth"))
