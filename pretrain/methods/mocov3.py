"""MoCo v3 (Chen, Xie, He 2021, "An Empirical Study of Training Self-Supervised Vision Transformers").

The algorithm: two views of each image go through the base encoder (backbone + projector) and a
predictor, and through a momentum encoder (a moving average of the base encoder, no gradient); each
view's prediction must pick out the other view's momentum feature among the batch's
(``contrastive_loss``: in-batch negatives gathered across processes, InfoNCE at temperature T,
scaled by 2T), summed over both directions. No queue and no shuffle BN: batch norm in the MLPs
(synchronised across processes: SyncBN on GPUs, ``pretrain.sync_batchnorm``'s all-reduce batch norm on CPUs)
sees the whole batch.

``MoCoV3ViT`` / ``MoCoV3ResNet`` are built like the authors' ``MoCo_ViT`` / ``MoCo_ResNet``
(``moco/builder.py``): ``(base_encoder, dim=256, mlp_dim=4096, T=1.0)``, with their parameter names
(``base_encoder.*``, ``momentum_encoder.*``, ``predictor.*``) so that their checkpoints load strictly,
and ``forward(x1, x2, m)`` returning the loss. ``vit_small`` / ``vit_base`` are the authors' ViTs
(``vits.py``, 12 heads for both) on timm's ``VisionTransformer``: fixed 2D sin-cos positions,
their initialisation, and the frozen random patch projection (``stop_grad_conv1``) that stabilises
training.

The recipe (``MoCoV3Method``): momentum 0.99 -> 1 on a half cosine, per step (``on_step``); AdamW
(ViT, lr 1.5e-4 x batch / 256, wd 0.1, 40 warm-up epochs, T = 0.2) or LARS (ResNet, lr 0.6 (0.3 at
300+ epochs) x batch / 256, wd 1e-6, 10 warm-up epochs, T = 1); the BYOL-style asymmetric views (blur
1.0 / 0.1, solarize 0 / 0.2). Checkpoints in the authors' layout (``epoch`` = the next one, ``arch``,
``state_dict`` under DDP's ``module.``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial
from typing import Callable, Dict, List, Mapping, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from timm.models.vision_transformer import VisionTransformer

from ..backbones import BackboneExport, Provenance, ViTArch, is_resnet_name, resnet_export, vit_export
from ..config import DataConfig, OptimConfig, TrainConfig
from ..distributed import all_gather_tensor, get_rank
from ..lars import LARS
from ..sync_batchnorm import convert_sync_batchnorm
from ..transforms import ColourRecipe, TwoViews
from . import PretrainMethod, fused_ok, register_method, run_config, trained_on
from .moco import MoCoLayout, resnet_features

__all__ = ["MoCoV3", "MoCoV3ViT", "MoCoV3ResNet", "VisionTransformerMoCo", "VITS", "build_vit", "momentum_at",
           "MoCoV3PretrainConfig", "MoCoV3Method"]


# ------------------------------------------------------------------ model
def build_mlp(num_layers: int, input_dim: int, mlp_dim: int, output_dim: int, last_bn: bool = True) -> nn.Sequential:
    """Linear (no bias) -> BN -> ReLU between layers; a last BN without affine parameters (SimCLR's design)."""
    layers: List[nn.Module] = []
    for i in range(num_layers):
        dim_in = input_dim if i == 0 else mlp_dim
        dim_out = output_dim if i == num_layers - 1 else mlp_dim
        layers.append(nn.Linear(dim_in, dim_out, bias=False))
        if i < num_layers - 1:
            layers += [nn.BatchNorm1d(dim_out), nn.ReLU(inplace=True)]
        elif last_bn:
            layers.append(nn.BatchNorm1d(dim_out, affine=False))
    return nn.Sequential(*layers)


class MoCoV3(nn.Module):
    """Base and momentum encoders (``base_encoder(num_classes=mlp_dim)``, head replaced by the projector) and
    the predictor; the subclass says where the head is and how deep the MLPs are."""

    head: str  # the backbone's classifier attribute the projector replaces
    projector_layers: int
    predictor_last_bn: bool

    def __init__(self, base_encoder: Callable[..., nn.Module], dim: int = 256, mlp_dim: int = 4096, T: float = 1.0):
        super().__init__()
        self.T = T
        self.base_encoder = base_encoder(num_classes=mlp_dim)
        self.momentum_encoder = base_encoder(num_classes=mlp_dim)
        hidden = getattr(self.base_encoder, self.head).weight.shape[1]
        for encoder in (self.base_encoder, self.momentum_encoder):
            setattr(encoder, self.head, build_mlp(self.projector_layers, hidden, mlp_dim, dim))
        self.predictor = build_mlp(2, dim, mlp_dim, dim, last_bn=self.predictor_last_bn)
        for p_b, p_m in zip(self.base_encoder.parameters(), self.momentum_encoder.parameters()):
            p_m.data.copy_(p_b.data)  # the momentum encoder starts as the base encoder
            p_m.requires_grad = False

    @torch.no_grad()
    def update_momentum_encoder(self, m: float):
        """theta_m <- m * theta_m + (1 - m) * theta_b, as two fused foreach ops."""
        momentum = [p.data for p in self.momentum_encoder.parameters()]
        torch._foreach_mul_(momentum, m)
        torch._foreach_add_(momentum, [p.data for p in self.base_encoder.parameters()], alpha=1.0 - m)

    def contrastive_loss(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """InfoNCE of each query against every process's keys (the positive: its own view's), times 2T."""
        # fp32 logits: under bf16 autocast the product would round the cosines to 8 bits before / T.
        with torch.autocast(q.device.type, enabled=False):
            q = F.normalize(q.float(), dim=1)
            k = all_gather_tensor(F.normalize(k.float(), dim=1))
            logits = q @ k.T / self.T
            labels = torch.arange(q.shape[0], device=q.device) + q.shape[0] * get_rank()
            return F.cross_entropy(logits, labels) * (2 * self.T)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor, m: float) -> torch.Tensor:
        q1 = self.predictor(self.base_encoder(x1))
        q2 = self.predictor(self.base_encoder(x2))
        with torch.no_grad():
            self.update_momentum_encoder(m)
            k1 = self.momentum_encoder(x1)
            k2 = self.momentum_encoder(x2)
        return self.contrastive_loss(q1, k2) + self.contrastive_loss(q2, k1)


class MoCoV3ResNet(MoCoV3):
    head, projector_layers, predictor_last_bn = "fc", 2, False


class MoCoV3ViT(MoCoV3):
    head, projector_layers, predictor_last_bn = "head", 3, True


class VisionTransformerMoCo(VisionTransformer):
    """timm's ViT as the authors' ``vits.VisionTransformerMoCo``: fixed 2D sin-cos position table (class row
    zero), xavier-uniform weights (q, k, v as three matrices), zero biases, class token N(0, 1e-6), patch
    projection xavier-uniform over its flattened kernel; ``stop_grad_conv1`` freezes that projection."""

    def __init__(self, stop_grad_conv1: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.pos_embed = nn.Parameter(sincos_table(self.patch_embed.grid_size, self.embed_dim), requires_grad=False)
        for name, m in self.named_modules():
            if isinstance(m, nn.Linear):
                if "qkv" in name:
                    bound = math.sqrt(6.0 / float(m.weight.shape[0] // 3 + m.weight.shape[1]))
                    nn.init.uniform_(m.weight, -bound, bound)
                else:
                    nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.cls_token, std=1e-6)
        proj = self.patch_embed.proj
        bound = math.sqrt(6.0 / float(proj.in_channels * proj.kernel_size[0] * proj.kernel_size[1] + self.embed_dim))
        nn.init.uniform_(proj.weight, -bound, bound)
        nn.init.zeros_(proj.bias)
        if stop_grad_conv1:
            proj.weight.requires_grad = False
            proj.bias.requires_grad = False


def sincos_table(grid, embed_dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """[1, 1 + H*W, D]: a zero class row, then per patch (raster order) [sin, cos] of its row index and
    [sin, cos] of its column index times 1 / temperature^(k / (D/4)). On a square grid this is the authors'
    table (their ``torch.meshgrid(grid_w, grid_h)``, 'ij' indexing, makes the first half the row's); on a
    non-square one theirs mixes the two, and this one keeps rows and columns apart."""
    h, w = grid
    if embed_dim % 4:
        raise ValueError(f"the 2D sin-cos position table needs embed_dim divisible by 4, got {embed_dim}")
    omega = 1.0 / temperature ** (torch.arange(embed_dim // 4, dtype=torch.float32) / (embed_dim // 4))
    rows, cols = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                                indexing="ij")
    out_r, out_c = rows.flatten()[:, None] * omega, cols.flatten()[:, None] * omega
    table = torch.cat([out_r.sin(), out_r.cos(), out_c.sin(), out_c.cos()], dim=1)
    return torch.cat([torch.zeros(1, embed_dim), table])[None]


# The authors' ViTs (vits.py: 12 heads for ViT-S too), and a CPU-sized one for tests and demos.
VITS: Dict[str, ViTArch] = {
    "vit_small": ViTArch(16, 384, 12, 12),
    "vit_base": ViTArch(16, 768, 12, 12),
    "vit_pico": ViTArch(8, 96, 4, 3),
}


def build_vit(arch: str, img_size: int = 224, stop_grad_conv1: bool = False, **kwargs) -> VisionTransformerMoCo:
    a = VITS[arch]
    return VisionTransformerMoCo(stop_grad_conv1=stop_grad_conv1, img_size=img_size, patch_size=a.patch_size,
                                 embed_dim=a.embed_dim, depth=a.depth, num_heads=a.num_heads, mlp_ratio=a.mlp_ratio,
                                 qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=1e-6), **kwargs)


def momentum_at(epoch: float, epochs: int, base: float = 0.99) -> float:
    """The momentum's half-cosine from ``base`` (epoch 0) to 1 (the end), at fractional ``epoch``."""
    return 1.0 - 0.5 * (1.0 + math.cos(math.pi * epoch / epochs)) * (1.0 - base)


# ------------------------------------------------------------------ views
# BYOL's asymmetric pair (Grill et al. 2020), as the authors' main_moco.py: jitter not strengthened.
BYOL_VIEWS = (ColourRecipe((0.4, 0.4, 0.2, 0.1), 0.8, blur_p=1.0),
              ColourRecipe((0.4, 0.4, 0.2, 0.1), 0.8, blur_p=0.1, solarize_p=0.2))


# ------------------------------------------------------------------ method
@dataclass
class MoCoV3ModelConfig:
    arch: str = "vit_base"  # vit_small | vit_base | vit_pico (CPU) | a torchvision ResNet (resnet50)
    dim: int = 256
    mlp_dim: int = 4096
    temperature: float = 0.2  # T: 0.2 for ViTs, 1.0 for ResNets (the authors' recipes)
    momentum: float = 0.99  # m at the start of the cosine schedule
    momentum_cos: bool = True  # m -> 1 on a half cosine, per step
    stop_grad_conv1: bool = True  # ViT: frozen random patch projection
    grad_checkpointing: bool = False  # ViT: activation checkpointing of the base encoder's blocks (timm's)


def _mocov3_optim() -> OptimConfig:
    return OptimConfig(name="adamw", base_lr=1.5e-4, weight_decay=0.1, betas=[0.9, 0.999], schedule="cosine",
                       warmup_epochs=40.0)


@dataclass
class MoCoV3PretrainConfig:
    method: str = "mocov3"
    model: MoCoV3ModelConfig = field(default_factory=MoCoV3ModelConfig)
    data: DataConfig = field(default_factory=lambda: DataConfig(crop_min_scale=0.08))
    optim: OptimConfig = field(default_factory=_mocov3_optim)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=300, batch_size=128))


@register_method
class MoCoV3Method(MoCoLayout, PretrainMethod):
    name = "mocov3"
    config_schema = MoCoV3PretrainConfig
    encoder_prefix = "base_encoder."
    momentum: Optional[float] = None  # this step's, set by on_step

    def validate(self, cfg, fail):
        arch = cfg.model.arch
        if arch not in VITS and not (is_resnet_name(arch) and hasattr(torchvision.models, arch)):
            fail(f"model.arch must be one of {sorted(VITS)} or a torchvision ResNet (resnet50), got {arch!r}")
        if cfg.optim.name not in ("adamw", "lars"):
            fail(f"optim.name must be adamw (the ViT recipe) or lars (the ResNet recipe), got {cfg.optim.name!r}")
        if cfg.model.grad_checkpointing and arch not in VITS:
            fail(f"model.grad_checkpointing is for the ViTs ({sorted(VITS)}), got model.arch={arch!r}")

    def label(self, cfg) -> str:
        return "moco_v3"

    def build_model(self, cfg, world_size: int = 1) -> nn.Module:
        m = cfg.model
        if m.arch in VITS:
            model = MoCoV3ViT(partial(build_vit, m.arch, img_size=cfg.data.img_size,
                                      stop_grad_conv1=m.stop_grad_conv1), m.dim, m.mlp_dim, m.temperature)
            # The momentum encoder runs without gradients: it keeps no activations to checkpoint.
            model.base_encoder.set_grad_checkpointing(m.grad_checkpointing)
        else:
            model = MoCoV3ResNet(partial(getattr(torchvision.models, m.arch), zero_init_residual=True),
                                 m.dim, m.mlp_dim, m.temperature)
        if world_size == 1:
            return model
        # Every batch norm over the global batch, as the authors' SyncBN; on CPUs (torchrun with gloo), where
        # torch's SyncBatchNorm cannot run, an all-reduce batch norm with the same statistics and gradients.
        device = cfg.train.device
        on_gpu = device == "cuda" or (device == "auto" and torch.cuda.is_available())  # as init_distributed
        return convert_sync_batchnorm(model, on_gpu)

    def build_transform(self, cfg, device: torch.device) -> Callable:
        return TwoViews(BYOL_VIEWS, cfg.data.img_size, cfg.data.crop_min_scale, colour_on_device=device.type == "cuda")

    def build_optimizer(self, model: nn.Module, cfg, lr: float) -> torch.optim.Optimizer:
        # As the authors: every parameter, weight decay on all of them (LARS exempts 1-d ones itself).
        params = [p for p in model.parameters() if p.requires_grad]
        o = cfg.optim
        if o.name == "lars":
            return LARS(params, lr=lr, weight_decay=o.weight_decay, momentum=o.momentum)
        return torch.optim.AdamW(params, lr=lr, betas=tuple(o.betas), weight_decay=o.weight_decay, fused=fused_ok(model))

    def on_step(self, model, cfg, epoch: float) -> Dict[str, float]:
        m = cfg.model
        self.momentum = momentum_at(epoch, cfg.train.epochs, m.momentum) if m.momentum_cos else m.momentum
        return {"moco_m": self.momentum}

    def loss(self, model: nn.Module, batch, cfg):
        if self.momentum is None:
            raise RuntimeError("MoCoV3Method.on_step sets the momentum before the first step")
        views = batch[0]  # [N, 2, C, H, W]
        return model(views[:, 0], views[:, 1], self.momentum), {}

    @torch.no_grad()
    def features(self, model: nn.Module, imgs: torch.Tensor) -> torch.Tensor:
        net = model.base_encoder
        if isinstance(net, VisionTransformer):
            return net.forward_features(imgs)[:, 0]  # the cls token (what the projector reads)
        return resnet_features(net, imgs)

    def export(self, ckpt: Mapping, source: str = "<dict>") -> BackboneExport:
        """The base encoder without its projector: a ViT under timm names (the heads from the architecture the
        file names: the authors' ViTs all have 12) or a ResNet under torchvision names."""
        encoder, dropped = self.encoder(ckpt)
        cfg, epoch = run_config(ckpt), ckpt.get("epoch")
        arch, data, layout = ckpt.get("arch"), None, "the MoCo v3 authors' checkpoint"
        if cfg is not None:
            arch, data, layout = cfg.model.arch, trained_on(cfg), "the project's MoCo v3 checkpoint"
        provenance = Provenance("moco_v3", self.name, self.epochs_done(ckpt) if isinstance(epoch, int) else None, data,
                                source, layout)
        if "patch_embed.proj.weight" in encoder:
            heads = VITS[arch].num_heads if arch in VITS else 12
            return vit_export(encoder, provenance, num_heads=heads, dropped=dropped, prefix="base_encoder.")
        return resnet_export(encoder, provenance, dropped=dropped, prefix="base_encoder.")
