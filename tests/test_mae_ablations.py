"""MAE's ablation switches (the paper's Table 1), each against an independent re-derivation.

- block masks: BEiT's ``MaskingGenerator`` written out below as its repository has it (Python's ``random``,
  one block at a time), compared by the laws of what it draws: the number of removed patches and the
  shape of the removed region;
- grid: exactly one patch of every 2x2 kept, the same in every image;
- the encoder with mask tokens: a plain all-patch ViT forward written here from the model's parts;
- the PCA target: numpy's SVD of the same patches, and the reconstruction it implies;
- the defaults: the same model, state dict and losses as before the switches existed.
"""
from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from pretrain.config import load_config
from pretrain.methods.mae import MaskedAutoencoderViT, block_masks, grid_masks
from pretrain.transforms import mae_transform


def tiny(**kw):
    kw = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2, "decoder_embed_dim": 16,
          "decoder_depth": 1, "decoder_num_heads": 2, **kw}
    return MaskedAutoencoderViT(**kw)


# ------------------------------------------------------------------ block masks
class BEiTMaskingGenerator:
    """BEiT's masking_generator.py (microsoft/unilm, beit/), re-derived: the reference law."""

    def __init__(self, input_size, num_masking_patches, min_num_patches=16, max_num_patches=None,
                 min_aspect=0.3, max_aspect=None):
        self.height, self.width = input_size
        self.num_masking_patches = num_masking_patches
        self.min_num_patches = min_num_patches
        self.max_num_patches = num_masking_patches if max_num_patches is None else max_num_patches
        max_aspect = max_aspect or 1 / min_aspect
        self.log_aspect_ratio = (math.log(min_aspect), math.log(max_aspect))

    def _mask(self, mask, max_mask_patches):
        delta = 0
        for _ in range(10):
            target_area = random.uniform(self.min_num_patches, max_mask_patches)
            aspect_ratio = math.exp(random.uniform(*self.log_aspect_ratio))
            h = int(round(math.sqrt(target_area * aspect_ratio)))
            w = int(round(math.sqrt(target_area / aspect_ratio)))
            if w < self.width and h < self.height:
                top = random.randint(0, self.height - h)
                left = random.randint(0, self.width - w)
                num_masked = mask[top: top + h, left: left + w].sum()
                if 0 < h * w - num_masked <= max_mask_patches:
                    for i in range(top, top + h):
                        for j in range(left, left + w):
                            if mask[i, j] == 0:
                                mask[i, j] = 1
                                delta += 1
                if delta > 0:
                    break
        return delta

    def __call__(self):
        mask = np.zeros((self.height, self.width), dtype=int)
        mask_count = 0
        while mask_count < self.num_masking_patches:
            max_mask_patches = min(self.num_masking_patches - mask_count, self.max_num_patches)
            delta = self._mask(mask, max_mask_patches)
            if delta == 0:
                break
            mask_count += delta
        return mask


def mask_statistics(masks: np.ndarray):
    """Per mask [h, w]: removed patches, the log aspect of the removed region's bounding box, and how
    many rows of the grid it touches."""
    counts, log_aspect, rows = [], [], []
    for m in masks:
        r, c = np.nonzero(m)
        counts.append(len(r))
        log_aspect.append(math.log((r.max() - r.min() + 1) / (c.max() - c.min() + 1)))
        rows.append(len(set(r.tolist())))
    return np.array(counts), np.array(log_aspect), np.array(rows)


def ks_distance(a: np.ndarray, b: np.ndarray) -> float:
    """The two-sample Kolmogorov-Smirnov statistic."""
    grid = np.union1d(a, b)
    ca = np.searchsorted(np.sort(a), grid, side="right") / len(a)
    cb = np.searchsorted(np.sort(b), grid, side="right") / len(b)
    return float(np.abs(ca - cb).max())


@pytest.mark.parametrize("grid, num_masking", [((14, 14), 75), ((14, 14), 98), ((14, 14), 147), ((8, 8), 32)])
def test_block_masks_follow_beits_law(grid, num_masking):
    n = 2000
    random.seed(0)
    reference = BEiTMaskingGenerator(grid, num_masking)
    ours = block_masks(n, grid, num_masking, device="cpu") if torch.manual_seed(0) else None
    theirs = np.stack([reference() for _ in range(n)])
    ours = ours.numpy().astype(int)
    assert ours.shape == theirs.shape == (n, *grid)
    for a, b in zip(mask_statistics(ours), mask_statistics(theirs)):
        # Two samples of 2000 from the same law: KS distance ~ 0.03 (the 99.9% bound is 0.062).
        assert ks_distance(a, b) < 0.06, (a.mean(), b.mean())
    assert ours.sum((1, 2)).max() <= num_masking  # never more than asked, as BEiT's


def test_block_masks_are_not_random_masks():
    """The statistics above tell blocks from scattered patches: the same test fails on random masks."""
    n, grid, num_masking = 2000, (14, 14), 98
    random.seed(1)
    theirs = np.stack([BEiTMaskingGenerator(grid, num_masking)() for _ in range(n)])
    torch.manual_seed(1)
    scattered = (torch.rand(n, 196).argsort(1).argsort(1) < num_masking).view(n, *grid).numpy().astype(int)
    assert ks_distance(mask_statistics(scattered)[2], mask_statistics(theirs)[2]) > 0.5


def test_block_sampling_removes_the_blocks_and_tops_up_to_the_ratio():
    torch.manual_seed(0)
    model = tiny(img_size=64, mask_sampling="block")  # an 8x8 grid
    torch.manual_seed(3)
    noise = model.masking_noise(16, 0.75, "cpu")
    torch.manual_seed(3)
    blocks = block_masks(16, (8, 8), 48).flatten(1)
    _, mask, _ = model.random_masking(torch.zeros(16, 64, 4), 0.75, noise)
    assert (mask.sum(1) == 48).all()  # exactly int(L * ratio), as random masking
    assert (mask.bool() | ~blocks).all()  # every patch of the blocks is removed


def test_grid_keeps_one_of_every_two_by_two():
    masks = grid_masks(3, (4, 6))
    kept = ~masks[0]
    assert kept.sum() == 6 and (masks == masks[0]).all()
    assert all(kept[r, c] == (r % 2 == 0 and c % 2 == 0) for r in range(4) for c in range(6))
    model = tiny(mask_sampling="grid")
    x = torch.randn(5, 3, 32, 32)
    _, mask, _ = model.forward_encoder(x, 0.75)
    assert torch.equal(mask.bool(), grid_masks(5, (4, 4)).flatten(1))


# ------------------------------------------------------- mask tokens in the encoder
def test_encoder_mask_tokens_is_a_plain_all_patch_forward():
    torch.manual_seed(0)
    model = tiny(encoder_mask_tokens=True).eval()
    x = torch.randn(3, 3, 32, 32)
    noise = torch.rand(3, 16)
    latent, mask, ids_restore = model.forward_encoder(x, 0.75, noise)
    assert ids_restore is None and latent.shape == (3, 17, 32)  # every patch, in order
    # Re-derived: the removed patches' embeddings replaced by the token, positions added, all blocks.
    removed = torch.zeros(3, 16, dtype=torch.bool)
    removed.scatter_(1, noise.argsort(1)[:, 4:], True)  # the 12 with the largest noise
    assert torch.equal(mask.bool(), removed)
    tokens = model.patch_embed(x)
    tokens = torch.where(removed[..., None], model.enc_mask_token.expand(3, 16, -1), tokens) + model.pos_embed[:, 1:]
    seq = torch.cat([(model.cls_token + model.pos_embed[:, :1]).expand(3, -1, -1), tokens], 1)
    for blk in model.blocks:
        seq = blk(seq)
    torch.testing.assert_close(latent, model.norm(seq))
    # The decoder takes the sequence as it is (no unshuffle, no decoder mask tokens).
    pred = model.forward_decoder(latent, None)
    y = model.decoder_embed(latent) + model.decoder_pos_embed
    for blk in model.decoder_blocks:
        y = blk(y)
    torch.testing.assert_close(pred, model.decoder_pred(model.decoder_norm(y))[:, 1:])
    loss, _, _ = model(x, 0.75, noise)
    loss.backward()
    assert model.enc_mask_token.grad.abs().sum() > 0 and model.mask_token.grad is None


def test_the_masked_encoding_benchmark_runs_the_models_option():
    """One implementation of the baseline: benchmarks/mae_masked_encoding.py builds it with the option."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "benchmarks" / "mae_masked_encoding.py").read_text()
    assert "encoder_mask_tokens=" in text and "def forward_mask_tokens" not in text


# ------------------------------------------------------------------ PCA target
def test_pca_target_matches_numpys_svd_and_reconstructs():
    torch.manual_seed(0)
    model = tiny(target="pca", pca_dim=20)
    # Images with a few dominant patch directions, as natural images have.
    imgs = torch.randn(64, 3, 32, 32) * 0.1 + torch.randn(64, 3, 1, 1) + torch.linspace(-1, 1, 32).view(1, 1, 1, 32)
    variance = model.fit_pca(imgs)
    patches = model.patchify(imgs).flatten(0, 1).double().numpy()
    centred = patches - patches.mean(0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    eig = s ** 2 / (len(patches) - 1)
    np.testing.assert_allclose(variance.numpy(), eig[:20], rtol=1e-6)
    np.testing.assert_allclose(model.pca_mean.double().numpy(), patches.mean(0), atol=1e-6)
    # The same axes up to sign, in the same order.
    cos = np.abs(np.sum(model.pca_basis.double().numpy() * vt[:20], axis=1))
    np.testing.assert_allclose(cos, 1.0, atol=1e-4)
    # Targets are the coordinates; mean + coordinates @ axes reconstructs the patches up to the variance
    # left out (the sum of the other eigenvalues, per patch, on average).
    coords = model.patch_targets(imgs).flatten(0, 1).double()
    recon = coords @ model.pca_basis.double() + model.pca_mean.double()
    residual = ((torch.from_numpy(patches) - recon) ** 2).sum(1).mean().item()
    assert residual == pytest.approx(eig[20:].sum() * (len(patches) - 1) / len(patches), rel=1e-3)
    assert model.decoder_pred.out_features == 20


def test_targets_pixel_and_norm_pixel():
    x = torch.randn(2, 3, 32, 32)
    plain, normed = tiny(target="pixel"), tiny(target="norm_pixel")
    torch.testing.assert_close(plain.patch_targets(x), plain.patchify(x))
    t = plain.patchify(x)
    torch.testing.assert_close(normed.patch_targets(x), (t - t.mean(-1, keepdim=True))
                               / (t.var(-1, keepdim=True) + 1e-6) ** 0.5)
    assert tiny(norm_pix_loss=True).target == "norm_pixel" and tiny().target == "pixel"  # the authors' flag


# ------------------------------------------------------------------ defaults
def test_defaults_are_the_model_as_before():
    torch.manual_seed(0)
    model = tiny(norm_pix_loss=True)
    assert model.enc_mask_token is None and model.mask_sampling == "random"
    assert not any(k.startswith(("enc_mask_token", "pca_")) for k in model.state_dict())
    x = torch.randn(2, 3, 32, 32)
    # The default draws its noise as before: the same masks under the same seed.
    torch.manual_seed(5)
    _, mask, _ = model.forward_encoder(x, 0.75)
    torch.manual_seed(5)
    expected = torch.rand(2, 16).argsort(1).argsort(1) >= 4
    assert torch.equal(mask.bool(), expected)
    cfg = load_config(None, ["data.synthetic=true"], method="mae")
    assert (cfg.model.mask_sampling, cfg.model.encoder_mask_tokens, cfg.model.target, cfg.data.augmentation) == (
        "random", False, "auto", "crop_rand")


@pytest.mark.parametrize("override, says", [
    (["model.mask_sampling=grid", "model.mask_ratio=0.5"], "model.mask_ratio=0.75"),
    (["model.mask_sampling=checker"], "model.mask_sampling"),
    (["model.target=dvae"], "DALL-E"),
    (["data.augmentation=mixup"], "data.augmentation"),
])
def test_bad_ablation_settings_are_refused(override, says):
    from pretrain.errors import ConfigError

    with pytest.raises(ConfigError, match=says.replace(".", r"\.")):
        load_config(None, ["data.synthetic=true", *override], method="mae")


# ------------------------------------------------------------------ augmentations (Table 1e)
def test_augmentations_of_table_1e():
    from pretrain.images import DecodedImage

    rng = np.random.default_rng(0)
    img = DecodedImage(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
    none = mae_transform(32, augmentation="none")
    a, b = none(img), none(img)
    assert a.shape == (3, 32, 32) and torch.equal(a, b)  # deterministic: resize + centre crop
    torch.manual_seed(0)
    fixed = [mae_transform(32, augmentation="crop_fixed")(img) for _ in range(4)]
    assert all(f.shape == (3, 32, 32) for f in fixed) and not all(torch.equal(fixed[0], f) for f in fixed[1:])
    # crop_color is crop_rand with the same crop and flip, then jittered colours.
    torch.manual_seed(1)
    plain = mae_transform(32, augmentation="crop_rand")(img)
    torch.manual_seed(1)
    coloured = mae_transform(32, augmentation="crop_color")(img)
    assert plain.shape == coloured.shape == (3, 32, 32) and plain.dtype == coloured.dtype == torch.uint8
    torch.manual_seed(1)
    assert torch.equal(mae_transform(32)(img), plain)  # the default is crop_rand


# ------------------------------------------------------------------ through the trainer
@pytest.mark.slow
@pytest.mark.parametrize("switch", [
    ["model.mask_sampling=block"], ["model.mask_sampling=grid"], ["model.encoder_mask_tokens=true"],
    ["model.target=pca", "model.pca_dim=32", "model.pca_images=16"], ["data.augmentation=crop_color"],
])
def test_each_switch_pretrains(tiny_mae_overrides, switch):
    from pretrain.trainer import Trainer

    trainer = Trainer(load_config(None, tiny_mae_overrides + switch, method="mae"))
    stats = trainer.fit()
    assert math.isfinite(stats["loss"])


@pytest.mark.slow
def test_pca_axes_are_fitted_before_step_0_and_resume_from_the_checkpoint(tiny_mae_overrides, tmp_path):
    from pretrain.checkpoint import load_file
    from pretrain.trainer import Trainer

    overrides = tiny_mae_overrides + ["model.target=pca", "model.pca_dim=32", "model.pca_images=16"]
    first = Trainer(load_config(None, overrides + ["train.max_iters=2"], method="mae"))
    fitted = first.model.pca_basis.clone()
    assert fitted.abs().sum() > 0
    first.fit()
    ckpt = load_file(tmp_path / "run" / "checkpoint-last.pth")
    assert torch.equal(ckpt["model"]["pca_basis"], fitted)  # fixed during training, saved
    resumed = Trainer(load_config(None, overrides, method="mae"), resume="auto")
    assert torch.equal(resumed.model.pca_basis, fitted)


def test_figure_6_draws_each_sampling(tmp_path):
    from pretrain.visualize import figure_mask_sampling, seeded_noise

    torch.manual_seed(0)
    model = tiny(img_size=64)
    path = figure_mask_sampling(model, torch.randn(2, 3, 64, 64), tmp_path / "fig6.png")
    assert path.is_file() and path.stat().st_size > 1000
    # Each column's masks are its sampling's: the grid keeps the top-left of every 2x2.
    grid_noise = seeded_noise(model, "grid", 2, 0.75, 0)
    _, mask, _ = model.random_masking(torch.zeros(2, 64, 1), 0.75, grid_noise)
    assert torch.equal(mask.bool(), grid_masks(2, (8, 8)).flatten(1))
