"""ResNet linear classifiers for the MoCo protocol, on torchvision's ResNets.

The state dict is torchvision's (``conv1``, ``layer1`` ... ``fc``), the layout of the
authors' ``main_lincls.py`` (behind DDP's ``module.``), so their linear-classification
checkpoints and torchvision's supervised ImageNet files evaluate here unchanged.
Pretrained backbones come as a ``pretrain.backbones.BackboneExport`` (``read_backbone``: any
pretraining method's ResNet checkpoint, the authors' or the project's, torchvision files).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torchvision

from pretrain.backbones import is_resnet_name, resnet_arch
from pretrain.checkpoint import CheckpointFormatError
from pretrain.errors import ConfigError
from transfer.convert import ConversionReport

from .vit import as_export, source_name

__all__ = ["build_resnet_classifier", "resnet_backbone_state", "load_resnet_backbone"]


def build_resnet_classifier(arch: str, num_classes: int, fc_init_std: float = 0.01) -> nn.Module:
    """torchvision ResNet with ``fc`` re-initialised: normal(0, fc_init_std) weight, zero bias."""
    if not is_resnet_name(arch) or not hasattr(torchvision.models, arch):
        raise ConfigError(f"unknown torchvision ResNet {arch!r} (e.g. resnet18, resnet50, resnet101)")
    model = getattr(torchvision.models, arch)(num_classes=num_classes)
    nn.init.normal_(model.fc.weight, mean=0.0, std=fc_init_std)
    nn.init.zeros_(model.fc.bias)
    return model


def resnet_backbone_state(source, allow_pickle: bool = False, variant: Optional[str] = None
                          ) -> Tuple[Dict[str, torch.Tensor], str, List[str]]:
    """(torchvision state dict without fc, the source's kind, dropped source keys) of a checkpoint (or an export)."""
    export = as_export(source, allow_pickle, variant)
    if export.family != "resnet":
        raise CheckpointFormatError(f"expected a ResNet checkpoint (MoCo, torchvision), found "
                                    f"{export.provenance.layout} ({export.arch})")
    return dict(export.state_dict), export.provenance.layout, list(export.dropped)


def load_resnet_backbone(model: nn.Module, source, allow_pickle: bool = False,
                         name: Optional[str] = None) -> ConversionReport:
    """Load a pretrained backbone into ``model``; ``fc`` stays as initialised (the only missing keys)."""
    name = name or source_name(source)
    try:
        sd, kind, dropped = resnet_backbone_state(source, allow_pickle)
    except CheckpointFormatError as e:
        raise (CheckpointFormatError(f"{name}: {e}") if name not in str(e) else e) from None
    target = model.state_dict()
    bad = [f"{k} (shape {tuple(v.shape)} != {tuple(target[k].shape)})"
           for k, v in sd.items() if k in target and v.shape != target[k].shape]
    if not bad:
        result = model.load_state_dict(sd, strict=False)
        bad = [f"{k} (missing)" for k in result.missing_keys if k not in ("fc.weight", "fc.bias")]
        bad += [f"{k} (unexpected)" for k in result.unexpected_keys]
    if bad:
        arch = _arch_or_unknown(sd)
        raise CheckpointFormatError(
            f"{name} ({kind}, a {arch}) does not fit the {type(model).__name__} classifier: {', '.join(bad[:12])}"
            + (f" (+{len(bad) - 12} more)" if len(bad) > 12 else "")
        )
    return ConversionReport(name, kind, "torchvision ResNet (fc re-initialised)", converted=len(sd), dropped=dropped,
                            missing_by_design=["fc.weight", "fc.bias"])


def _arch_or_unknown(sd) -> str:
    try:
        return resnet_arch(sd)
    except CheckpointFormatError:
        return "ResNet of unknown depth"
