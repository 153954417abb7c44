"""Masked Autoencoders (He et al. 2021, "Masked Autoencoders Are Scalable Vision Learners").

The algorithm reads top to bottom: ``patchify`` -> ``random_masking`` ->
``forward_encoder`` (visible patches only) -> ``forward_decoder`` (mask tokens,
unshuffle, light transformer) -> ``forward_loss`` (MSE on masked patches).

The paper's ablations are options of the same model, each off by default (Table 1):
``mask_sampling`` block (BEiT's generator, ``block_masks``) or grid instead of random (1f),
``encoder_mask_tokens`` (every patch through the encoder, masked ones as a learned token: 1c and
Table 2's baseline), ``target`` pca (the largest 96 coefficients of the patch space, fitted on the
training data before step 0: 1d).

Parameter names and shapes are those of the authors' ``MaskedAutoencoderViT``,
so their checkpoints (a dict with key ``model``) load strictly and ours load
into their code; the encoder part uses timm's ViT names, so it exports to a
file that ``timm.create_model('vit_base_patch16_224', num_classes=0)`` loads
strictly (``encoder_state_dict``, ``MAEMethod.export``).

Below the model: the method as the trainer runs it (``MAEPretrainConfig``, ``MAEMethod``) and the
authors' checkpoint layout (``model``, ``epoch`` = the last finished, ``args``).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Tuple

import torch
import torch.nn as nn
from timm.models.vision_transformer import Block, PatchEmbed
from timm.optim import param_groups_weight_decay
from torch.utils.checkpoint import checkpoint
from torch.utils.data import default_collate

from ..backbones import VIT_ARCHS, BackboneExport, Provenance, ViTArch, read_backbone, vit_export
from ..checkpoint import CheckpointFormatError, describe_state_dict, load_file, strip_prefix, unwrap_state_dict
from ..config import DataConfig, OptimConfig, TrainConfig
from ..pos_embed import get_2d_sincos_pos_embed, resize_pos_embed
from ..transforms import MAE_AUGMENTATIONS, mae_transform
from . import PretrainMethod, fused_ok, register_method, run_config, trained_on

log = logging.getLogger(__name__)

__all__ = [
    "MaskedAutoencoderViT",
    "MAE_ARCHS",
    "create_mae",
    "encoder_state_dict",
    "load_mae_weights",
    "mae_from_checkpoint",
    "MAEModelConfig",
    "MAEPretrainConfig",
    "MAEMethod",
]


class MaskedAutoencoderViT(nn.Module):
    """ViT encoder on the visible patches + light ViT decoder predicting pixels."""

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 1024,
        depth: int = 24,
        num_heads: int = 16,
        decoder_embed_dim: int = 512,
        decoder_depth: int = 8,
        decoder_num_heads: int = 16,
        mlp_ratio: float = 4.0,
        norm_layer: Callable[..., nn.Module] = partial(nn.LayerNorm, eps=1e-6),
        norm_pix_loss: bool = False,
        mask_sampling: str = "random",
        encoder_mask_tokens: bool = False,
        target: Optional[str] = None,
        pca_dim: int = 96,
    ):
        super().__init__()
        if mask_sampling not in MASK_SAMPLING:
            raise ValueError(f"mask_sampling must be one of {', '.join(MASK_SAMPLING)}, got {mask_sampling!r}")
        # None: the authors' flag decides (pixel, or norm_pixel with norm_pix_loss).
        target = target or ("norm_pixel" if norm_pix_loss else "pixel")
        if target not in TARGETS:
            raise ValueError(f"target must be one of {', '.join(TARGETS)}, got {target!r}")
        # ---- encoder (timm ViT names) ----
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        # Fixed sin-cos table, kept as a frozen Parameter so the state dict matches the authors'.
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim), requires_grad=False)
        self.blocks = nn.ModuleList(
            [Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm_layer) for _ in range(depth)]
        )
        self.norm = norm_layer(embed_dim)

        # ---- decoder ----
        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder_pos_embed = nn.Parameter(
            torch.zeros(1, num_patches + 1, decoder_embed_dim), requires_grad=False
        )
        self.decoder_blocks = nn.ModuleList(
            [
                Block(decoder_embed_dim, decoder_num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm_layer)
                for _ in range(decoder_depth)
            ]
        )
        self.decoder_norm = norm_layer(decoder_embed_dim)
        patch_dim = patch_size**2 * in_chans
        self.decoder_pred = nn.Linear(decoder_embed_dim, pca_dim if target == "pca" else patch_dim)

        # ---- ablations (Table 1) ----
        self.mask_sampling = mask_sampling
        self.target = target
        self.norm_pix_loss = target == "norm_pixel"
        # The learned [M] token of the all-patch encoder; absent (not in the state dict) by default.
        self.enc_mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if encoder_mask_tokens else None
        if target == "pca":  # the patch space's mean and top principal axes, fitted by ``fit_pca``; saved
            self.register_buffer("pca_mean", torch.zeros(patch_dim))
            self.register_buffer("pca_basis", torch.zeros(pca_dim, patch_dim))
        self.grad_checkpointing = False  # set_grad_checkpointing
        self.initialize_weights()

    # ------------------------------------------------------------------ init
    def initialize_weights(self):
        grid = self.patch_embed.grid_size
        self.pos_embed.data.copy_(get_2d_sincos_pos_embed(self.pos_embed.shape[-1], grid, cls_token=True)[None])
        self.decoder_pos_embed.data.copy_(
            get_2d_sincos_pos_embed(self.decoder_pos_embed.shape[-1], grid, cls_token=True)[None]
        )
        # The patch projection is a linear layer on flattened patches: init it like one.
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        if self.enc_mask_token is not None:
            nn.init.normal_(self.enc_mask_token, std=0.02)
        self.apply(_init_linear_and_norm)

    def set_grad_checkpointing(self, enable: bool = True):
        """Activation checkpointing of every encoder and decoder block (timm's method name): the backward
        recomputes each block's activations from its input instead of keeping them, for about a third
        more compute and a fraction of the activation memory."""
        self.grad_checkpointing = enable

    def _run_block(self, blk: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled():
            # Non-reentrant: replays the forward's RNG state (dropout, drop path) in the recomputation,
            # and composes with torch.compile.
            return checkpoint(blk, x, use_reentrant=False)
        return blk(x)

    # --------------------------------------------------------------- patches
    @property
    def patch_size(self) -> int:
        return self.patch_embed.patch_size[0]

    @property
    def in_chans(self) -> int:
        return self.patch_embed.proj.in_channels

    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """[N, C, H, W] -> [N, L, p*p*C], each patch flattened as (p, q, c)."""
        p, c = self.patch_size, self.in_chans
        n, _, hgt, wid = imgs.shape
        if hgt % p or wid % p:
            raise ValueError(f"image size {hgt}x{wid} is not a multiple of the patch size {p}")
        h, w = hgt // p, wid // p
        x = imgs.reshape(n, c, h, p, w, p)
        x = torch.einsum("nchpwq->nhwpqc", x)
        return x.reshape(n, h * w, p * p * c)

    def unpatchify(self, x: torch.Tensor, grid: Optional[Tuple[int, int]] = None) -> torch.Tensor:
        """[N, L, p*p*C] -> [N, C, H, W] (inverse of ``patchify``)."""
        p, c = self.patch_size, self.in_chans
        h, w = grid or self.patch_embed.grid_size
        if h * w != x.shape[1]:
            raise ValueError(f"{x.shape[1]} patches do not form a {h}x{w} grid")
        x = x.reshape(x.shape[0], h, w, p, p, c)
        x = torch.einsum("nhwpqc->nchpwq", x)
        return x.reshape(x.shape[0], c, h * p, w * p)

    # --------------------------------------------------------------- masking
    @staticmethod
    def random_masking(x: torch.Tensor, mask_ratio: float, noise: Optional[torch.Tensor] = None):
        """Keep the ``int(L * (1 - mask_ratio))`` patches with the smallest noise, per sample.

        Returns the kept tokens [N, len_keep, D], the binary mask [N, L] in the
        original order (0 keep, 1 remove) and ``ids_restore``, the inverse of the
        shuffle, which puts a shuffled sequence back in patch order.
        """
        n, length, dim = x.shape
        len_keep = int(length * (1 - mask_ratio))
        if noise is None:
            noise = torch.rand(n, length, device=x.device)
        elif noise.shape != (n, length):
            raise ValueError(f"noise must have shape {(n, length)}, got {tuple(noise.shape)}")

        ids_shuffle = torch.argsort(noise, dim=1)  # ascending: small noise is kept
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        ids_keep = ids_shuffle[:, :len_keep]
        x_kept = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, dim))

        mask = torch.ones(n, length, device=x.device)
        mask[:, :len_keep] = 0
        mask = torch.gather(mask, 1, ids_restore)
        return x_kept, mask, ids_restore

    def masking_noise(self, n: int, mask_ratio: float, device) -> torch.Tensor:
        """The noise ``random_masking`` sorts, drawn as this model's ``mask_sampling`` says."""
        return masking_noise(self.mask_sampling, n, self.patch_embed.grid_size, mask_ratio, device)

    # --------------------------------------------------------------- forward
    def forward_encoder(self, imgs: torch.Tensor, mask_ratio: float, noise: Optional[torch.Tensor] = None):
        x = self.patch_embed(imgs)
        if noise is None and self.mask_sampling != "random":  # random: random_masking draws it
            noise = self.masking_noise(x.shape[0], mask_ratio, x.device)
        if self.enc_mask_token is not None:  # the baseline: all patches, the removed ones as [M]
            _, mask, ids_restore = self.random_masking(x, mask_ratio, noise)
            x = torch.where(mask.unsqueeze(-1).bool(), self.enc_mask_token.to(x.dtype), x)
            x = x + self.pos_embed[:, 1:, :]
            ids_restore = None  # the sequence stays in patch order
        else:
            x = x + self.pos_embed[:, 1:, :]  # position first, so masking keeps each token's place
            x, mask, ids_restore = self.random_masking(x, mask_ratio, noise)
        cls = (self.cls_token + self.pos_embed[:, :1, :]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        for blk in self.blocks:
            x = self._run_block(blk, x)
        return self.norm(x), mask, ids_restore

    def forward_decoder(self, latent: torch.Tensor, ids_restore: Optional[torch.Tensor]) -> torch.Tensor:
        """``ids_restore`` None: ``latent`` already holds every patch in order (``encoder_mask_tokens``)."""
        x = self.decoder_embed(latent)
        if ids_restore is not None:
            n, num_visible, dim = x.shape[0], x.shape[1] - 1, x.shape[2]
            mask_tokens = self.mask_token.expand(n, ids_restore.shape[1] - num_visible, -1)
            patches = torch.cat([x[:, 1:, :], mask_tokens], dim=1)
            patches = torch.gather(patches, 1, ids_restore.unsqueeze(-1).expand(-1, -1, dim))  # unshuffle
            x = torch.cat([x[:, :1, :], patches], dim=1)
        x = x + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            x = self._run_block(blk, x)
        x = self.decoder_pred(self.decoder_norm(x))
        return x[:, 1:, :]  # drop the cls token

    def patch_targets(self, imgs: torch.Tensor) -> torch.Tensor:
        """Per-patch regression targets: the pixels, normalised per patch (``norm_pixel``), or their
        coordinates on the fitted principal axes (``pca``)."""
        target = self.patchify(imgs)
        if self.target == "norm_pixel":
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)  # unbiased, as the authors' code
            target = (target - mean) / (var + 1e-6) ** 0.5
        elif self.target == "pca":
            target = (target.float() - self.pca_mean) @ self.pca_basis.T
        return target

    @torch.no_grad()
    def fit_pca(self, imgs: torch.Tensor) -> torch.Tensor:
        """Fit the ``pca`` target on images [N, C, H, W] (normalised as in training): the mean patch and
        the ``pca_dim`` principal axes of their patches, largest variance first. Returns the variance
        along each axis (the eigenvalues, in the same order)."""
        patches = self.patchify(imgs).flatten(0, 1).double()
        mean = patches.mean(0)
        cov = (patches - mean).T @ (patches - mean) / max(1, patches.shape[0] - 1)
        eigvals, eigvecs = torch.linalg.eigh(cov)  # ascending
        k = self.pca_basis.shape[0]
        self.pca_mean.copy_(mean)
        self.pca_basis.copy_(eigvecs[:, -k:].flip(1).T)
        return eigvals[-k:].flip(0)

    def forward_loss(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean squared error on the removed patches only."""
        loss = ((pred.float() - self.patch_targets(imgs).float()) ** 2).mean(dim=-1)  # [N, L]
        return (loss * mask).sum() / mask.sum()

    def forward(self, imgs: torch.Tensor, mask_ratio: float = 0.75, noise: Optional[torch.Tensor] = None):
        latent, mask, ids_restore = self.forward_encoder(imgs, mask_ratio, noise)
        pred = self.forward_decoder(latent, ids_restore)
        loss = self.forward_loss(imgs, pred, mask)
        return loss, pred, mask

    @torch.no_grad()
    def forward_features(self, imgs: torch.Tensor) -> torch.Tensor:
        """Unmasked encoder output [N, 1 + L, D] (cls token first), e.g. for kNN monitoring."""
        x = self.patch_embed(imgs) + self.pos_embed[:, 1:, :]
        cls = (self.cls_token + self.pos_embed[:, :1, :]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)


# ------------------------------------------------------------------ masking
MASK_SAMPLING = ("random", "block", "grid")
TARGETS = ("pixel", "norm_pixel", "pca")


def block_masks(n: int, grid: Tuple[int, int], num_masking: int, min_patches: int = 16, min_aspect: float = 0.3,
                max_attempts: int = 10, device=None) -> torch.Tensor:
    """BEiT's block-wise masking (Bao et al. 2021, its ``MaskingGenerator``), for ``n`` masks at once:
    bool [n, h, w], True = removed.

    Blocks are added until ``num_masking`` patches are covered: each has an area drawn uniformly in
    [min_patches, still to cover], a log-uniform aspect ratio in [min_aspect, 1 / min_aspect] and a uniform
    position; a block must fit the grid and add between 1 and the patches still to cover, else it is
    redrawn, up to ``max_attempts`` times, after which the mask stays short (as BEiT's). The loop runs
    over blocks (about ten), each step for the whole batch: no Python loop per image.
    """
    h, w = grid
    mask = torch.zeros(n, h, w, dtype=torch.bool, device=device)
    count = torch.zeros(n, dtype=torch.long, device=device)
    active = torch.full((n,), num_masking > 0, dtype=torch.bool, device=device)
    rows = torch.arange(h, device=device)
    cols = torch.arange(w, device=device)
    everyone = torch.arange(n, device=device)
    log_lo, log_hi = math.log(min_aspect), math.log(1 / min_aspect)
    while bool(active.any()):
        # One block for every image still short: its ``max_attempts`` draws at once, the first that is
        # valid taken (BEiT draws them one after the other and stops at the first valid one: the same law).
        still = (num_masking - count).double()
        u = torch.rand(4, max_attempts, n, dtype=torch.float64, device=device)
        area = min_patches + (still - min_patches) * u[0]  # random.uniform(a, b), also for b < a
        aspect = torch.exp(log_lo + (log_hi - log_lo) * u[1])
        bh = torch.round(torch.sqrt(area * aspect)).long()
        bw = torch.round(torch.sqrt(area / aspect)).long()
        top = (u[2] * (h - bh + 1).clamp(min=1)).long()  # random.randint(0, h - bh)
        left = (u[3] * (w - bw + 1).clamp(min=1)).long()
        in_rows = ((rows >= top[..., None]) & (rows < (top + bh)[..., None])).float()  # [attempts, n, h]
        in_cols = ((cols >= left[..., None]) & (cols < (left + bw)[..., None])).float()  # [attempts, n, w]
        # The patches each block would add: its rows x columns over the patches not yet removed.
        new = torch.einsum("anh,nhw,anw->an", in_rows, (~mask).float(), in_cols).round().long()
        valid = (bh < h) & (bw < w) & (new > 0) & (new <= still.long()) & active
        first = valid.int().argmax(0)  # the first valid attempt (0 where none is)
        took = valid.any(0)
        block = (in_rows[first, everyone][:, :, None] * in_cols[first, everyone][:, None, :]).bool()
        mask |= block & took.view(n, 1, 1)
        count += torch.where(took, new[first, everyone], 0)
        active &= took & (count < num_masking)
    return mask


def masking_noise(sampling: str, n: int, grid: Tuple[int, int], mask_ratio: float, device=None) -> torch.Tensor:
    """Noise [n, h * w] whose ascending sort keeps the patches ``sampling`` keeps (``random_masking``):
    uniform for random (the same draw as ``random_masking``'s own); block and grid rank the patches
    they remove above the others, with uniform noise below to break ties, so the same sort keeps
    exactly ``int(L * (1 - mask_ratio))``: a short block mask is topped up at random."""
    h, w = grid
    if sampling == "random":
        return torch.rand(n, h * w, device=device)
    if sampling == "block":
        removed = block_masks(n, grid, int(h * w * mask_ratio), device=device)
    elif sampling == "grid":
        removed = grid_masks(n, grid, device=device)
    else:
        raise ValueError(f"mask sampling must be one of {', '.join(MASK_SAMPLING)}, got {sampling!r}")
    return removed.flatten(1).float() + torch.rand(n, h * w, device=device)


def grid_masks(n: int, grid: Tuple[int, int], device=None) -> torch.Tensor:
    """Grid-wise sampling (the paper's Figure 6, right): keeps one patch of every 2x2, the top-left;
    bool [n, h, w], True = removed (75% on an even grid)."""
    h, w = grid
    rows = torch.arange(h, device=device).view(h, 1)
    cols = torch.arange(w, device=device).view(1, w)
    kept = (rows % 2 == 0) & (cols % 2 == 0)
    return (~kept).expand(n, h, w)


def _init_linear_and_norm(m: nn.Module):
    # Xavier-uniform as the official JAX ViT; zero biases; unit LayerNorm.
    if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


# ------------------------------------------------------------------- presets
# Paper presets (named as in the authors' code) and small ones for CPUs and tests: an encoder shape of
# ``pretrain.backbones.VIT_ARCHS`` each, and the decoder of the arguments.
MAE_ARCHS: Dict[str, ViTArch] = {f"mae_{name}": arch for name, arch in VIT_ARCHS.items()}


def create_mae(arch: str, **kwargs) -> MaskedAutoencoderViT:
    """Build a preset. kwargs: ``norm_pix_loss``, ``img_size``, ``decoder_depth`` /
    ``decoder_embed_dim`` / ``decoder_num_heads`` (defaults 8 / 512 / 16), ``in_chans``."""
    if arch not in MAE_ARCHS:
        raise ValueError(f"unknown MAE arch {arch!r}; expected one of {sorted(MAE_ARCHS)}")
    a = MAE_ARCHS[arch]
    return MaskedAutoencoderViT(
        patch_size=a.patch_size, embed_dim=a.embed_dim, depth=a.depth, num_heads=a.num_heads, **kwargs
    )


def _preset(name: str):
    def build(**kwargs) -> MaskedAutoencoderViT:
        return create_mae(name, **kwargs)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = f"MAE preset {name}: {MAE_ARCHS[name]}"
    return build


mae_vit_base_patch16 = _preset("mae_vit_base_patch16")
mae_vit_large_patch16 = _preset("mae_vit_large_patch16")
mae_vit_huge_patch14 = _preset("mae_vit_huge_patch14")
mae_vit_small_patch16 = _preset("mae_vit_small_patch16")
mae_vit_tiny_patch16 = _preset("mae_vit_tiny_patch16")
mae_vit_pico_patch8 = _preset("mae_vit_pico_patch8")


# ------------------------------------------------------- checkpoint layout
DECODER_PREFIXES = ("decoder_", "mask_token")
# Pretraining-only tensors of the ablations: the encoder's [M] token, the PCA target's axes.
ABLATION_KEYS = ("enc_mask_token", "pca_mean", "pca_basis")


def encoder_state_dict(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The encoder of a MAE state dict under timm ViT names (decoder dropped).

    Loads strictly into ``timm.create_model(<arch>.timm_name, num_classes=0)``.
    """
    return {k: v for k, v in state_dict.items() if not k.startswith(DECODER_PREFIXES) and k not in ABLATION_KEYS}


def decoder_shape(state_dict: Dict[str, torch.Tensor]) -> Dict:
    """decoder_embed_dim / depth / num_heads of a full MAE state dict (heads: the authors' 16 at width 512,
    else width / 32, as the presets)."""
    dim = state_dict["decoder_embed.weight"].shape[0]
    return {"decoder_embed_dim": dim,
            "decoder_depth": 1 + max(int(k.split(".")[1]) for k in state_dict if k.startswith("decoder_blocks.")),
            "decoder_num_heads": 16 if dim == 512 else max(1, dim // 32)}


def mae_from_checkpoint(source, **overrides) -> Tuple[MaskedAutoencoderViT, Dict]:
    """Rebuild the MAE model a checkpoint was trained as, with its weights.

    The model's settings come from the project's ``config``, else the authors'
    ``args`` (model name, norm_pix_loss, input_size), else the tensor shapes.
    """
    ckpt = load_file(source) if not isinstance(source, dict) else source
    sd = unwrap_state_dict(ckpt)
    if describe_state_dict(sd) != "mae":
        raise CheckpointFormatError(
            f"expected a full MAE checkpoint (encoder and decoder), found {describe_state_dict(sd, verbose=True)}"
        )
    export = MAEMethod().export(ckpt, str(source) if not isinstance(source, dict) else "<dict>")
    info = {"arch": f"mae_{export.arch}" if f"mae_{export.arch}" in MAE_ARCHS else None, **export.shape}
    kwargs = {**decoder_shape(sd), "img_size": info["img_size"], "norm_pix_loss": False}
    cfg = run_config(ckpt)
    if cfg is not None:  # the project's trainer
        info["arch"] = cfg.model.arch
        kwargs.update(norm_pix_loss=cfg.model.norm_pix_loss, decoder_num_heads=cfg.model.decoder_num_heads,
                      img_size=cfg.data.img_size, **ablation_kwargs(cfg.model))
    elif ckpt.get("args") is not None:  # the authors' main_pretrain.py
        args = vars(ckpt["args"])
        name = str(args.get("model", ""))
        info["arch"] = next((a for a in MAE_ARCHS if name.startswith(a)), info["arch"])
        kwargs.update(norm_pix_loss=bool(args.get("norm_pix_loss", False)), img_size=args.get("input_size", 224))
    if info["arch"] is None:
        raise CheckpointFormatError(f"no MAE preset has the shape {info}; build the model yourself")
    kwargs.update(overrides)
    model = create_mae(info["arch"], **kwargs)
    load_mae_weights(model, ckpt, encoder_only_ok=False)
    info.update(kwargs)
    return model, info


def load_mae_weights(model: MaskedAutoencoderViT, source, encoder_only_ok: bool = True) -> List[str]:
    """Load a checkpoint (path or dict) into ``model``; returns the notes of what was adapted.

    A full MAE checkpoint must match exactly. An encoder-only file (the authors'
    ``mae_pretrain_vit_*.pth``, a timm / DeiT ViT: ``pretrain.backbones.read_backbone``) fills the
    encoder and leaves the decoder as initialised, which is reported; any other missing or unexpected
    key is an error naming the keys. Position tables are resized to the model's grid.
    """
    ckpt = load_file(source) if not isinstance(source, Mapping) else source
    sd = unwrap_state_dict(ckpt)
    export = read_backbone(ckpt, path=str(source) if not isinstance(source, Mapping) else None)
    if export.family != "vit":
        raise CheckpointFormatError(f"expected a MAE or ViT checkpoint, found {describe_state_dict(sd, True)}")
    notes = list(export.notes)
    out = dict(export.state_dict)
    if describe_state_dict(sd) == "mae":
        out.update({k: v for k, v in sd.items() if k.startswith(DECODER_PREFIXES) or k in ABLATION_KEYS})
    if out["pos_embed"].shape != model.pos_embed.shape:
        old = out["pos_embed"].shape
        out["pos_embed"] = resize_pos_embed(out["pos_embed"], model.patch_embed.grid_size)
        notes.append(f"resized pos_embed {tuple(old)} -> {tuple(out['pos_embed'].shape)}")
    if "decoder_pos_embed" in out and out["decoder_pos_embed"].shape != model.decoder_pos_embed.shape:
        out["decoder_pos_embed"] = model.decoder_pos_embed.detach().clone()  # fixed sin-cos: regenerated
        notes.append("regenerated decoder_pos_embed for the new grid")
    result = model.load_state_dict(out, strict=False)
    missing_decoder = [k for k in result.missing_keys if k.startswith(DECODER_PREFIXES)]
    other_missing = [k for k in result.missing_keys if not k.startswith(DECODER_PREFIXES)]
    if other_missing or result.unexpected_keys or (missing_decoder and not encoder_only_ok):
        raise CheckpointFormatError(
            f"checkpoint does not match {type(model).__name__}: missing {other_missing or missing_decoder}, "
            f"unexpected {result.unexpected_keys}"
        )
    if missing_decoder:
        notes.append(f"encoder-only checkpoint: {len(missing_decoder)} decoder tensors left as initialised")
    return notes


# ------------------------------------------------------------------ method
@dataclass
class MAEModelConfig:
    arch: str = "mae_vit_base_patch16"
    mask_ratio: float = 0.75
    norm_pix_loss: bool = True
    decoder_embed_dim: int = 512
    decoder_depth: int = 8
    decoder_num_heads: int = 16
    # Activation checkpointing of the encoder and decoder blocks: less memory (a larger batch per GPU, ViT-L/H
    # on smaller GPUs) for about a third more compute per step; the losses and gradients are the same.
    grad_checkpointing: bool = False
    # The paper's ablations (Table 1); the defaults are the paper's choices.
    mask_sampling: str = "random"  # random | block (BEiT's generator) | grid (one of every 2x2 kept; ratio 0.75)
    encoder_mask_tokens: bool = False  # every patch through the encoder, removed ones as a learned token
    target: str = "auto"  # auto (norm_pixel when norm_pix_loss, else pixel) | pixel | norm_pixel | pca
    pca_dim: int = 96  # target=pca: the coefficients of the largest principal axes
    pca_images: int = 256  # target=pca: training images the axes are fitted on, before step 0


@dataclass
class MAEDataConfig(DataConfig):
    # Table 1e: none (resize, centre crop) | crop_fixed (random crop, fixed size) | crop_rand (random size:
    # the paper's) | crop_color (crop_rand + colour jitter); each with the horizontal flip but none.
    augmentation: str = "crop_rand"


def ablation_kwargs(m: MAEModelConfig) -> Dict:
    """The model's options of a config's ablation keys."""
    return {"mask_sampling": m.mask_sampling, "encoder_mask_tokens": m.encoder_mask_tokens,
            "target": None if m.target == "auto" else m.target, "pca_dim": m.pca_dim}


@dataclass
class MAEPretrainConfig:
    method: str = "mae"
    model: MAEModelConfig = field(default_factory=MAEModelConfig)
    data: MAEDataConfig = field(default_factory=MAEDataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


@register_method
class MAEMethod(PretrainMethod):
    name = "mae"
    config_schema = MAEPretrainConfig

    def validate(self, cfg, fail):
        if not 0.0 <= cfg.model.mask_ratio < 1.0:
            fail(f"model.mask_ratio must be in [0, 1), got {cfg.model.mask_ratio}")
        if cfg.model.arch not in MAE_ARCHS:
            fail(f"model.arch must be one of {sorted(MAE_ARCHS)}, got {cfg.model.arch!r}")
        m = cfg.model
        if m.mask_sampling not in MASK_SAMPLING:
            fail(f"model.mask_sampling must be one of {', '.join(MASK_SAMPLING)}, got {m.mask_sampling!r}")
        if m.mask_sampling == "grid":
            grid = cfg.data.img_size // MAE_ARCHS[m.arch].patch_size if m.arch in MAE_ARCHS else 0
            if m.mask_ratio != 0.75 or grid % 2:
                fail(f"model.mask_sampling=grid keeps one patch of every 2x2: it needs model.mask_ratio=0.75 "
                     f"(got {m.mask_ratio}) and an even patch grid (got {grid}x{grid})")
        if m.target == "dvae":
            fail("model.target=dvae needs DALL-E's tokenizer weights, which this project cannot fetch or "
                 "train: use pixel, norm_pixel or pca")
        if m.target not in ("auto",) + TARGETS:
            fail(f"model.target must be auto, {', '.join(TARGETS)}, got {m.target!r}")
        if m.target == "pca" and not (0 < m.pca_dim and 0 < m.pca_images):
            fail(f"model.pca_dim and model.pca_images must be positive, got {m.pca_dim} and {m.pca_images}")
        if cfg.data.augmentation not in MAE_AUGMENTATIONS:
            fail(f"data.augmentation must be one of {', '.join(MAE_AUGMENTATIONS)}, got {cfg.data.augmentation!r}")

    def label(self, cfg) -> str:
        return "mae"

    def build_model(self, cfg, world_size: int = 1) -> nn.Module:
        m = cfg.model
        model = create_mae(
            m.arch, img_size=cfg.data.img_size, norm_pix_loss=m.norm_pix_loss,
            decoder_embed_dim=m.decoder_embed_dim, decoder_depth=m.decoder_depth,
            decoder_num_heads=m.decoder_num_heads, **ablation_kwargs(m),
        )
        model.set_grad_checkpointing(m.grad_checkpointing)
        return model

    def build_transform(self, cfg, device: torch.device) -> Callable:
        return mae_transform(cfg.data.img_size, cfg.data.crop_min_scale, cfg.data.augmentation)

    def prepare(self, model: nn.Module, cfg, dataset) -> None:
        """target=pca: fit the axes on ``model.pca_images`` training images (seeded: every process fits
        the same), before step 0; a resumed run then loads them from its checkpoint."""
        if cfg.model.target != "pca":
            return
        device = model.pca_mean.device
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(cfg.train.seed))
        indices = order[:cfg.model.pca_images].tolist()
        samples = default_collate([dataset[(i, cfg.train.seed)][0] for i in indices])
        imgs = dataset.device_transform(samples, device)
        variance = model.fit_pca(imgs)
        kept = float(variance.sum() / model.patchify(imgs).flatten(0, 1).double().var(0).sum())
        log.info("target=pca: %d axes fitted on %d images (%d patches) hold %.1f%% of the patch variance",
                 variance.numel(), imgs.shape[0], imgs.shape[0] * model.patch_embed.num_patches, 100 * kept)

    def build_optimizer(self, model: nn.Module, cfg, lr: float) -> torch.optim.Optimizer:
        # No weight decay on biases and norms (1-d tensors), as the authors' code.
        groups = param_groups_weight_decay(model, cfg.optim.weight_decay)
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(cfg.optim.betas), fused=fused_ok(model))

    def loss(self, model: nn.Module, batch, cfg):
        loss, _, _ = model(batch[0], mask_ratio=cfg.model.mask_ratio)
        return loss, {}

    @torch.no_grad()
    def features(self, model: nn.Module, imgs: torch.Tensor) -> torch.Tensor:
        return model.forward_features(imgs)[:, 0]  # the cls token

    def checkpoint_name(self, tag) -> str:
        return f"checkpoint-{tag}.pth"

    def pack(self, model: nn.Module, cfg, finished_epoch: int) -> Dict:
        """The authors' layout: ``model``, ``epoch`` (the last finished); the trainer adds ``optimizer``, ``scaler``."""
        return {"model": model.state_dict(), "epoch": finished_epoch}

    def epochs_done(self, ckpt: Mapping) -> int:
        return int(ckpt["epoch"]) + 1

    @classmethod
    def claims(cls, ckpt: Mapping, source: str = "") -> bool:
        """The authors' full checkpoints (with the decoder), and their encoder-only releases
        (``mae_pretrain_vit_*.pth``: a bare ViT encoder, which only the name tells)."""
        try:
            kind = describe_state_dict(strip_prefix(unwrap_state_dict(ckpt), "module."))
        except CheckpointFormatError:
            return False
        return kind == "mae" or (kind == "vit" and "mae" in Path(source).name.lower()
                                 and "head.weight" not in unwrap_state_dict(ckpt))

    def export(self, ckpt: Mapping, source: str = "<dict>") -> BackboneExport:
        sd = strip_prefix(unwrap_state_dict(ckpt), "module.")
        cfg, epoch, data = run_config(ckpt), ckpt.get("epoch"), None
        if cfg is not None:
            data, layout = trained_on(cfg), "the project's MAE checkpoint"
        elif ckpt.get("args") is not None:
            data = vars(ckpt["args"]).get("data_path")
            layout = "the MAE authors' checkpoint"
        else:
            layout = "a MAE encoder" if describe_state_dict(sd) == "vit" else "a MAE checkpoint"
        provenance = Provenance("mae", self.name, self.epochs_done(ckpt) if isinstance(epoch, int) else None,
                                data, source, layout)
        dropped = sorted(k for k in sd if k.startswith(DECODER_PREFIXES) or k in ABLATION_KEYS)
        return vit_export(encoder_state_dict(sd), provenance, dropped=dropped)
