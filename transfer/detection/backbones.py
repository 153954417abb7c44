"""Backbone parts the LazyConfigs take beyond detectron2's: a max-pooled top level on another feature
(the tiny ViTDet's pyramid ends at p4), and detectron2's ViT with activation checkpointing that needs no
fairscale and with the published ViTs' options (LayerScale, SwiGLU, CLIP's norm before the blocks and
QuickGELU, the LayerNorms' eps, register tokens, BEiT's relative position bias)."""
from __future__ import annotations

from functools import partial
from typing import List, Optional, Tuple

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from . import require_detectron2

require_detectron2()
from detectron2.modeling.backbone.fpn import LastLevelMaxPool  # noqa: E402
from detectron2.modeling.backbone.utils import (  # noqa: E402
    add_decomposed_rel_pos, window_partition, window_unpartition)
from detectron2.modeling.backbone.vit import Attention as Detectron2Attention  # noqa: E402
from detectron2.modeling.backbone.vit import Block as Detectron2Block  # noqa: E402
from detectron2.modeling.backbone.vit import ViT as Detectron2ViT  # noqa: E402
from detectron2.modeling.backbone.vit import get_abs_pos, get_vit_lr_decay_rate  # noqa: E402

__all__ = ["last_level_max_pool", "ViT", "MLP_LAYERS", "fit_vitdet_to_checkpoint", "global_block_indexes",
           "fit_lr_decay", "vit_lr_decay_rate", "run_block", "relative_position_bias"]

MLP_LAYERS = ("mlp", "swiglu")  # detectron2's Mlp (fc1, act, fc2); timm's SwiGLUPacked (DINOv2 ViT-g)


class ViT(Detectron2ViT):
    """detectron2's ViTDet backbone (same arguments, modules and state dict), whose ``use_act_checkpoint``
    checkpoints every block with ``torch.utils.checkpoint`` (non-reentrant: the recomputation replays drop
    path's random numbers). detectron2's own flag wraps the blocks with fairscale, which is not among
    this project's requirements. Set it with ``model.backbone.net.use_act_checkpoint=True``: less activation
    memory (ViTDet-L/H at 1024 px on smaller GPUs) for about a third more backbone compute.

    The options of the published ViTs, under timm's names (so that a timm export's tensors keep their keys);
    their defaults build detectron2's ViT as it is:

    * ``init_values``: LayerScale on the attention and MLP branches (``blocks.i.ls1.gamma``, ``ls2.gamma``:
      DINOv2, OpenCLIP's LayerScale towers).
    * ``mlp_layer="swiglu"``: timm's ``SwiGLUPacked`` (fused ``fc1`` of both halves, SiLU; DINOv2 ViT-g).
    * ``pre_norm``: a norm after the position embedding (``norm_pre``, CLIP's ``ln_pre``); the patch
      embedding then has no bias, as CLIP's.
    * ``act_layer``: also a timm name (``"quick_gelu"``: OpenAI's CLIP). ``norm_eps``: the LayerNorms' eps
      (None: the ``norm_layer`` given; CLIP's is 1e-5).
    * ``reg_tokens``: register tokens (``reg_token``; DINOv2 ``_reg4``). detectron2's blocks work on
      (B, H, W, C) maps; the registers are a separate (B, R, C) sequence that joins the global-attention
      blocks (``window_size`` 0 for that block: the registers attend and are attended to by every patch,
      as in the pretraining) and passes the windowed blocks unchanged (a register has no window). They
      get no relative position term, and are dropped before the pyramid (the output is the patch map).
    * ``rel_pos_bias_grid``: BEiT's relative position bias, one table per block
      (``blocks.i.attn.relative_position_bias_table``, (2g - 1)^2 x heads for the pretraining's g x g grid: timm's
      ``Beit`` table less its 3 class-token entries, ViTDet having no class token), added to every attention's
      scores between patches. A window (or global grid) of another size takes the table resampled bicubically
      to its (2s - 1)^2 relative positions (timm's ``resize_rel_pos_bias_table_simple``) at forward, as
      detectron2 interpolates its decomposed terms at forward; the parameter keeps the pretraining's shape, so
      the file loads as it is. 0: none (detectron2's ``use_rel_pos`` is the other, decomposed parametrisation).
    """

    def __init__(self, *args, use_act_checkpoint: bool = False, init_values: Optional[float] = None,
                 mlp_layer: str = "mlp", pre_norm: bool = False, norm_eps: Optional[float] = None,
                 reg_tokens: int = 0, rel_pos_bias_grid: int = 0, **kwargs):
        if mlp_layer not in MLP_LAYERS:
            raise ValueError(f"mlp_layer must be one of {', '.join(MLP_LAYERS)}, got {mlp_layer!r}")
        if norm_eps is not None:
            kwargs["norm_layer"] = partial(nn.LayerNorm, eps=norm_eps)
        if isinstance(kwargs.get("act_layer"), str):
            from timm.layers import get_act_layer

            kwargs["act_layer"] = get_act_layer(kwargs["act_layer"])
        super().__init__(*args, **kwargs)
        self.use_act_checkpoint = use_act_checkpoint
        proj = self.patch_embed.proj
        dim = proj.out_channels
        if pre_norm:  # CLIP: conv1 has no bias, ln_pre after the position embedding
            self.patch_embed.proj = nn.Conv2d(proj.in_channels, dim, proj.kernel_size, proj.stride, bias=False)
            self.norm_pre = nn.LayerNorm(dim, eps=self.blocks[0].norm1.eps)
        else:
            self.norm_pre = nn.Identity()
        self.reg_token = nn.Parameter(torch.zeros(1, reg_tokens, dim)) if reg_tokens else None
        for blk in self.blocks:
            blk.__class__ = Block  # detectron2 built them; the same modules, this forward
            if mlp_layer == "swiglu":
                from timm.layers import SwiGLUPacked

                blk.mlp = SwiGLUPacked(in_features=dim, hidden_features=blk.mlp.fc1.out_features, act_layer=nn.SiLU)
            if init_values is not None:
                from timm.layers import LayerScale

                blk.ls1, blk.ls2 = LayerScale(dim, init_values), LayerScale(dim, init_values)
            else:
                blk.ls1, blk.ls2 = nn.Identity(), nn.Identity()
            if rel_pos_bias_grid:
                blk.attn.__class__ = Attention
                blk.attn.rel_pos_bias_grid = rel_pos_bias_grid
                blk.attn.relative_position_bias_table = nn.Parameter(
                    torch.zeros((2 * rel_pos_bias_grid - 1) ** 2, blk.attn.num_heads))

    def forward(self, x):
        x = self.patch_embed(x)
        if self.pos_embed is not None:
            x = x + get_abs_pos(self.pos_embed, self.pretrain_use_cls_token, (x.shape[1], x.shape[2]))
        x = self.norm_pre(x)
        # timm applies norm_pre to the registers too (they join the sequence before it)
        regs = None if self.reg_token is None else self.norm_pre(self.reg_token.expand(x.shape[0], -1, -1))
        for blk in self.blocks:  # through the module's call, so that its hooks run
            if self.use_act_checkpoint and torch.is_grad_enabled():
                x, regs = checkpoint(blk, x, regs, use_reentrant=False)
            else:
                x, regs = blk(x, regs)
        return {self._out_features[0]: x.permute(0, 3, 1, 2)}


class Block(Detectron2Block):
    """detectron2's ViTDet block (same modules and state dict) with ``run_block``'s forward: LayerScale and the
    registers. ``ViT`` gives its blocks this class after detectron2 built them."""

    def forward(self, x: torch.Tensor, regs: Optional[torch.Tensor] = None):
        return run_block(self, x, regs)


class Attention(Detectron2Attention):
    """detectron2's ViTDet attention (same modules) plus BEiT's relative position bias
    (``relative_position_bias_table`` for a ``rel_pos_bias_grid`` square grid); ``ViT`` gives its blocks' attention
    this class and the table when ``rel_pos_bias_grid`` is set."""

    relative_position_bias_table: nn.Parameter
    rel_pos_bias_grid: int

    def forward(self, x):
        B, H, W, _ = x.shape
        qkv = self.qkv(x).reshape(B, H * W, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.reshape(3, B * self.num_heads, H * W, -1).unbind(0)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        if self.use_rel_pos:
            attn = add_decomposed_rel_pos(attn, q, self.rel_pos_h, self.rel_pos_w, (H, W), (H, W))
        bias = relative_position_bias(self.relative_position_bias_table, self.rel_pos_bias_grid, (H, W))
        attn = (attn.view(B, self.num_heads, H * W, H * W) + bias).view(B * self.num_heads, H * W, H * W)
        x = (attn.softmax(dim=-1) @ v).view(B, self.num_heads, H, W, -1).permute(0, 2, 3, 1, 4).reshape(B, H, W, -1)
        return self.proj(x)


def relative_position_bias(table: torch.Tensor, grid: int, size: Tuple[int, int]) -> torch.Tensor:
    """BEiT's bias between the patches of an (h, w) window, (heads, h * w, h * w), from the patch part of its table
    for a ``grid`` x ``grid`` one ((2 grid - 1)^2 x heads, rows in timm's order: (dy + grid - 1) * (2 grid - 1) + dx
    + grid - 1 for a query dy rows and dx columns from the key). Another size takes the table resampled
    bicubically to (2h - 1) x (2w - 1) relative positions (timm's ``resize_rel_pos_bias_table_simple``: the 2-D
    table as an image), at every forward: cheap next to the attention, and differentiable, so that fine-tuning
    trains the pretraining's table (a cache would go stale as it trains)."""
    h, w = size
    if (h, w) != (grid, grid):
        from timm.layers import resize_rel_pos_bias_table_simple

        table = resize_rel_pos_bias_table_simple(table, (h, w), ((2 * h - 1) * (2 * w - 1), table.shape[1]))
    table = table.t().reshape(-1, 2 * h - 1, 2 * w - 1)  # heads, dy + h - 1, dx + w - 1
    # unfold: [heads, a, b, c, d] = table[:, a + c, b + d]; a query at (i, j) and a key at (k, l) are a = i, b = j,
    # c = h - 1 - k, d = w - 1 - l apart from the table's start. A view and one copy (the flip), whose backward
    # sums the windows without scattered atomic adds (deterministic on GPUs, unlike an index's)
    return table.unfold(1, h, 1).unfold(2, w, 1).flip(3, 4).reshape(-1, h * w, h * w)


def run_block(blk, x: torch.Tensor, regs: Optional[torch.Tensor] = None
              ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """detectron2's ``Block.forward`` with LayerScale (``blk.ls1`` / ``ls2``) and the registers ``regs``
    (B, R, C), which join a global-attention block and pass a windowed one unchanged."""
    shortcut = x
    x = blk.norm1(x)
    joined = regs is not None and blk.window_size == 0
    if blk.window_size > 0:
        H, W = x.shape[1], x.shape[2]
        x, pad_hw = window_partition(x, blk.window_size)
        x = window_unpartition(blk.attn(x), blk.window_size, pad_hw, (H, W))
    elif joined:
        x, attended = attention_with_prefix(blk.attn, x, blk.norm1(regs))
        regs = regs + blk.drop_path(blk.ls1(attended))
    else:
        x = blk.attn(x)
    x = shortcut + blk.drop_path(blk.ls1(x))
    x = x + blk.drop_path(blk.ls2(blk.mlp(blk.norm2(x))))
    if joined:
        regs = regs + blk.drop_path(blk.ls2(blk.mlp(blk.norm2(regs))))
    if blk.use_residual_block:
        x = blk.residual(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    return x, regs


def attention_with_prefix(attn, x: torch.Tensor, prefix: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """detectron2's ``Attention.forward`` over the map ``x`` (B, H, W, C) and ``prefix`` tokens (B, R, C) together;
    the relative position terms (decomposed, or BEiT's bias) apply between patches only. Returns (map, prefix
    tokens)."""
    B, H, W, C = x.shape
    R = prefix.shape[1]
    seq = torch.cat([prefix, x.reshape(B, H * W, C)], dim=1)
    N = seq.shape[1]
    qkv = attn.qkv(seq).reshape(B, N, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.reshape(3, B * attn.num_heads, N, -1).unbind(0)
    scores = (q * attn.scale) @ k.transpose(-2, -1)
    if attn.use_rel_pos:
        patches = add_decomposed_rel_pos(scores[:, R:, R:].contiguous(), q[:, R:], attn.rel_pos_h, attn.rel_pos_w,
                                         (H, W), (H, W))
        scores = torch.cat([scores[:, :R], torch.cat([scores[:, R:, :R], patches], dim=-1)], dim=1)
    if isinstance(attn, Attention):  # BEiT's bias
        bias = relative_position_bias(attn.relative_position_bias_table, attn.rel_pos_bias_grid, (H, W))
        scores = scores.view(B, attn.num_heads, N, N)
        scores = torch.cat([scores[:, :, :R], torch.cat([scores[:, :, R:, :R], scores[:, :, R:, R:] + bias], dim=-1)],
                           dim=2).view(B * attn.num_heads, N, N)
    out = (scores.softmax(dim=-1) @ v).view(B, attn.num_heads, N, -1).permute(0, 2, 1, 3).reshape(B, N, -1)
    out = attn.proj(out)
    return out[:, R:].reshape(B, H, W, -1), out[:, :R]


def fit_vitdet_to_checkpoint(cfg, checkpoint_path: str, allow_pickle: bool = False,
                             variant: Optional[str] = None) -> List[str]:
    """Set a ViTDet LazyConfig's ``model.backbone.net`` to the checkpoint's ViT (its shape and options, as
    ``convert.vitdet_net_args`` records them), the pyramid's scale factors to keep the config's strides, and the
    input normalisation to the backbone's; returns notes of what changed. A patch size the pyramid cannot take
    (14) becomes ``convert.pyramid_patch_size``'s 16, the image size of the position table kept: the
    checkpointer resizes the kernel (bicubic, as the ViTDet authors made ViT-H/14 into /16) and the table.

    A depth other than the config's takes ViTDet's attention pattern at that depth (``global_block_indexes``:
    the config's number of global blocks, evenly spaced, the rest windowed) and the layer-wise lr decay over
    its blocks (``optimizer.params.lr_factor_func``'s ``num_layers``; the config's decay rate and drop path
    kept); register tokens decay as the position embedding (``fit_lr_decay``), LayerScale has no weight decay
    (``optimizer.params.overrides``). The pyramid's channels follow the built ViT's width by themselves. The file
    may also be a checkpoint this tool trained from such a file: its ``pretrain_info`` records the same."""
    from pretrain.errors import ConfigError

    from .checkpoint import read_checkpoint
    from .convert import pyramid_patch_size

    data = read_checkpoint(checkpoint_path.split("?", 1)[0], allow_pickle, variant)  # variant: its network
    meta = data.get("sslkit") or data.get("pretrain_info") or {}  # a converted file, or a run's checkpoint
    if "net" not in meta:
        raise ConfigError(f"{checkpoint_path}: the config takes its backbone from the checkpoint "
                          f"(train.backbone_from_checkpoint), but the file records no ViT shape; pass a ViT "
                          f"pretraining checkpoint or a file converted by tools/convert_checkpoint.py")
    net, notes = dict(meta["net"]), []
    node = cfg.model.backbone
    old_patch = int(node.net.get("patch_size", 16))
    strides = [old_patch / f for f in node.scale_factors]
    patch = net["patch_size"]
    if pyramid_patch_size(patch) != patch:
        grid = net["pretrain_img_size"] // patch
        new_grid = max(1, round(grid * patch / pyramid_patch_size(patch)))
        net.update(patch_size=pyramid_patch_size(patch), pretrain_img_size=new_grid * pyramid_patch_size(patch))
        notes.append(f"patch embedding {patch}x{patch} -> {net['patch_size']}x{net['patch_size']} for the pyramid "
                     f"(resized on load by train.patch_embed_resize: bicubic by default, as the ViTDet authors for "
                     f"ViT-H/14); position grid {grid} -> {new_grid}")
    config_depth, depth = int(node.net.get("depth", net["depth"])), int(net["depth"])
    windows = list(node.net.get("window_block_indexes", []))
    node.net.update(net)
    if depth != config_depth:
        if windows:  # else every block is global, at any depth
            n_global = max(1, config_depth - len(windows))
            global_blocks = global_block_indexes(depth, n_global)
            windows = [i for i in range(depth) if i not in global_blocks]
            notes.append(f"depth {depth}, not the config's {config_depth}: global attention in blocks "
                         f"{global_blocks} ({n_global} evenly spaced, as ViTDet), window attention in the others")
        node.net.window_block_indexes = windows
    notes += fit_lr_decay(cfg, depth, int(net.get("reg_tokens") or 0))
    params = cfg.get("optimizer", {}).get("params")
    # AdamW's decay would pull these to 0 over a long schedule; the authors' fine-tuning exempts them.
    exempt = {"gamma": (net.get("init_values") is not None,
                        "LayerScale (gamma), as timm's and DINOv2's layer-decay fine-tuning"),
              "relative_position_bias_table": (bool(net.get("rel_pos_bias_grid")),
                                               "BEiT's relative position bias tables, as BEiT's fine-tuning")}
    for name, (applies, why) in exempt.items():
        if applies and hasattr(params, "get") and name not in (params.get("overrides") or {}):
            params.overrides = {**(params.get("overrides") or {}), name: {"weight_decay": 0.0}}
            notes.append(f"no weight decay on {why}")
    node.scale_factors = tuple(net["patch_size"] / s for s in strides)
    if "pixel_mean" in meta:
        cfg.model.update(pixel_mean=list(meta["pixel_mean"]), pixel_std=list(meta["pixel_std"]))
    notes.append(f"backbone from {checkpoint_path}: {meta.get('backbone')} with "
                 + ", ".join(f"{k}={v}" for k, v in net.items()) + f"; window attention in blocks {windows}; "
                 f"pyramid scales {node.scale_factors}; pixel mean {meta.get('pixel_mean')}")
    return notes


def global_block_indexes(depth: int, n_global: int = 4) -> List[int]:
    """ViTDet's global-attention blocks of a ViT ``depth`` blocks deep: ``n_global`` evenly spaced, the last block
    among them (B: 2, 5, 8, 11; L: 5, 11, 17, 23; H: 7, 15, 23, 31); every block when there are fewer."""
    n_global = min(n_global, depth)
    return [(k + 1) * depth // n_global - 1 for k in range(n_global)]


def fit_lr_decay(cfg, depth: int, reg_tokens: int = 0) -> List[str]:
    """Set a LazyConfig's layer-wise lr decay (``optimizer.params.lr_factor_func``, a ``partial`` of detectron2's
    ``get_vit_lr_decay_rate``) to ``depth`` blocks, its decay rate kept, and for a ViT with register tokens to
    ``vit_lr_decay_rate``; returns notes of what changed (none for a config without layer-wise decay)."""
    params = cfg.get("optimizer", {}).get("params", {})
    func = params.get("lr_factor_func") if hasattr(params, "get") else None
    if not isinstance(func, partial) or func.func not in (get_vit_lr_decay_rate, vit_lr_decay_rate):
        return []
    keywords, notes = dict(func.keywords), []
    if keywords.get("num_layers", 12) != depth:
        notes.append(f"layer-wise lr decay over {depth} blocks (the config's {keywords.get('num_layers', 12)}), at "
                     f"the config's rate {keywords.get('lr_decay_rate', 1.0)} (tuned for its depth); drop path the "
                     f"config's {cfg.model.backbone.net.get('drop_path_rate')}")
        keywords["num_layers"] = depth
    target = vit_lr_decay_rate if reg_tokens else func.func
    if target is not func.func:
        notes.append("register tokens' lr decayed as the position embedding's (vit_lr_decay_rate)")
    if notes:
        params.lr_factor_func = partial(target, *func.args, **keywords)
    return notes


def vit_lr_decay_rate(name: str, lr_decay_rate: float = 1.0, num_layers: int = 12) -> float:
    """detectron2's ``get_vit_lr_decay_rate`` with the register tokens (``backbone.net.reg_token``) in the
    embedding's layer, as DINOv2's and timm's layer-wise decay place them: detectron2's gives a name it does not
    know the heads' full lr, though registers are pretrained with the embedding."""
    if name.startswith("backbone") and name.endswith(".reg_token"):
        name = name[:-len("reg_token")] + "pos_embed"
    return get_vit_lr_decay_rate(name, lr_decay_rate, num_layers)


def last_level_max_pool(in_feature: str = "p5") -> LastLevelMaxPool:
    """detectron2's extra max-pooled level, on top of ``in_feature`` (its default, p5, suits strides 4-32)."""
    top_block = LastLevelMaxPool()
    top_block.in_feature = in_feature
    return top_block
