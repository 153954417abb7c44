"""What differs between pretraining methods, behind one small interface.

The trainer (``pretrain.trainer``) owns the loop, data, precision, DDP,
checkpointing, resumption and logs; a method says how to build its model, its
views of an image, its optimizer, its loss, and its checkpoint layout (each in
the authors' format, so their files resume here and ours load in their code).
"""
from __future__ import annotations

from typing import Callable, Dict, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.optim import param_groups_weight_decay

from .checkpoint import unwrap_state_dict
from .transforms import mae_transform, moco_transform
from .mae import create_mae
from .moco import build_moco, moco_checkpoint


class PretrainMethod:
    def unpack(self, model: nn.Module, ckpt: Dict):
        model.load_state_dict(unwrap_state_dict(ckpt))


class MAEMethod(PretrainMethod):
    def build_model(self, cfg, world_size: int = 1) -> nn.Module:
        m = cfg.model
        return create_mae(
            m.arch, img_size=cfg.data.img_size, norm_pix_loss=m.norm_pix_loss,
            decoder_embed_dim=m.decoder_embed_dim, decoder_depth=m.decoder_depth,
            decoder_num_heads=m.decoder_num_heads,
        )

    def build_transform(self, cfg, device: torch.device) -> Callable:
        return mae_transform(cfg.data.img_size, cfg.data.crop_min_scale)

    def build_optimizer(self, model: nn.Module, cfg, lr: float) -> torch.optim.Optimizer:
        # No weight decay on biases and norms (1-d tensors), as the authors' code.
        groups = param_groups_weight_decay(model, cfg.optim.weight_decay)
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(cfg.optim.betas), fused=_fused_ok(model))

    def loss(self, model: nn.Module, batch, cfg) -> Tuple[torch.Tensor, Dict[str, float]]:
        imgs = batch[0]
        loss, _, _ = model(imgs, mask_ratio=cfg.model.mask_ratio)
        return loss, {}

    @staticmethod
    def checkpoint_name(epoch) -> str:
        return f"checkpoint-{epoch}.pth"

    def pack(self, model: nn.Module, cfg, epoch: int) -> Dict:
        """The authors' layout: ``model``, ``epoch`` (the last finished), ``optimizer``, ``scaler``."""
        return {"model": model.state_dict(), "epoch": epoch}

    @staticmethod
    def next_epoch(ckpt: Dict) -> int:
        return int(ckpt["epoch"]) + 1

    @torch.no_grad()
    def features(self, model: nn.Module, imgs: torch.Tensor) -> torch.Tensor:
        return model.forward_features(imgs)[:, 0]  # the cls token


class MoCoMethod(PretrainMethod):
    def build_model(self, cfg, world_size: int = 1) -> nn.Module:
        m = cfg.model
        global_batch = cfg.train.batch_size * world_size
        if m.queue_size % global_batch:
            raise ValueError(
                f"model.queue_size (K={m.queue_size}) must be a multiple of the global batch "
                f"train.batch_size x processes = {global_batch}"
            )
        # Shuffle BN across processes under DDP; split BN in a single process.
        splits = m.bn_splits if world_size == 1 else 1
        if splits > 1 and cfg.train.batch_size % splits:
            raise ValueError(f"train.batch_size={cfg.train.batch_size} must be a multiple of model.bn_splits={splits}")
        return build_moco(m.arch, dim=m.dim, K=m.queue_size, m=m.momentum, T=m.temperature, mlp=m.mlp,
                          bn_splits=splits)

    def build_transform(self, cfg, device: torch.device) -> Callable:
        # Colour jitter, grayscale and blur where they are cheapest: batched on a CUDA device, else in the
        # loader workers (beside the training step); the same parameters either way.
        return moco_transform(cfg.model.aug, cfg.data.img_size, cfg.data.crop_min_scale,
                              colour_on_device=device.type == "cuda")

    def build_optimizer(self, model: nn.Module, cfg, lr: float) -> torch.optim.Optimizer:
        # As the authors: weight decay on every parameter of the query encoder.
        params = [p for p in model.parameters() if p.requires_grad]
        return torch.optim.SGD(params, lr=lr, momentum=cfg.optim.momentum, weight_decay=cfg.optim.weight_decay,
                               fused=_fused_ok(model))

    def loss(self, model: nn.Module, batch, cfg) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        views = batch[0]  # [N, 2, C, H, W]
        logits, labels = model(views[:, 0], views[:, 1])
        loss = F.cross_entropy(logits, labels)
        acc = (logits.argmax(dim=1) == labels).float().mean().detach()  # instance discrimination top-1
        return loss, {"acc1": acc}

    @staticmethod
    def checkpoint_name(epoch) -> str:
        return f"checkpoint_{epoch:04d}.pth.tar" if isinstance(epoch, int) else f"checkpoint_{epoch}.pth.tar"

    def pack(self, model: nn.Module, cfg, epoch: int) -> Dict:
        """The authors' layout; their ``epoch`` is the next one to run."""
        return moco_checkpoint(model, cfg.model.arch, epoch + 1)

    @staticmethod
    def next_epoch(ckpt: Dict) -> int:
        return int(ckpt["epoch"])

    @torch.no_grad()
    def features(self, model: nn.Module, imgs: torch.Tensor) -> torch.Tensor:
        return resnet_features(model.encoder_q, imgs)


def _fused_ok(model: nn.Module) -> bool:
    # Fused kernels (one pass over all parameters) exist for CPU and CUDA; the
    # per-tensor loop costs ~1 s a step for ViT-B on a CPU.
    return next(model.parameters()).device.type in ("cpu", "cuda")


def resnet_features(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A torchvision ResNet's pooled features (the input of ``fc``)."""
    x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
    x = net.layer4(net.layer3(net.layer2(net.layer1(x))))
    return torch.flatten(net.avgpool(x), 1)


METHODS = {"mae": MAEMethod, "moco": MoCoMethod}
