import math

import pytest
import torch

from pretrain.checkpoint import CheckpointFormatError, save_atomic
from pretrain.methods.mae import (
    MAE_ARCHS, MaskedAutoencoderViT, create_mae, encoder_state_dict, load_mae_weights, mae_vit_base_patch16,
)
from pretrain.pos_embed import get_2d_sincos_pos_embed


def tiny(**kw):
    kw = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2, "decoder_embed_dim": 16,
          "decoder_depth": 1, "decoder_num_heads": 2, **kw}
    return MaskedAutoencoderViT(**kw)


# ------------------------------------------------------------------ masking
@pytest.mark.parametrize("ratio", [0.0, 0.5, 0.75, 0.9])
def test_random_masking_invariants(ratio):
    torch.manual_seed(0)
    n, length, d = 5, 49, 8
    x = torch.randn(n, length, d)
    kept, mask, ids_restore = MaskedAutoencoderViT.random_masking(x, ratio)
    len_keep = int(length * (1 - ratio))
    assert kept.shape == (n, len_keep, d)
    assert torch.equal((mask == 0).sum(1), torch.full((n,), len_keep))  # exactly len_keep visible per sample
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    for i in range(n):
        # Every kept token is a row of x at a position the mask marks visible, each position once.
        pos = [int((x[i] == row).all(1).nonzero()) for row in kept[i]]
        assert len(set(pos)) == len_keep
        assert all(mask[i, p] == 0 for p in pos)
    # ids_restore inverts the shuffle: restoring the shuffled sequence gives the original back.
    noise = torch.rand(n, length)
    _, _, ids_restore = MaskedAutoencoderViT.random_masking(x, ratio, noise)
    shuffled = torch.gather(x, 1, noise.argsort(1)[..., None].expand(-1, -1, d))
    assert torch.equal(torch.gather(shuffled, 1, ids_restore[..., None].expand(-1, -1, d)), x)


def test_masking_keeps_smallest_noise_and_noise_fixes_the_mask():
    x = torch.randn(2, 16, 4)
    noise = torch.rand(2, 16)
    _, mask, _ = MaskedAutoencoderViT.random_masking(x, 0.75, noise)
    for i in range(2):
        keep = set(noise[i].argsort()[:4].tolist())
        assert {j for j in range(16) if mask[i, j] == 0} == keep
    _, mask2, _ = MaskedAutoencoderViT.random_masking(x, 0.75, noise.clone())
    assert torch.equal(mask, mask2)
    with pytest.raises(ValueError, match="noise must have shape"):
        MaskedAutoencoderViT.random_masking(x, 0.75, torch.rand(2, 15))


def test_encoder_sees_only_visible_patches():
    model = tiny().eval()
    imgs = torch.randn(2, 3, 32, 32)
    latent, mask, _ = model.forward_encoder(imgs, 0.75)
    assert latent.shape == (2, 1 + 4, 32)  # cls + 25% of 16 patches
    # Changing a masked patch's pixels leaves the encoder output unchanged.
    noise = torch.rand(2, 16)
    latent, mask, _ = model.forward_encoder(imgs, 0.75, noise)
    j = int(mask[0].nonzero()[0])
    r, c = divmod(j, 4)
    imgs2 = imgs.clone()
    imgs2[0, :, r * 8:(r + 1) * 8, c * 8:(c + 1) * 8] += 5.0
    latent2, _, _ = model.forward_encoder(imgs2, 0.75, noise)
    assert torch.allclose(latent, latent2)


# ---------------------------------------------------------------------- loss
def reference_loss(imgs, pred, mask, p, norm_pix):
    """Per patch, by slicing the image: independent of patchify's einsum."""
    n, c, h, w = imgs.shape
    total, count = 0.0, 0.0
    for i in range(n):
        for r in range(h // p):
            for col in range(w // p):
                j = r * (w // p) + col
                if mask[i, j] == 0:
                    continue
                patch = imgs[i, :, r * p:(r + 1) * p, col * p:(col + 1) * p].permute(1, 2, 0).reshape(-1).double()
                if norm_pix:
                    patch = (patch - patch.mean()) / math.sqrt(patch.var(unbiased=True).item() + 1e-6)
                total += ((pred[i, j].double() - patch) ** 2).mean().item()
                count += 1
    return total / count


@pytest.mark.parametrize("norm_pix", [False, True])
def test_loss_matches_per_patch_reference(norm_pix):
    torch.manual_seed(0)
    model = tiny(norm_pix_loss=norm_pix)
    imgs = torch.randn(3, 3, 32, 32)
    noise = torch.rand(3, 16)
    loss, pred, mask = model(imgs, mask_ratio=0.75, noise=noise)
    assert pred.shape == (3, 16, 8 * 8 * 3) and mask.shape == (3, 16)
    assert loss.item() == pytest.approx(reference_loss(imgs, pred.detach(), mask, 8, norm_pix), rel=1e-5)


def test_patchify_roundtrip_and_layout():
    model = tiny()
    imgs = torch.randn(2, 3, 32, 32)
    x = model.patchify(imgs)
    assert torch.equal(model.unpatchify(x), imgs)
    # Patch (row 1, col 2) flattened as (p, q, c).
    assert torch.equal(x[0, 1 * 4 + 2], imgs[0, :, 8:16, 16:24].permute(1, 2, 0).reshape(-1))


# -------------------------------------------------------------------- init
def test_sincos_pos_embed_formula():
    d, g = 16, 3
    pe = get_2d_sincos_pos_embed(d, g, cls_token=True)
    assert pe.shape == (1 + g * g, d) and torch.all(pe[0] == 0)
    for y in range(g):
        for x in range(g):
            row = pe[1 + y * g + x]
            for k in range(d // 4):
                w = 1.0 / 10000 ** (k / (d / 4))
                assert row[k] == pytest.approx(math.sin(x * w), abs=1e-6)  # first half: column
                assert row[d // 4 + k] == pytest.approx(math.cos(x * w), abs=1e-6)
                assert row[d // 2 + k] == pytest.approx(math.sin(y * w), abs=1e-6)  # second half: row
                assert row[3 * d // 4 + k] == pytest.approx(math.cos(y * w), abs=1e-6)


def test_initialisation_as_the_authors():
    torch.manual_seed(0)
    m = tiny(embed_dim=64, decoder_embed_dim=64)
    assert not m.pos_embed.requires_grad and not m.decoder_pos_embed.requires_grad
    assert torch.allclose(m.pos_embed[0], get_2d_sincos_pos_embed(64, 4, cls_token=True))
    w = m.patch_embed.proj.weight
    bound = math.sqrt(6 / (w[0].numel() + w.shape[0]))  # xavier-uniform of the [D, p*p*3] matrix
    assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound
    fc = m.blocks[0].mlp.fc1
    assert fc.weight.abs().max() <= math.sqrt(6 / sum(fc.weight.shape)) and torch.all(fc.bias == 0)
    assert 0.01 < m.cls_token.std() < 0.03 and 0.01 < m.mask_token.std() < 0.03
    assert m.norm.eps == 1e-6 and m.blocks[0].norm1.eps == 1e-6 and torch.all(m.norm.weight == 1)


# ------------------------------------------------------------- checkpoints
def authors_keys(depth, dec_depth, d, dd, p, num_patches, hidden, dec_hidden):
    """The authors' MaskedAutoencoderViT state-dict layout, written out from their model definition."""
    spec = {
        "cls_token": (1, 1, d), "pos_embed": (1, num_patches + 1, d),
        "patch_embed.proj.weight": (d, 3, p, p), "patch_embed.proj.bias": (d,),
        "norm.weight": (d,), "norm.bias": (d,),
        "decoder_embed.weight": (dd, d), "decoder_embed.bias": (dd,), "mask_token": (1, 1, dd),
        "decoder_pos_embed": (1, num_patches + 1, dd), "decoder_norm.weight": (dd,), "decoder_norm.bias": (dd,),
        "decoder_pred.weight": (p * p * 3, dd), "decoder_pred.bias": (p * p * 3,),
    }
    for prefix, n, dim, hid in (("blocks", depth, d, hidden), ("decoder_blocks", dec_depth, dd, dec_hidden)):
        for i in range(n):
            b = f"{prefix}.{i}."
            spec.update({
                b + "norm1.weight": (dim,), b + "norm1.bias": (dim,),
                b + "attn.qkv.weight": (3 * dim, dim), b + "attn.qkv.bias": (3 * dim,),
                b + "attn.proj.weight": (dim, dim), b + "attn.proj.bias": (dim,),
                b + "norm2.weight": (dim,), b + "norm2.bias": (dim,),
                b + "mlp.fc1.weight": (hid, dim), b + "mlp.fc1.bias": (hid,),
                b + "mlp.fc2.weight": (dim, hid), b + "mlp.fc2.bias": (dim,),
            })
    return spec


def test_state_dict_layout_is_the_authors_vit_base():
    with torch.device("meta"):
        m = mae_vit_base_patch16()
    got = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert got == authors_keys(12, 8, 768, 512, 16, 196, 3072, 2048)


def test_presets_and_kwargs():
    with torch.device("meta"):
        h = create_mae("mae_vit_huge_patch14", norm_pix_loss=True, decoder_depth=4, decoder_embed_dim=256,
                       decoder_num_heads=8)
    assert h.patch_size == 14 and h.pos_embed.shape == (1, 257, 1280) and len(h.blocks) == 32
    assert len(h.decoder_blocks) == 4 and h.mask_token.shape[-1] == 256 and h.norm_pix_loss
    assert {"mae_vit_base_patch16", "mae_vit_large_patch16", "mae_vit_huge_patch14"} <= set(MAE_ARCHS)
    with pytest.raises(ValueError, match="unknown MAE arch"):
        create_mae("mae_vit_gigantic")


def test_authors_checkpoint_roundtrip(tmp_path):
    torch.manual_seed(0)
    src = tiny()
    path = save_atomic({"model": src.state_dict(), "epoch": 3}, tmp_path / "checkpoint-3.pth")
    dst = tiny()
    sd = torch.load(path, weights_only=True)["model"]
    dst.load_state_dict(sd, strict=True)
    imgs, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 16)
    assert torch.equal(src(imgs, noise=noise)[1], dst(imgs, noise=noise)[1])
    # DDP-prefixed and wrapped forms load through load_mae_weights too.
    notes = load_mae_weights(tiny(), {"model": {f"module.{k}": v for k, v in src.state_dict().items()}})
    assert notes == []


def test_encoder_only_release_loads_into_encoder(tmp_path):
    src = tiny()
    path = save_atomic({"model": encoder_state_dict(src.state_dict())}, tmp_path / "mae_pretrain_vit_tiny.pth")
    dst = tiny()
    dec_before = dst.decoder_pred.weight.clone()
    notes = load_mae_weights(dst, str(path))
    assert any("encoder-only" in n for n in notes)
    assert torch.equal(dst.blocks[1].attn.qkv.weight, src.blocks[1].attn.qkv.weight)
    assert torch.equal(dst.decoder_pred.weight, dec_before)
    with pytest.raises(CheckpointFormatError, match="missing"):
        load_mae_weights(tiny(), str(path), encoder_only_ok=False)


def test_wrong_checkpoint_kind_is_refused(tmp_path):
    import torchvision

    path = save_atomic({"state_dict": {f"module.encoder_q.{k}": v for k, v in
                                       torchvision.models.resnet18().state_dict().items()}}, tmp_path / "moco.pth.tar")
    with pytest.raises(CheckpointFormatError, match="expected a MAE or ViT checkpoint.*MoCo"):
        load_mae_weights(tiny(), str(path))


def test_timm_export_loads_strictly_and_matches_features():
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    src = tiny().eval()
    vit = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=0).eval()
    vit.load_state_dict(encoder_state_dict(src.state_dict()), strict=True)
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(vit.forward_features(x), src.forward_features(x), atol=1e-6)


def test_vit_base_export_loads_strictly_into_timm():
    import timm

    with torch.device("meta"):
        sd = encoder_state_dict(mae_vit_base_patch16().state_dict())
        vit = timm.create_model(MAE_ARCHS["mae_vit_base_patch16"].timm_name, num_classes=0)
    vit.load_state_dict(sd, strict=True, assign=True)


def test_to_timm_takes_deit_distilled_vits_and_refuses_a_patch_resize(tmp_path):
    """The distillation token goes, with its position row; the classifier heads go; features match."""
    from timm.models.deit import VisionTransformerDistilled

    from transfer.convert import to_timm

    torch.manual_seed(0)
    deit = VisionTransformerDistilled(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2,
                                      num_classes=5).eval()
    report = to_timm({"model": deit.state_dict()}, tmp_path / "vit.pth")
    assert report.ok, report.format()
    assert {"dist_token", "head_dist.weight", "head.weight"} <= set(report.dropped)
    from timm.models.vision_transformer import VisionTransformer

    vit = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=0).eval()
    vit.load_state_dict(torch.load(tmp_path / "vit.pth", weights_only=True), strict=True)
    pe = deit.pos_embed.detach()
    assert torch.equal(vit.pos_embed.detach(), torch.cat([pe[:, :1], pe[:, 2:]], dim=1))
    with pytest.raises(ValueError, match="--patch-size"):
        to_timm({"model": deit.state_dict()}, patch_size=16)


# ------------------------------------------------------------------ figures
def test_reconstruct_pastes_visible_and_unnormalises_with_true_patch_stats():
    from pretrain.visualize import reconstruct

    torch.manual_seed(0)
    model = tiny(norm_pix_loss=True)
    imgs, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 16)
    r = reconstruct(model, imgs, 0.75, noise)
    _, pred, mask = model(imgs, 0.75, noise)
    visible = r["removed"] == 0
    assert torch.equal(r["pasted"][visible], imgs[visible])
    # Patch 0 of image 0 in the reconstruction: prediction x std + mean of the true patch.
    true = imgs[0, :, :8, :8].permute(1, 2, 0).reshape(-1)
    expect = pred[0, 0] * (true.var() + 1e-6) ** 0.5 + true.mean()
    assert torch.allclose(r["reconstruction"][0, :, :8, :8].permute(1, 2, 0).reshape(-1), expect, atol=1e-5)


def test_visualize_tool_writes_both_figures(tiny_mae_overrides, tmp_path):
    from PIL import Image

    from conftest import run_tool
    from pretrain.config import load_config
    from pretrain.trainer import Trainer

    Trainer(load_config(None, tiny_mae_overrides + ["train.epochs=1"], method="mae")).fit()
    ckpt = tmp_path / "run" / "checkpoint-last.pth"
    img = tmp_path / "photo.png"
    Image.new("RGB", (50, 40), (200, 30, 30)).save(img)
    out = run_tool("tools/mae_visualize.py", ckpt, img, img, "--out", tmp_path / "figs").stdout
    assert "reconstructions.png" in out
    for name in ("reconstructions.png", "mask_ratios.png", "mask_sampling.png"):
        with Image.open(tmp_path / "figs" / name) as im:
            assert im.size[0] > 300 and im.size[1] > 300
    bad = run_tool("tools/mae_visualize.py", img, "--out", tmp_path / "x", check=False)
    assert bad.returncode != 0 and "could not read checkpoint" in bad.stderr
