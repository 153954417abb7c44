"""Masked Autoencoders (He et al. 2021, "Masked Autoencoders Are Scalable Vision Learners").

The algorithm reads top to bottom: ``patchify`` -> ``random_masking`` ->
``forward_encoder`` (visible patches only) -> ``forward_decoder`` (mask tokens,
unshuffle, light transformer) -> ``forward_loss`` (MSE on masked patches).

Parameter names and shapes are those of the authors' ``MaskedAutoencoderViT``,
so their checkpoints (a dict with key ``model``) load strictly and ours load
into their code; the encoder part uses timm's ViT names, so it exports to a
file that ``timm.create_model('vit_base_patch16_224', num_classes=0)`` loads
strictly (``encoder_state_dict``). Conversions from the other formats sit at the
bottom of this file, beside the model they load (``checkpoint_filter_fn``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
from timm.models.vision_transformer import Block, PatchEmbed

from .checkpoint import (
    CheckpointFormatError, describe_state_dict, load_file, load_state_dict_file, unwrap_state_dict,
)
from .pos_embed import get_2d_sincos_pos_embed, resize_pos_embed

__all__ = [
    "MaskedAutoencoderViT",
    "MAE_ARCHS",
    "create_mae",
    "checkpoint_filter_fn",
    "encoder_state_dict",
    "load_mae_weights",
    "arch_from_state_dict",
    "mae_from_checkpoint",
    "configure_attention",
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
    ):
        super().__init__()
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
        self.decoder_pred = nn.Linear(decoder_embed_dim, patch_size**2 * in_chans)

        self.norm_pix_loss = norm_pix_loss
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
        self.apply(_init_linear_and_norm)

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

    # --------------------------------------------------------------- forward
    def forward_encoder(self, imgs: torch.Tensor, mask_ratio: float, noise: Optional[torch.Tensor] = None):
        x = self.patch_embed(imgs)
        x = x + self.pos_embed[:, 1:, :]  # position first, so masking keeps each token's place
        x, mask, ids_restore = self.random_masking(x, mask_ratio, noise)
        cls = (self.cls_token + self.pos_embed[:, :1, :]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x), mask, ids_restore

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        x = self.decoder_embed(latent)
        n, num_visible, dim = x.shape[0], x.shape[1] - 1, x.shape[2]
        mask_tokens = self.mask_token.expand(n, ids_restore.shape[1] - num_visible, -1)
        patches = torch.cat([x[:, 1:, :], mask_tokens], dim=1)
        patches = torch.gather(patches, 1, ids_restore.unsqueeze(-1).expand(-1, -1, dim))  # unshuffle
        x = torch.cat([x[:, :1, :], patches], dim=1) + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            x = blk(x)
        x = self.decoder_pred(self.decoder_norm(x))
        return x[:, 1:, :]  # drop the cls token

    def patch_targets(self, imgs: torch.Tensor) -> torch.Tensor:
        """Per-patch regression targets, normalised per patch when ``norm_pix_loss``."""
        target = self.patchify(imgs)
        if self.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)  # unbiased, as the authors' code
            target = (target - mean) / (var + 1e-6) ** 0.5
        return target

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


def _init_linear_and_norm(m: nn.Module):
    # Xavier-uniform as the official JAX ViT; zero biases; unit LayerNorm.
    if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def configure_attention(model: nn.Module, device_type: str, amp_dtype: Optional[torch.dtype]) -> bool:
    """Pick timm's attention path for the run; returns whether the fused one is used.

    Fused scaled-dot-product attention everywhere except CPU bf16 training, where
    its backward kernel is slower than the explicit softmax(QK^T)V path (1.27 s vs
    1.67 s per ViT-B MAE step on 2 Xeon cores; benchmarks/mae_masked_encoding.py).
    """
    fused = not (device_type == "cpu" and amp_dtype == torch.bfloat16)
    for m in model.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = fused
    return fused


# ------------------------------------------------------------------- presets
@dataclass(frozen=True)
class MAEArch:
    """Encoder shape of a preset; ``timm_name`` is the timm model its encoder loads into."""

    patch_size: int
    embed_dim: int
    depth: int
    num_heads: int
    timm_name: Optional[str] = None
    extra: Dict = field(default_factory=dict)


MAE_ARCHS: Dict[str, MAEArch] = {
    # Paper presets, named as in the authors' code.
    "mae_vit_base_patch16": MAEArch(16, 768, 12, 12, "vit_base_patch16_224"),
    "mae_vit_large_patch16": MAEArch(16, 1024, 24, 16, "vit_large_patch16_224"),
    "mae_vit_huge_patch14": MAEArch(14, 1280, 32, 16, "vit_huge_patch14_224"),
    # Small presets for CPUs and tests.
    "mae_vit_small_patch16": MAEArch(16, 384, 12, 6, "vit_small_patch16_224"),
    "mae_vit_tiny_patch16": MAEArch(16, 192, 12, 3, "vit_tiny_patch16_224"),
    "mae_vit_pico_patch8": MAEArch(8, 96, 4, 3),  # demo size: trains in minutes on 2 cores at 64 px
}


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


# --------------------------------------------------------------- conversions
DECODER_PREFIXES = ("decoder_", "mask_token")
# Keys of a fine-tuned / supervised timm ViT that the MAE encoder has no use for.
CLASSIFIER_KEYS = ("head.", "fc_norm.", "head_dist.", "dist_token")


def encoder_state_dict(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The encoder of a MAE state dict under timm ViT names (decoder dropped).

    Loads strictly into ``timm.create_model(<arch>.timm_name, num_classes=0)``.
    """
    return {k: v for k, v in state_dict.items() if not k.startswith(DECODER_PREFIXES)}


def checkpoint_filter_fn(
    state_dict: Dict[str, torch.Tensor], model: MaskedAutoencoderViT
) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """Adapt a MAE or timm-ViT state dict to ``model``; returns (state_dict, notes).

    Accepts the authors' full MAE checkpoints, their encoder-only releases, the
    project's checkpoints, timm / DeiT ViTs (classifier dropped), with or without
    a DDP ``module.`` prefix; resizes the encoder position table to the model's
    grid. Refuses, with what it found, anything that is not a ViT.
    """
    state_dict = unwrap_state_dict(state_dict)
    if describe_state_dict(state_dict) not in ("mae", "vit"):
        raise CheckpointFormatError(
            "expected a MAE or ViT checkpoint (keys like 'blocks.0.attn.qkv.weight'), "
            f"found {describe_state_dict(state_dict, verbose=True)}"
        )
    notes = []
    out = {}
    for k, v in state_dict.items():
        if k.startswith(CLASSIFIER_KEYS):
            notes.append(f"dropped classifier key {k}")
            continue
        out[k] = v
    if "dist_token" in state_dict and "pos_embed" in out:  # DeiT distilled: two prefix tokens
        out["pos_embed"] = torch.cat([out["pos_embed"][:, :1], out["pos_embed"][:, 2:]], dim=1)
        notes.append("dropped the distillation token's position")
    if "pos_embed" in out and out["pos_embed"].shape != model.pos_embed.shape:
        old = out["pos_embed"].shape
        out["pos_embed"] = resize_pos_embed(out["pos_embed"], model.patch_embed.grid_size)
        notes.append(f"resized pos_embed {tuple(old)} -> {tuple(out['pos_embed'].shape)}")
    if "decoder_pos_embed" in out and out["decoder_pos_embed"].shape != model.decoder_pos_embed.shape:
        # Fixed sin-cos: regenerate rather than interpolate.
        out["decoder_pos_embed"] = model.decoder_pos_embed.detach().clone()
        notes.append("regenerated decoder_pos_embed for the new grid")
    return out, notes


def arch_from_state_dict(state_dict: Dict[str, torch.Tensor]) -> Dict:
    """Encoder (and decoder) shape read off a MAE / ViT state dict.

    Heads cannot be read off shapes: they come from the preset with the same
    width, depth and patch size (the paper's models), else from width / 64.
    """
    sd = unwrap_state_dict(state_dict)
    w = sd["patch_embed.proj.weight"]
    embed_dim, patch_size = w.shape[0], w.shape[-1]
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    grid = sd["pos_embed"].shape[1] - 1
    preset = next((name for name, a in MAE_ARCHS.items()
                   if (a.patch_size, a.embed_dim, a.depth) == (patch_size, embed_dim, depth)), None)
    num_heads = MAE_ARCHS[preset].num_heads if preset else max(1, embed_dim // 64)
    info = {"arch": preset, "patch_size": patch_size, "embed_dim": embed_dim, "depth": depth,
            "num_heads": num_heads, "img_size": int(round(grid**0.5)) * patch_size,
            "mlp_ratio": sd["blocks.0.mlp.fc1.weight"].shape[0] / embed_dim}
    if "decoder_embed.weight" in sd:
        dec_dim = sd["decoder_embed.weight"].shape[0]
        info.update(decoder_embed_dim=dec_dim,
                    decoder_depth=1 + max(int(k.split(".")[1]) for k in sd if k.startswith("decoder_blocks.")),
                    decoder_num_heads=16 if dec_dim == 512 else max(1, dec_dim // 32))
    return info


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
    info = arch_from_state_dict(sd)
    kwargs = {k: info[k] for k in ("decoder_embed_dim", "decoder_depth", "decoder_num_heads", "img_size")}
    kwargs["norm_pix_loss"] = False
    if isinstance(ckpt.get("config"), str):  # the project's trainer
        from omegaconf import OmegaConf

        cfg = OmegaConf.create(ckpt["config"])
        info["arch"] = cfg.model.arch
        kwargs.update(norm_pix_loss=cfg.model.norm_pix_loss, decoder_num_heads=cfg.model.decoder_num_heads,
                      img_size=cfg.data.img_size)
    elif ckpt.get("args") is not None:  # the authors' main_pretrain.py
        args = vars(ckpt["args"])
        name = str(args.get("model", ""))
        info["arch"] = next((a for a in MAE_ARCHS if name.startswith(a)), info["arch"])
        kwargs.update(norm_pix_loss=bool(args.get("norm_pix_loss", False)), img_size=args.get("input_size", 224))
    if info["arch"] is None:
        raise CheckpointFormatError(f"no MAE preset has the shape {info}; build the model yourself")
    kwargs.update(overrides)
    model = create_mae(info["arch"], **kwargs)
    load_mae_weights(model, sd, encoder_only_ok=False)
    info.update(kwargs)
    return model, info


def load_mae_weights(model: MaskedAutoencoderViT, source, encoder_only_ok: bool = True) -> List[str]:
    """Load a checkpoint (path or dict) into ``model``; returns the notes of what was adapted.

    A full MAE checkpoint must match exactly. An encoder-only file (the authors'
    ``mae_pretrain_vit_*.pth``, a timm ViT) fills the encoder and leaves the
    decoder as initialised, which is reported; any other missing or unexpected
    key is an error naming the keys.
    """
    sd = load_state_dict_file(source) if not isinstance(source, dict) else source
    sd, notes = checkpoint_filter_fn(sd, model)
    result = model.load_state_dict(sd, strict=False)
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
