"""What differs between the classification protocols, behind one small interface.

The engine (``transfer.classification.engine``) owns data, the loop, precision,
DDP, checkpoints, resumption, evaluation and the results file; a protocol says
which model it trains, how pretrained weights enter it, which parameters learn
(and with which optimizer groups), and which parts must stay frozen.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn

from pretrain.backbones import BackboneExport, read_backbone
from pretrain.checkpoint import CheckpointFormatError
from pretrain.errors import ConfigError
from transfer.convert import ConversionReport

from pretrain.lars import LARS
from .resnet import build_resnet_classifier, load_resnet_backbone, resnet_backbone_state
from .vit import (build_beit_classifier, build_vit_classifier, load_vit_backbone, param_groups_layer_decay, vit_arch,
                  vit_backbone_state)

__all__ = ["PROTOCOLS", "Protocol", "protocol", "build_optimizer"]


class Protocol:
    """``pretrained`` arguments are the pretrained backbone as ``pretrain.backbones.read_backbone``
    returns it (read once by the engine); ``cfg.model.checkpoint`` names its file."""

    name: str
    task: str  # transfer.results task
    linear: bool  # frozen backbone, only the head learns
    head: str  # the trainable module's attribute name in the linear protocols
    family: str  # the backbone it trains: "vit" | "resnet" (pretrain.backbones.BackboneExport.family)

    def check_pretrained(self, cfg, pretrained: BackboneExport) -> None:
        """A CheckpointFormatError when ``pretrained`` is not a backbone this protocol trains (before the run
        builds its model or writes a file)."""
        if pretrained.family != self.family:
            wanted = {"vit": "a ViT (MAE, MoCo v3 ViT, DeiT)", "resnet": "a ResNet (MoCo, torchvision)"}[self.family]
            raise CheckpointFormatError(f"{cfg.model.checkpoint} holds a {pretrained.arch}; {self.name} trains "
                                        f"{wanted}: give such a checkpoint, or another protocol (--protocol)")

    def build_model(self, cfg, num_classes: int, pretrained: Optional[BackboneExport] = None
                    ) -> Tuple[nn.Module, str]:
        """(model with a fresh head, backbone name for results); ``model.arch=auto`` builds ``pretrained``'s."""
        raise NotImplementedError

    def load_pretrained(self, model: nn.Module, cfg, pretrained: BackboneExport) -> ConversionReport:
        raise NotImplementedError

    def backbone_state(self, model: nn.Module, cfg) -> Dict[str, torch.Tensor]:
        """The pretrained backbone tensors exactly as loaded into ``model``, re-read from
        ``cfg.model.checkpoint`` (the frozen check compares against the file, as the authors)."""
        raise NotImplementedError

    def param_groups(self, model: nn.Module, cfg) -> List[Dict]:
        if not self.linear:
            return [{"params": [p for p in model.parameters() if p.requires_grad]}]
        return [{"params": list(getattr(model, self.head).parameters())}]

    def freeze(self, model: nn.Module, cfg):
        """Linear protocols: only the head keeps ``requires_grad``."""
        if not self.linear:
            return
        for name, p in model.named_parameters():
            p.requires_grad = name.startswith(f"{self.head}.")

    def set_train_mode(self, model: nn.Module):
        """Train mode, except the frozen backbone of the linear protocols: in eval mode its
        batch-norm statistics (and any dropout) stay as pretrained, as the MoCo authors do."""
        model.train()
        if self.linear:
            for name, child in model.named_children():
                if name != self.head:
                    child.eval()

    def frozen_keys(self, model: nn.Module) -> List[str]:
        return [k for k in model.state_dict() if not k.startswith(f"{self.head}.")] if self.linear else []

    def frozen(self, model: nn.Module) -> bool:
        """Whether part of the backbone stays as pretrained (the run then checks it did)."""
        return self.linear


class MAELinear(Protocol):
    name, task, linear, head = "mae_linear", "imagenet_linear", True, "head"
    family = "vit"
    bn_head = True

    def build_model(self, cfg, num_classes, pretrained=None):
        pretrained = _pretrained(cfg, pretrained)
        arch = vit_arch(cfg.model.arch, pretrained)
        m = cfg.model
        common = dict(global_pool=m.global_pool, drop_path=m.drop_path, bn_head=self.bn_head,
                      head_init_std=m.head_init_std, grad_checkpointing=m.grad_checkpointing)
        if pretrained is not None and pretrained.shape.get("beit"):  # BEiT v1 / v2, data2vec: timm's Beit
            return build_beit_classifier(pretrained.shape, num_classes, cfg.data.img_size, **common), arch["name"]
        # The pretrained ViT's options (LayerScale, registers, ...): the network it was trained as.
        options = pretrained.vit_kwargs() if pretrained is not None and pretrained.family == "vit" else None
        return build_vit_classifier(arch, num_classes, cfg.data.img_size, options=options, **common), arch["name"]

    def load_pretrained(self, model, cfg, pretrained):
        return load_vit_backbone(model, pretrained, name=cfg.model.checkpoint)

    def backbone_state(self, model, cfg):
        return vit_backbone_state(model, cfg.model.checkpoint, cfg.model.allow_pickle, cfg.model.variant)[0]


class MAEFinetune(MAELinear):
    """End-to-end fine-tuning; with ``model.tune_blocks = N``, MAE's partial fine-tuning (the paper's
    Figure 9): the last N blocks, the final norm and the head learn, the rest stays as pretrained
    (N = 0: the head and the final norm only)."""
    name, task, linear, head = "mae_finetune", "imagenet_finetune", False, "head"
    bn_head = False

    def param_groups(self, model, cfg):
        return param_groups_layer_decay(model, cfg.optim.weight_decay, cfg.model.layer_decay)

    @staticmethod
    def tuned_prefixes(model: nn.Module, tune_blocks: int) -> Tuple[str, ...]:
        depth = len(model.blocks)
        if tune_blocks > depth:
            raise ConfigError(f"model.tune_blocks={tune_blocks}, but the ViT has {depth} blocks: give 0 to {depth}")
        return tuple(f"blocks.{i}." for i in range(depth - tune_blocks, depth)) + ("norm.", "fc_norm.", "head.")

    def freeze(self, model, cfg):
        if cfg.model.tune_blocks is None:
            return
        tuned = self.tuned_prefixes(model, cfg.model.tune_blocks)
        for name, p in model.named_parameters():
            p.requires_grad = name.startswith(tuned)

    def frozen(self, model):  # the model says: its parameters that do not learn
        return not all(p.requires_grad for p in model.parameters())

    def frozen_keys(self, model):
        return [k for k, p in model.named_parameters() if not p.requires_grad]

    def set_train_mode(self, model):
        """The frozen blocks in eval mode (no drop path through what stays as pretrained)."""
        model.train()
        for module in (model.patch_embed, *model.blocks):
            if not any(p.requires_grad for p in module.parameters()):
                module.eval()


class MoCoLinear(Protocol):
    name, task, linear, head = "moco_linear", "imagenet_linear", True, "fc"
    family = "resnet"

    def build_model(self, cfg, num_classes, pretrained=None):
        arch = cfg.model.arch
        if arch == "auto":
            pretrained = _pretrained(cfg, pretrained)
            if pretrained.family != "resnet":
                raise CheckpointFormatError(f"{cfg.model.checkpoint} holds a {pretrained.arch}; moco_linear trains "
                                            f"a ResNet: give a ResNet checkpoint (MoCo, torchvision)")
            arch = pretrained.arch
        return build_resnet_classifier(arch, num_classes, cfg.model.head_init_std), arch

    def load_pretrained(self, model, cfg, pretrained):
        return load_resnet_backbone(model, pretrained, name=cfg.model.checkpoint)

    def backbone_state(self, model, cfg):
        return resnet_backbone_state(cfg.model.checkpoint, cfg.model.allow_pickle, cfg.model.variant)[0]

    def param_groups(self, model, cfg):
        groups = super().param_groups(model, cfg)
        assert len(groups[0]["params"]) == 2, "MoCo linear classification trains fc.weight and fc.bias only"
        return groups


PROTOCOLS = {p.name: p for p in (MAELinear, MAEFinetune, MoCoLinear)}


def build_optimizer(groups: List[Dict], o, lr: float) -> torch.optim.Optimizer:
    """LARS / SGD / AdamW over ``groups`` (a group's own ``weight_decay`` wins over the config's)."""
    if o.name == "lars":
        return LARS(groups, lr=lr, weight_decay=o.weight_decay, momentum=o.momentum)
    if o.name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=o.momentum, weight_decay=o.weight_decay)
    if o.name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(o.betas), weight_decay=o.weight_decay)
    raise ValueError(f"unknown optimizer {o.name!r}; expected lars, sgd or adamw")


def _pretrained(cfg, pretrained: Optional[BackboneExport]) -> Optional[BackboneExport]:
    """The pretrained backbone, read from ``model.checkpoint`` when the engine has not (``model.arch=auto``
    needs one)."""
    if pretrained is None and cfg.model.checkpoint:
        pretrained = read_backbone(cfg.model.checkpoint, cfg.model.allow_pickle, variant=cfg.model.variant)
    if pretrained is None and cfg.model.arch == "auto":
        raise ConfigError("model.arch=auto reads the architecture off model.checkpoint: set one of them")
    return pretrained


def protocol(name: str) -> Protocol:
    if name not in PROTOCOLS:
        raise ConfigError(f"unknown protocol {name!r}; expected one of {sorted(PROTOCOLS)}")
    return PROTOCOLS[name]()
