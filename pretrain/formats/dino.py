"""DINO (Caron et al. 2021, github.com/facebookresearch/dino): ViT-S/16, B/16, S/8, B/8 and ResNet-50.

Two kinds of release:

* backbone-only files (``dino_deitsmall16_pretrain.pth``, ``dino_vitbase8_pretrain.pth``,
  ``dino_resnet50_pretrain.pth``): the teacher's backbone as a bare state dict, a ViT under timm's names
  (DINO's ViT is timm's: qkv bias, LayerNorm eps 1e-6, class token and its position row) or a
  torchvision ResNet without ``fc``. Nothing in the tensors tells them from any timm ViT, so the
  file's name does (``dino_*``; else they read as a plain timm encoder, label ``unknown``);
* full training checkpoints (``*_full_checkpoint.pth``, ``checkpoint.pth``): ``{'student': ...,
  'teacher': ..., 'optimizer', 'epoch', 'args', 'dino_loss', 'fp16_scaler'}``, each network a
  ``MultiCropWrapper``: ``backbone.*`` and the projection ``head.*`` (``module.`` before both where
  the network was wrapped in DDP: the student always, the teacher of a ResNet).

The teacher is read by default (the paper evaluates it), the student with ``variant="student"``;
the heads, the other network and the loss's center are listed as dropped.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple

import torch

from ..backbones import BackboneExport, Provenance, resnet_export, vit_export
from ..checkpoint import CheckpointFormatError, describe_state_dict
from . import CheckpointFormat, file_tensors, register_format, take_network, training_state_note

__all__ = ["DINOFormat", "SelfDistillationFormat"]


class SelfDistillationFormat(CheckpointFormat):
    """DINO's layout, which iBOT keeps: a teacher and a student, each ``backbone`` + ``head``."""

    variants = ("teacher", "student")
    title: str  # the family in messages

    @staticmethod
    def full_checkpoint(ckpt: Mapping) -> bool:
        teacher, student = ckpt.get("teacher"), ckpt.get("student")
        return isinstance(teacher, Mapping) and isinstance(student, Mapping) \
            and any(k.startswith(("backbone.", "module.backbone.")) for k in teacher)

    def to_timm(self, backbone: Dict[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], List[str], List[str]]:
        """(the backbone under timm's names, its keys dropped by design, notes): DINO's are timm's already."""
        return backbone, [], []

    def export(self, ckpt: Mapping, source: str = "<dict>", variant: Optional[str] = None) -> BackboneExport:
        tensors = file_tensors(ckpt)
        if self.full_checkpoint(ckpt):
            variant = self.pick_variant(variant, source)
            backbone, dropped, prefix = take_network(
                tensors, (f"{variant}.module.backbone.", f"{variant}.backbone."), source)
            layout, epochs = f"a {self.title} training checkpoint ({variant})", ckpt.get("epoch")
            notes = training_state_note(ckpt)
        else:  # a released backbone: one network
            self.pick_variant(variant, source, held=())
            backbone, dropped, prefix = take_network(
                tensors, ("state_dict.module.backbone.", "state_dict.backbone.", "state_dict.module.", "state_dict.",
                          "module.backbone.", "backbone.", "module.", ""), source)
            layout, epochs, notes = f"a {self.title} backbone", None, []
        backbone, inner_dropped, adapted = self.to_timm(backbone)
        dropped += [prefix + k for k in inner_dropped]
        provenance = Provenance(self.name, epochs=epochs if isinstance(epochs, int) else None, layout=layout)
        kind = describe_state_dict(backbone)
        if kind == "vit":
            export = vit_export(backbone, provenance, dropped=dropped, prefix=prefix)
        elif kind == "resnet":
            export = resnet_export(backbone, provenance, dropped=dropped, prefix=prefix)
        else:
            raise CheckpointFormatError(f"{source}: {layout} of no supported architecture (a ViT or a ResNet): "
                                        f"found {describe_state_dict(backbone, verbose=True)}")
        export.notes += notes + adapted
        return export


@register_format
class DINOFormat(SelfDistillationFormat):
    name = "dino"
    title = "DINO"

    @classmethod
    def claims(cls, ckpt: Mapping, source: str = "") -> bool:
        if cls.full_checkpoint(ckpt):  # iBOT's add a patch head and a mask embedding (pretrain.formats.ibot)
            return "ibot_loss" not in ckpt and not any(
                "masked_embed" in k or "last_layer2" in k or "mask_token" in k for k in ckpt["teacher"])
        if not Path(source).name.lower().startswith("dino_"):  # dinov2_* files start "dinov2"
            return False
        keys = file_tensors(ckpt)  # a backbone: no classifier (a file with one is a fine-tuned model)
        return any(k.endswith(("blocks.0.attn.qkv.weight", "layer1.0.conv1.weight")) for k in keys) \
            and not any("mask_token" in k or "masked_embed" in k or k.endswith(("head.weight", "fc.weight"))
                        for k in keys)
