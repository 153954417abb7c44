"""MAE / MoCo checkpoints into mmseg's own backbones: same features as the source, honest reports."""
import argparse
import importlib.util
import pickle

import pytest
import torch
import torch.nn.functional as F

from conftest import run_tool

# mmseg is looked up, not imported: collection stays light.
pytestmark = [pytest.mark.skipif(importlib.util.find_spec("mmseg") is None,
                                 reason="mmsegmentation is not installed (tools/setup_env.sh installs it)"),
              pytest.mark.filterwarnings("ignore:torch.meshgrid")]


PICO = dict(patch_size=8, embed_dims=96, num_layers=4, num_heads=3, out_indices=(0, 1, 2, 3))


def perturbed_mae(img_size=32, seed=0):
    """A pico MAE whose every tensor (the k bias of qkv included) is non-trivial."""
    from pretrain.methods.mae import create_mae

    torch.manual_seed(seed)
    model = create_mae("mae_vit_pico_patch8", img_size=img_size, decoder_depth=1, decoder_embed_dim=32,
                       decoder_num_heads=2)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def reference_block_maps(mae, x, pos_embed=None):
    """Each block's patch tokens as [N, C, h, w], computed with the source model's own modules."""
    pos = mae.pos_embed if pos_embed is None else pos_embed
    h, w = x.shape[-2] // mae.patch_size, x.shape[-1] // mae.patch_size
    tokens = mae.patch_embed.proj(x).flatten(2).transpose(1, 2) + pos[:, 1:]
    t = torch.cat([(mae.cls_token + pos[:, :1]).expand(x.shape[0], -1, -1), tokens], 1)
    maps = []
    for blk in mae.blocks:
        t = blk(t)
        maps.append(t[:, 1:].transpose(1, 2).reshape(x.shape[0], -1, h, w))
    return maps


def vit_encoder(checkpoint=None, img_size=32, **kw):
    from transfer.segmentation.vit import MAEViTEncoder

    init = dict(type="Pretrained", checkpoint=str(checkpoint)) if checkpoint else None
    enc = MAEViTEncoder(img_size=img_size, init_cfg=init, **{**PICO, **kw})
    enc.init_weights()
    enc.eval()  # (mmseg's train() returns None: no chaining)
    return enc


# ----------------------------------------------------------------- MAE ViT
@pytest.mark.parametrize("layout", ["authors_full", "authors_encoder_only", "project", "mocov3_authors"])
def test_mae_checkpoint_gives_the_source_features(tmp_path, layout):
    """Every ViT export gives the source's block maps; "mocov3_authors": the same ViT as a MoCo v3 base encoder in
    the MoCo v3 authors' layout (projector, momentum encoder and predictor beside it)."""
    from pretrain.checkpoint import save_atomic
    from pretrain.methods.mae import encoder_state_dict

    mae = perturbed_mae()
    sd = mae.state_dict()
    assert sd["blocks.0.attn.qkv.bias"][96:192].abs().min() > 0  # a real k bias, kept by mmseg's MAE (bias=True)
    ckpt = {"authors_full": {"model": sd, "args": argparse.Namespace(model="mae_vit_pico_patch8", input_size=32)},
            "authors_encoder_only": {"model": encoder_state_dict(sd)},
            "project": {"model": sd, "epoch": 3, "config": "model:\n  arch: mae_vit_pico_patch8\n"},
            "mocov3_authors": {"epoch": 300, "arch": "vit_pico", "state_dict": {
                **{f"module.base_encoder.{k}": v for k, v in encoder_state_dict(sd).items()},
                "module.base_encoder.head.0.weight": torch.zeros(16, 96),
                **{f"module.momentum_encoder.{k}": v + 1 for k, v in encoder_state_dict(sd).items()},
                "module.predictor.0.weight": torch.zeros(16, 16)}}}[layout]
    path = save_atomic(ckpt, tmp_path / "mae.pth")
    enc = vit_encoder(path)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        maps, ref = enc(x), reference_block_maps(mae, x)
    assert len(maps) == 4
    for got, want in zip(maps, ref):
        assert got.shape == want.shape == (2, 96, 4, 4)
        torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-5)
    # What the checkpoint lacks by design is as mmseg's MAE builds it: zero relative bias, unit layer scale.
    for layer in enc.layers:
        assert torch.count_nonzero(layer.attn.relative_position_bias_table) == 0
        assert torch.equal(layer.gamma_1, torch.ones(96)) and torch.equal(layer.gamma_2, torch.ones(96))


def test_mae_position_table_is_interpolated_to_the_segmentation_size(tmp_path):
    from pretrain.checkpoint import save_atomic

    mae = perturbed_mae(img_size=32)
    path = save_atomic({"model": mae.state_dict()}, tmp_path / "mae.pth")
    enc = vit_encoder(path, img_size=64)
    pos = mae.pos_embed.detach()
    grid = pos[:, 1:].reshape(1, 4, 4, 96).permute(0, 3, 1, 2)
    resized = F.interpolate(grid, size=(8, 8), mode="bicubic", align_corners=False).flatten(2).transpose(1, 2)
    want = torch.cat([pos[:, :1], resized], 1)
    torch.testing.assert_close(enc.pos_embed.detach(), want)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for got, ref in zip(enc(x), reference_block_maps(mae, x, pos_embed=want)):
            torch.testing.assert_close(got, ref, atol=2e-5, rtol=1e-5)


def test_converted_file_loads_into_stock_mmseg_mae_with_the_same_features(tmp_path):
    """tools/convert_checkpoint.py --to mmseg writes what mmseg's own MAE loads by name."""
    from mmseg.models.backbones import MAE

    from pretrain.checkpoint import save_atomic

    mae = perturbed_mae()
    src = save_atomic({"model": mae.state_dict()}, tmp_path / "checkpoint-3.pth")
    out = tmp_path / "vit_mmseg.pth"
    proc = run_tool("tools/convert_checkpoint.py", src, out, "--to", "mmseg")
    assert "missing by design (8)" in proc.stdout and "relative_position_bias_table" in proc.stdout
    assert "mismatched:                   none" in proc.stdout and "decoder_blocks.0" in proc.stdout
    stock = MAE(img_size=32, init_values=0.1, norm_cfg=dict(type="LN", eps=1e-6),
                init_cfg=dict(type="Pretrained", checkpoint=str(out)), **PICO)
    stock.init_weights()  # mmseg's loader: strict=False, so check that every converted tensor arrived
    converted = torch.load(out, weights_only=True)
    for k, v in converted.items():
        assert torch.equal(stock.state_dict()[k], v), k
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        stock.eval()
        for got, want in zip(stock(x), reference_block_maps(mae, x)):
            torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-5)  # layer scale 1 was written, not 0.1
    # ... and the project's encoder reads the converted file as well.
    with torch.no_grad():
        for got, want in zip(vit_encoder(out)(x), reference_block_maps(mae, x)):
            torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-5)


def test_vit_report_and_mismatch(tmp_path):
    from pretrain.checkpoint import CheckpointFormatError, save_atomic
    from transfer.segmentation.convert import convert

    mae = perturbed_mae()
    report = convert({"model": mae.state_dict()})
    assert report.ok and report.converted == 60  # 2 + 2 patch embedding + 4 x 14 per block (gammas included)
    assert sorted(report.missing_by_design) == sorted(
        f"layers.{i}.attn.{k}" for i in range(4) for k in ("relative_position_bias_table", "relative_position_index"))
    assert "norm.weight" in report.dropped and "mask_token" in report.dropped
    assert any(k.startswith("decoder_") for k in report.dropped)
    # A ViT of another depth does not fit: the encoder refuses it, naming the keys.
    path = save_atomic({"model": mae.state_dict()}, tmp_path / "mae.pth")
    with pytest.raises(CheckpointFormatError, match="does not fit"):
        vit_encoder(path, num_layers=2, out_indices=(0, 1))
    # A key mmseg's MAE has no place for is a mismatch, not silently dropped.
    sd = {**mae.state_dict(), "blocks.0.attn.q_norm.weight": torch.ones(32)}
    assert any("q_norm" in k for k in convert({"model": sd}).mismatched)


# -------------------------------------------------------------- MoCo ResNet
def resnet_stage_maps(net, x):
    x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
    maps = []
    for layer in (net.layer1, net.layer2, net.layer3, net.layer4):
        x = layer(x)
        maps.append(x)
    return maps


def perturbed_bn(net, seed=0):
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
            m.bias.data.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
    return net


def test_moco_checkpoint_gives_the_source_features(tmp_path):
    from pretrain.checkpoint import save_atomic
    from pretrain.methods.moco import build_moco, moco_checkpoint
    from transfer.segmentation.resnet import ResNetEncoder

    torch.manual_seed(0)
    moco = build_moco("resnet18", K=64, mlp=True)
    perturbed_bn(moco.encoder_q)
    path = save_atomic(moco_checkpoint(moco, "resnet18", epoch=5), tmp_path / "moco.pth.tar")
    enc = ResNetEncoder(depth=18, init_cfg=dict(type="Pretrained", checkpoint=str(path)))
    enc.init_weights()
    assert not hasattr(enc, "stem")  # torchvision's 7x7 stem, not mmseg's deep V1c stem
    enc.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        got, want = enc(x), resnet_stage_maps(moco.encoder_q.eval(), x)
    assert [g.shape[1] for g in got] == [64, 128, 256, 512]
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)


def test_supervised_torchvision_checkpoint_and_report(tmp_path):
    import torchvision

    from pretrain.checkpoint import CheckpointFormatError, save_atomic
    from transfer.segmentation.convert import convert
    from transfer.segmentation.resnet import ResNetEncoder

    torch.manual_seed(0)
    net = perturbed_bn(torchvision.models.resnet50()).eval()
    path = save_atomic(net.state_dict(), tmp_path / "resnet50.pth")
    report = convert(str(path), tmp_path / "r50_mmseg.pth")
    assert report.ok and report.dropped == ["fc.bias", "fc.weight"] and not report.missing_by_design
    enc = ResNetEncoder(depth=50, init_cfg=dict(type="Pretrained", checkpoint=str(tmp_path / "r50_mmseg.pth")))
    enc.init_weights()
    enc.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for g, w in zip(enc(x), resnet_stage_maps(net, x)):
            torch.testing.assert_close(g, w, atol=1e-4, rtol=1e-4)
    # A ResNet-50 file does not fit a ResNet-18 encoder; a ViT is not a ResNet.
    with pytest.raises(CheckpointFormatError, match="does not fit"):
        ResNetEncoder(depth=18, init_cfg=dict(type="Pretrained", checkpoint=str(path))).init_weights()
    vit = save_atomic({"model": perturbed_mae().state_dict()}, tmp_path / "mae.pth")
    with pytest.raises(CheckpointFormatError, match="expected a ResNet checkpoint"):
        ResNetEncoder(depth=18, init_cfg=dict(type="Pretrained", checkpoint=str(vit))).init_weights()


def test_moco_conversion_cli(tmp_path):
    from pretrain.checkpoint import save_atomic
    from pretrain.methods.moco import build_moco, moco_checkpoint

    moco = build_moco("resnet18", K=64)
    src = save_atomic(moco_checkpoint(moco, "resnet18", epoch=1), tmp_path / "moco.pth.tar")
    proc = run_tool("tools/convert_checkpoint.py", src, tmp_path / "r18.pth", "--to", "mmseg")
    assert "mmseg ResNet (depth 18, torchvision stem)" in proc.stdout and "encoder_k." in proc.stdout
    sd = torch.load(tmp_path / "r18.pth", weights_only=True)
    assert set(sd) == {k[len("encoder_q."):] for k in moco.state_dict()
                       if k.startswith("encoder_q.") and not k.startswith("encoder_q.fc.")}
    bad = run_tool("tools/convert_checkpoint.py", src, tmp_path / "x.pth", "--to", "mmseg", "--patch-size", "16",
                   check=False)
    assert bad.returncode != 0 and "--patch-size applies to --to detectron2" in bad.stderr


# ---------------------------------------------------------- layer-wise decay
def test_layer_decay_constructor_groups_the_encoder_by_depth():
    """mmseg's LearningRateDecayOptimizerConstructor recognises MAEViTEncoder ('MAE' in its name)."""
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    import transfer.segmentation.vit  # noqa: F401  (registers MAEViTEncoder)

    init_default_scope("mmseg")
    norm = dict(type="BN", requires_grad=True)
    model = MODELS.build(dict(
        type="EncoderDecoder",
        backbone=dict(type="MAEViTEncoder", img_size=32, **PICO),
        neck=dict(type="Feature2Pyramid", embed_dim=96, rescales=[2, 1, 0.5, 0.25], norm_cfg=norm),
        decode_head=dict(type="UPerHead", in_channels=[96] * 4, in_index=[0, 1, 2, 3], channels=16, num_classes=3,
                         norm_cfg=norm)))
    wrapper = build_optim_wrapper(model, dict(
        type="OptimWrapper", optimizer=dict(type="AdamW", lr=1e-4, weight_decay=0.05),
        constructor="LearningRateDecayOptimizerConstructor",
        paramwise_cfg=dict(num_layers=4, decay_rate=0.65, decay_type="layer_wise")))
    scale = {}
    for group in wrapper.optimizer.param_groups:
        for name in group["param_names"]:
            scale[name] = group["lr_scale"]
            assert group["lr"] == pytest.approx(1e-4 * group["lr_scale"])
    assert scale["backbone.patch_embed.projection.weight"] == pytest.approx(0.65 ** 5)
    for i in range(4):
        assert scale[f"backbone.layers.{i}.attn.qkv.weight"] == pytest.approx(0.65 ** (4 - i))
    assert scale["decode_head.conv_seg.weight"] == 1.0 and scale["neck.upsample_2x.0.weight"] == 1.0


# ------------------------------------------------- mmengine checkpoints, safely
def test_mmengine_checkpoint_globals_allow_exactly_the_history_buffer():
    import io

    import numpy as np
    from mmengine.logging import HistoryBuffer, MessageHub

    from transfer.segmentation.checkpoint import mmengine_checkpoint_globals

    hub = MessageHub.get_instance("test_mmseg_globals")
    for v in (1.5, 2.5, 4.0):
        hub.update_scalar("train/loss", v)
    hub.update_info("iter", 3)
    ckpt = {"meta": {"iter": 3, "seed": np.int64(7)}, "message_hub": hub.state_dict(),
            "state_dict": {"w": torch.ones(2)}}
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    with pytest.raises(pickle.UnpicklingError):  # torch's default: weights only
        torch.load(io.BytesIO(buf.getvalue()), weights_only=True)
    before = set(torch.serialization.get_safe_globals())  # a set in torch: order is arbitrary
    with mmengine_checkpoint_globals():
        with mmengine_checkpoint_globals():  # (an encoder loading its checkpoint inside the Runner's context)
            pass
        loaded = torch.load(io.BytesIO(buf.getvalue()), weights_only=True)
    assert set(torch.serialization.get_safe_globals()) == before
    history = loaded["message_hub"]["log_scalars"]["train/loss"]
    assert isinstance(history, HistoryBuffer) and history.mean() == pytest.approx(8 / 3)
    assert loaded["meta"]["seed"] == 7

    class Sneaky:  # getattr on anything but HistoryBuffer's statistics is refused
        def __reduce__(self):
            return getattr, (HistoryBuffer, "__init__")

    buf = io.BytesIO()
    torch.save({"x": Sneaky()}, buf)
    with mmengine_checkpoint_globals(), pytest.raises(pickle.UnpicklingError):
        torch.load(io.BytesIO(buf.getvalue()), weights_only=True)
