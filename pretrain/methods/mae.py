"""Masked Autoencoders (He et al. 2021, "Masked Autoencoders Are Scalable Vision Learners").

The algorithm reads top to bottom: ``patchify`` -> ``random_masking`` ->
``forward_encoder`` (visible patches only) -> ``forward_decoder`` (mask tokens,
unshuffle, light transformer) -> ``forward_loss`` (MSE on masked patches).

Parameter names and shapes are those of the authors' ``MaskedAutoencoderViT``,
so their checkpoints (a dict with key ``model``) load strictly and ours load
into their code; the encoder part uses timm's ViT names, so it exports to a
file that ``timm.create_model('vit_base_patch16_224', num_classes=0)`` loads
strictly (``encoder_state_dict``, ``MAEMethod.export``).

Below the model: the method as the trainer runs it (``MAEPretrainConfig``, ``MAEMethod``) and the
authors' checkpoint layout (``model``, ``epoch`` = the last finished, ``args``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Tuple

import torch
import torch.nn as nn
from timm.models.vision_transformer import Block, PatchEmbed
from torch.utils.checkpoint import checkpoint
from timm.optim import param_groups_weight_decay

from ..backbones import VIT_ARCHS, BackboneExport, Provenance, ViTArch, read_backbone, vit_export
from ..checkpoint import CheckpointFormatError, describe_state_dict, load_file, strip_prefix, unwrap_state_dict
from ..config import DataConfig, OptimConfig, TrainConfig
from ..pos_embed import get_2d_sincos_pos_embed, resize_pos_embed
from ..transforms import mae_transform
from . import PretrainMethod, fused_ok, register_method, run_config, trained_on

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

    # --------------------------------------------------------------- forward
    def forward_encoder(self, imgs: torch.Tensor, mask_ratio: float, noise: Optional[torch.Tensor] = None):
        x = self.patch_embed(imgs)
        x = x + self.pos_embed[:, 1:, :]  # position first, so masking keeps each token's place
        x, mask, ids_restore = self.random_masking(x, mask_ratio, noise)
        cls = (self.cls_token + self.pos_embed[:, :1, :]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        for blk in self.blocks:
            x = self._run_block(blk, x)
        return self.norm(x), mask, ids_restore

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        x = self.decoder_embed(latent)
        n, num_visible, dim = x.shape[0], x.shape[1] - 1, x.shape[2]
        mask_tokens = self.mask_token.expand(n, ids_restore.shape[1] - num_visible, -1)
        patches = torch.cat([x[:, 1:, :], mask_tokens], dim=1)
        patches = torch.gather(patches, 1, ids_restore.unsqueeze(-1).expand(-1, -1, dim))  # unshuffle
        x = torch.cat([x[:, :1, :], patches], dim=1) + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            x = self._run_block(blk, x)
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


def encoder_state_dict(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The encoder of a MAE state dict under timm ViT names (decoder dropped).

    Loads strictly into ``timm.create_model(<arch>.timm_name, num_classes=0)``.
    """
    return {k: v for k, v in state_dict.items() if not k.startswith(DECODER_PREFIXES)}


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
        out.update({k: v for k, v in sd.items() if k.startswith(DECODER_PREFIXES)})
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


@dataclass
class MAEPretrainConfig:
    method: str = "mae"
    model: MAEModelConfig = field(default_factory=MAEModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
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

    def label(self, cfg) -> str:
        return "mae"

    def build_model(self, cfg, world_size: int = 1) -> nn.Module:
        m = cfg.model
        model = create_mae(
            m.arch, img_size=cfg.data.img_size, norm_pix_loss=m.norm_pix_loss,
            decoder_embed_dim=m.decoder_embed_dim, decoder_depth=m.decoder_depth,
            decoder_num_heads=m.decoder_num_heads,
        )
        model.set_grad_checkpointing(m.grad_checkpointing)
        return model

    def build_transform(self, cfg, device: torch.device) -> Callable:
        return mae_transform(cfg.data.img_size, cfg.data.crop_min_scale)

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
        dropped = sorted(k for k in sd if k.startswith(DECODER_PREFIXES))
        return vit_export(encoder_state_dict(sd), provenance, dropped=dropped)
