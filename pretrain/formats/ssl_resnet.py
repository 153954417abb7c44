"""The self-supervised ResNet-50s the field compares against: SwAV, Barlow Twins, VICReg, SimCLR v1
(converted from TensorFlow) and BYOL (converted from JAX). Each is a torchvision ResNet-50 under a
prefix, beside its pretraining heads; the export is the ResNet, the heads (and any other tensor)
listed as dropped.

* SwAV (github.com/facebookresearch/swav): ``swav_800ep_pretrain.pth.tar`` is the DDP model's state
  dict (``module.*``), the training ``checkpoint.pth.tar`` the same under ``state_dict``; heads
  ``projection_head.*`` and ``prototypes.*`` (also DeepCluster-v2's and SeLa-v2's layout).
* Barlow Twins (github.com/facebookresearch/barlowtwins) and VICReg (github.com/facebookresearch/vicreg):
  full checkpoints ``{'epoch', 'model': {'module.backbone.*', 'module.projector.*'}, 'optimizer'}``,
  Barlow Twins' with its affine-free ``module.bn`` of the embeddings (which tells the two apart).
* SimCLR v1, converted by github.com/tonylins/simclr-converter (``resnet50-1x.pth``):
  ``{'state_dict': torchvision names}``, ``fc`` the linear classifier trained on labels. Trained on
  pixels in [0, 1] without normalisation: the export's mean is 0 and std 1.
* BYOL, converted from the authors' JAX files to torchvision names (e.g. ``pretrain_res50x1.pth.tar``),
  with ``fc`` / ``projector`` / ``predictor`` heads when the converter kept them.

The backbone-only releases (Barlow Twins' and VICReg's ``resnet50.pth``, the converted SimCLR and BYOL
files) are a torchvision ResNet and nothing else: only the file name tells their family (it must
contain ``swav``, ``barlow``, ``vicreg``, ``simclr`` or ``byol``); any other name reads as a plain
torchvision ResNet (label ``unknown``).
"""
from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Dict, Mapping, Optional

import torch

from ..backbones import NO_NORMALIZATION, BackboneExport, Provenance, resnet_export
from ..checkpoint import CheckpointFormatError
from . import CheckpointFormat, RESNET_KEYS, file_tensors, register_format, take_network, training_state_note

__all__ = ["SSLResNetFormat", "SwAVFormat", "BarlowTwinsFormat", "VICRegFormat", "SimCLRFormat", "BYOLFormat"]

_STEM = "layer1.0.conv1.weight"


class SSLResNetFormat(CheckpointFormat):
    title: ClassVar[str]  # the family in messages
    file_hint: ClassVar[str]  # what the name of a backbone-only file of this family contains

    @classmethod
    def layout(cls, keys: Dict[str, torch.Tensor]) -> bool:
        """Whether the file's tensors (``file_tensors``) have this family's heads."""
        return False

    @classmethod
    def claims(cls, ckpt: Mapping, source: str = "") -> bool:
        keys = file_tensors(ckpt)
        if not any(k.endswith(_STEM) for k in keys):
            return False
        layouts = [c for c in SSLResNetFormat.__subclasses__() if c.layout(keys)]
        return cls in layouts if layouts else cls.file_hint in Path(source).name.lower()

    def export(self, ckpt: Mapping, source: str = "<dict>", variant: Optional[str] = None) -> BackboneExport:
        self.pick_variant(variant, source)
        tensors = file_tensors(ckpt)
        stem = min((k for k in tensors if k.endswith(_STEM)), key=lambda k: (len(k), k))
        inside, dropped, prefix = take_network(tensors, (stem[: -len(_STEM)],), source)
        sd = {k: v for k, v in inside.items() if k.startswith(RESNET_KEYS)}
        dropped += [prefix + k for k in inside if k not in sd]
        epochs = ckpt.get("epoch")
        export = resnet_export(sd, Provenance(self.name, epochs=epochs if isinstance(epochs, int) else None,
                                              layout=f"a {self.title} ResNet"), dropped=dropped, prefix=prefix)
        export.notes += training_state_note(ckpt)
        return export


_WRAPPERS = ("model.", "module.", "state_dict.")


def _top(keys, name: str) -> bool:
    """Whether the file has tensor ``name`` at its network's top (under no more than the usual wrappers)."""
    def unwrapped(key: str) -> str:
        while key.startswith(_WRAPPERS):
            key = key.split(".", 1)[1]
        return key

    return any(unwrapped(k) == name for k in keys)


@register_format
class SwAVFormat(SSLResNetFormat):
    name, title, file_hint = "swav", "SwAV", "swav"

    @classmethod
    def layout(cls, keys) -> bool:
        return _top(keys, "prototypes.weight") or _top(keys, "projection_head.0.weight")


@register_format
class BarlowTwinsFormat(SSLResNetFormat):
    name, title, file_hint = "barlow_twins", "Barlow Twins", "barlow"

    @classmethod
    def layout(cls, keys) -> bool:
        return _top(keys, "projector.0.weight") and _top(keys, "bn.running_mean")


@register_format
class VICRegFormat(SSLResNetFormat):
    name, title, file_hint = "vicreg", "VICReg", "vicreg"

    @classmethod
    def layout(cls, keys) -> bool:
        return _top(keys, "projector.0.weight") and _top(keys, "backbone." + _STEM) \
            and not _top(keys, "bn.running_mean")


@register_format
class SimCLRFormat(SSLResNetFormat):
    name, title, file_hint = "simclr_v1", "SimCLR v1 (converted)", "simclr"

    def export(self, ckpt: Mapping, source: str = "<dict>", variant: Optional[str] = None) -> BackboneExport:
        export = super().export(ckpt, source, variant)
        if export.state_dict["conv1.weight"].shape[0] != 64:  # 2x / 4x widen every layer: no torchvision ResNet
            raise CheckpointFormatError(
                f"{source}: a SimCLR ResNet-50 of width {export.state_dict['conv1.weight'].shape[0] // 64}x: only the "
                f"1x model is a torchvision ResNet-50 (the 2x and 4x widen every layer)")
        export.mean, export.std = NO_NORMALIZATION
        export.notes.append("trained on unnormalised [0, 1] pixels: mean 0, std 1")
        return export


@register_format
class BYOLFormat(SSLResNetFormat):
    name, title, file_hint = "byol", "BYOL (converted)", "byol"
