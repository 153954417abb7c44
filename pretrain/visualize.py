"""MAE reconstruction figures: the paper's Figure 2 (original / masked / reconstruction /
reconstruction with the visible patches pasted back), Figure 4 (one image across
mask ratios) and Figure 6 (random, block and grid mask sampling).

With ``norm_pix_loss`` the model predicts per-patch-normalised pixels; each
predicted patch is shown un-normalised with the mean and variance of the true
patch, as in the authors' demo, and the caption says so.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np
import torch

from .transforms import IMAGENET_MEAN, IMAGENET_STD


@torch.no_grad()
def reconstruct(model, imgs: torch.Tensor, mask_ratio: float, noise: Optional[torch.Tensor] = None) -> Dict:
    """Images [N, 3, H, W] (normalised) -> dict of normalised images and the loss."""
    model.eval()
    loss, pred, mask = model(imgs, mask_ratio=mask_ratio, noise=noise)
    if model.target == "pca":  # coordinates on the fitted axes -> pixels
        pred = pred.float() @ model.pca_basis + model.pca_mean
    elif model.norm_pix_loss:
        target = model.patchify(imgs)
        mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
        pred = pred * (var + 1e-6) ** 0.5 + mean
    recon = model.unpatchify(pred)
    removed = model.unpatchify(mask.unsqueeze(-1).expand(-1, -1, pred.shape[-1]))  # 1 where removed
    return {
        "original": imgs,
        "masked": imgs * (1 - removed),
        "reconstruction": recon,
        "pasted": imgs * (1 - removed) + recon * removed,
        "removed": removed,
        "loss": loss.item(),
    }


def to_display(x: torch.Tensor, removed: Optional[torch.Tensor] = None) -> np.ndarray:
    """A normalised [3, H, W] image -> [H, W, 3] in [0, 1]; removed patches shown grey."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    img = (x.float().cpu() * std + mean).clamp(0, 1)
    if removed is not None:
        img = torch.where(removed.cpu() > 0, torch.full_like(img, 0.5), img)
    return img.permute(1, 2, 0).numpy()


def _caption(model) -> str:
    if model.target == "pca":
        return (f"PCA-target model: the {model.pca_basis.shape[0]} predicted coefficients shown as pixels "
                "(mean patch + coefficients x axes)")
    if model.norm_pix_loss:
        return ("norm_pix_loss model: each predicted patch is un-normalised with the mean and variance "
                "of the true patch (as in the authors' demo)")
    return "pixel-target model: predictions shown as predicted"


def figure_reconstructions(model, imgs: torch.Tensor, path, mask_ratio: float = 0.75, seed: int = 0,
                           title: str = "") -> Path:
    """Figure 2: one row per image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    noise = seeded_noise(model, model.mask_sampling, imgs.shape[0], mask_ratio, seed)
    r = reconstruct(model, imgs, mask_ratio, noise)
    cols = [("original", "original", None), ("masked", f"masked {mask_ratio:.0%}", "removed"),
            ("reconstruction", "reconstruction", None), ("pasted", "reconstruction + visible", None)]
    n = imgs.shape[0]
    fig, axes = plt.subplots(n, 4, figsize=(10, 2.6 * n + 0.8), squeeze=False)
    for i in range(n):
        for j, (key, label, grey) in enumerate(cols):
            ax = axes[i][j]
            ax.imshow(to_display(r[key][i], r[grey][i] if grey else None))
            ax.set_xticks([]), ax.set_yticks([])
            if i == 0:
                ax.set_title(label, fontsize=10)
    fig.suptitle(title or f"MAE reconstructions (loss {r['loss']:.3f})", fontsize=11)
    fig.text(0.5, 0.005, _caption(model), ha="center", fontsize=8, wrap=True)
    fig.tight_layout(rect=(0, 0.03, 1, 0.97))
    return _save(fig, path)


def seeded_noise(model, sampling: str, n: int, mask_ratio: float, seed: int) -> torch.Tensor:
    """``sampling``'s masking noise for ``model``'s grid, drawn under ``seed`` (the global RNG untouched)."""
    from .methods.mae import masking_noise

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return masking_noise(sampling, n, model.patch_embed.grid_size, mask_ratio)


def figure_mask_sampling(model, imgs: torch.Tensor, path, mask_ratio: float = 0.75, seed: int = 0,
                         title: str = "") -> Path:
    """Figure 6: each image masked by random, block and grid sampling (grid keeps one patch of every 2x2:
    75% whatever ``mask_ratio``), and the model's reconstruction with the visible patches pasted back."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .methods.mae import MASK_SAMPLING

    n = imgs.shape[0]
    fig, axes = plt.subplots(n, 2 * len(MASK_SAMPLING), figsize=(2.2 * 2 * len(MASK_SAMPLING), 2.4 * n + 0.8),
                             squeeze=False)
    for k, sampling in enumerate(MASK_SAMPLING):
        ratio = 0.75 if sampling == "grid" else mask_ratio
        r = reconstruct(model, imgs, ratio, seeded_noise(model, sampling, n, ratio, seed))
        for i in range(n):
            for j, (image, label) in enumerate(((to_display(r["masked"][i], r["removed"][i]),
                                                 f"{sampling} {ratio:.0%}"),
                                                (to_display(r["pasted"][i]), f"loss {r['loss']:.3f}"))):
                ax = axes[i][2 * k + j]
                ax.imshow(image)
                ax.set_xticks([]), ax.set_yticks([])
                if i == 0:
                    ax.set_title(label, fontsize=9)
    fig.suptitle(title or "MAE mask sampling (Figure 6): input and reconstruction + visible", fontsize=10)
    fig.text(0.5, 0.005, _caption(model), ha="center", fontsize=7, wrap=True)
    fig.tight_layout(rect=(0, 0.04, 1, 0.95))
    return _save(fig, path)


def figure_mask_ratios(model, img: torch.Tensor, path, ratios: Sequence[float] = (0.75, 0.85, 0.95),
                       seed: int = 0, title: str = "") -> Path:
    """Figure 4: one image, masked at each ratio (nested masks), and its reconstruction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    noise = seeded_noise(model, "random", 1, 0.75, seed)  # the same noise at every ratio: nested masks
    fig, axes = plt.subplots(2, len(ratios), figsize=(2.6 * len(ratios), 5.8), squeeze=False)
    for j, ratio in enumerate(ratios):
        r = reconstruct(model, img[None], ratio, noise)
        axes[0][j].imshow(to_display(r["masked"][0], r["removed"][0]))
        axes[0][j].set_title(f"mask {ratio:.0%}", fontsize=10)
        axes[1][j].imshow(to_display(r["pasted"][0]))
        axes[1][j].set_title(f"loss {r['loss']:.3f}", fontsize=9)
        for ax in (axes[0][j], axes[1][j]):
            ax.set_xticks([]), ax.set_yticks([])
    fig.suptitle(title or "MAE across mask ratios (top: input, bottom: reconstruction + visible)", fontsize=10)
    fig.text(0.5, 0.005, _caption(model), ha="center", fontsize=7, wrap=True)
    fig.tight_layout(rect=(0, 0.04, 1, 0.95))
    return _save(fig, path)


def _save(fig, path) -> Path:
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
