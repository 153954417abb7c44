"""MoCo / torchvision ResNets as mmseg encoders: mmseg's own ``ResNet``, loading the project's checkpoints.

mmseg's ``ResNet`` with ``style='pytorch'`` and no deep stem is torchvision's
architecture (7x7 stem, stride on the 3x3 conv) under torchvision's parameter
names, so MoCo and supervised torchvision weights load by name: their backbone
export (``pretrain.backbones.read_backbone``) is in torchvision's names. This
differs from mmseg's UperNet recipe, which uses ``ResNetV1c`` (three-conv deep
stem) and its own ImageNet weights: self-supervised ResNets are torchvision
ResNets.

``ResNetEncoder`` is that ``ResNet``; a ``Pretrained`` init_cfg is read through
``resnet_to_mmseg`` (the authors' MoCo ``.pth.tar``, the project's MoCo
checkpoints, torchvision state dicts, converted files) and must match exactly:
every tensor of the backbone comes from the checkpoint, a mismatch raises.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
from mmengine.logging import print_log
from mmseg.models.backbones import ResNet
from mmseg.registry import MODELS

from pretrain.backbones import read_backbone, resnet_arch
from pretrain.checkpoint import CheckpointFormatError, describe_state_dict, strip_prefix, unwrap_state_dict
from transfer.convert import ConversionReport, compare_keys
from transfer.segmentation.checkpoint import load_checkpoint_file

__all__ = ["ResNetEncoder", "resnet_to_mmseg", "resnet_backbone", "resnet_depth"]

_DEPTHS = {"resnet18": 18, "resnet34": 34, "resnet50": 50, "resnet101": 101, "resnet152": 152}


def resnet_depth(state_dict: Dict[str, torch.Tensor]) -> int:
    """mmseg ``ResNet`` depth of a torchvision-named state dict."""
    arch = resnet_arch(state_dict)
    if arch not in _DEPTHS:
        raise CheckpointFormatError(f"mmseg's ResNet has no counterpart of {arch} (no width multiplier)")
    return _DEPTHS[arch]


def _segmentor_backbone(sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The backbone of a trained mmseg segmentor's state dict; any other state dict as it is. A segmentor has its
    decode head beside the backbone: Barlow Twins' and VICReg's training checkpoints have a ``backbone.`` ResNet
    too (beside their projector), and are their formats' to read."""
    if any(k.startswith("backbone.layer1.") for k in sd) and any(k.startswith("decode_head.") for k in sd):
        return strip_prefix({k: v for k, v in sd.items() if k.startswith("backbone.")}, "backbone.")
    return sd


def _resnet_export(checkpoint, source: str, variant: Optional[str] = None
                   ) -> Tuple[Dict[str, torch.Tensor], List[str], str, List[str]]:
    """(torchvision-named ResNet, dropped keys, what the file is, notes) of any checkpoint ``read_backbone`` reads
    (``variant``: the network of one holding several), or of a trained mmseg segmentor (its backbone)."""
    try:
        full = unwrap_state_dict(checkpoint)
    except CheckpointFormatError:  # no tensors at its top (DINO's teacher / student): a format of read_backbone's
        full = {}
    segmentor = _segmentor_backbone(full)
    if segmentor is not full:
        dropped = sorted(k for k in full if not k.startswith("backbone.")) + [k for k in segmentor if k.startswith("fc.")]
        return ({k: v for k, v in segmentor.items() if not k.startswith("fc.")}, dropped,
                describe_state_dict(segmentor, verbose=True) + " (the backbone of an mmseg segmentor)", [])
    export = read_backbone(checkpoint, path=source, variant=variant)
    if export.family != "resnet":
        raise CheckpointFormatError(f"{source}: expected a ResNet checkpoint (MoCo, torchvision), found "
                                    f"{export.provenance.layout} ({export.arch})")
    return export.state_dict, export.dropped, export.provenance.layout, export.notes


def resnet_backbone(checkpoint, source: str = "<dict>") -> Dict[str, torch.Tensor]:
    """The ResNet of a checkpoint (any ``read_backbone`` reads, or a trained mmseg segmentor's), under
    torchvision names."""
    return _resnet_export(checkpoint, source)[0]


def resnet_to_mmseg(checkpoint, target: Dict[str, torch.Tensor], source: str = "<dict>",
                    target_name: str = "mmseg ResNet", variant: Optional[str] = None
                    ) -> Tuple[Dict[str, torch.Tensor], ConversionReport]:
    """A ResNet checkpoint (MoCo, torchvision, ...) as mmseg ``ResNet`` weights, with a report.

    The names are torchvision's on both sides; what is left out is the
    classifier / projection head, the key encoder and the queue (or, from a
    trained mmseg segmentor, the neck and heads).
    """
    sd, dropped, kind, notes = _resnet_export(checkpoint, source, variant)
    design, bad = compare_keys(sd, target, lambda k: False)
    report = ConversionReport(source, kind, target_name, converted=len(sd),
                              dropped=dropped, missing_by_design=design, mismatched=bad, notes=notes)
    return sd, report


@MODELS.register_module()
class ResNetEncoder(ResNet):
    """mmseg's ``ResNet`` (torchvision stem by default) that loads MoCo / torchvision checkpoints.

    ``init_cfg=dict(type='Pretrained', checkpoint=PATH)`` loads PATH at
    ``init_weights``; without it the backbone is initialised as mmseg's.
    """

    def __init__(self, depth: int = 50, variant: Optional[str] = None, **kwargs):
        kwargs.setdefault("style", "pytorch")
        super().__init__(depth=depth, **kwargs)
        self.variant = variant  # the network of a checkpoint holding several (DINO's student)

    @staticmethod
    def weights_layout(backbone_cfg) -> str:
        """``torchvision`` (7x7 stem, the layout of MoCo and torchvision files) or ``resnet_v1c`` (deep stem):
        what the report compares with the published baselines' weights (``transfer.published.WEIGHTS``)."""
        return "resnet_v1c" if backbone_cfg.get("deep_stem") else "torchvision"

    def init_weights(self):
        cfg = self.init_cfg
        if isinstance(cfg, dict) and cfg.get("type") == "Pretrained":
            self.load_pretrained(cfg["checkpoint"])  # every tensor comes from the checkpoint
        else:
            super().init_weights()

    def load_pretrained(self, path, allow_pickle: bool = False) -> ConversionReport:
        """Load a checkpoint file (any layout ``resnet_to_mmseg`` reads); raises on a mismatch."""
        checkpoint = load_checkpoint_file(path, allow_pickle=allow_pickle)
        sd, report = resnet_to_mmseg(checkpoint, self.state_dict(), source=str(path),
                                     target_name=f"{type(self).__name__} (depth {self.depth})", variant=self.variant)
        print_log(report.format(), logger="current")
        if not report.ok:
            raise CheckpointFormatError(f"{path} does not fit {type(self).__name__}: {report.mismatched[:8]}")
        self.load_state_dict(sd, strict=True)
        return report
