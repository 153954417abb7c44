"""Published checkpoint formats of other families: one file each in this package, registered by name.

The project's pretraining methods read their own files (``pretrain.methods``); the files the field
publishes for the backbones it compares against (DINO, DINOv2, iBOT, I-JEPA, CLIP, the SSL ResNet-50s) are
read here. A format (``CheckpointFormat``) says whether a loaded file is in its layout (``claims``)
and makes the file's backbone a ``pretrain.backbones.BackboneExport`` (``export``), every tensor of
the file's networks either in the export or named in its ``dropped`` list. A file holding several
networks (a teacher and a student, a target and a context encoder) gives the one its paper
evaluates, or the ``variant`` asked for. A new format is a new file here with a
``@register_format`` class: every module of the package is imported when the registry is first asked.
"""
from __future__ import annotations

import abc
from typing import Any, ClassVar, Dict, List, Mapping, Optional, Tuple, Type

import torch

from ..backbones import BackboneExport, split_prefix
from ..checkpoint import CheckpointFormatError
from ..registry import Registry

__all__ = ["CheckpointFormat", "register_format", "formats", "format_of", "file_tensors", "TRAINING_STATE",
           "RESNET_KEYS", "take_network", "training_state_note"]

# Top-level entries of training checkpoints that hold the optimisation's state, not a network's tensors.
TRAINING_STATE = ("optimizer", "opt", "scaler", "fp16_scaler", "amp", "lr_scheduler")
# The tensors of a torchvision ResNet (fc included: its exporter drops and lists it).
RESNET_KEYS = ("conv1.", "bn1.", "layer1.", "layer2.", "layer3.", "layer4.", "fc.")


class CheckpointFormat(abc.ABC):
    name: ClassVar[str]  # the registry's key and the export's provenance label (dino, dinov2, swav, ...)
    # The networks a file of this format may hold, the one the paper evaluates first; () when one.
    variants: ClassVar[Tuple[str, ...]] = ()

    @classmethod
    @abc.abstractmethod
    def claims(cls, ckpt: Mapping, source: str = "") -> bool:
        """Whether a loaded file (``source``: its path, which some releases are told apart by) is in this layout."""

    @abc.abstractmethod
    def export(self, ckpt: Mapping, source: str = "<dict>", variant: Optional[str] = None) -> BackboneExport:
        """The backbone of a file in this layout (``variant``: which network; None: the paper's)."""

    def pick_variant(self, variant: Optional[str], source: str,
                     held: Optional[Tuple[str, ...]] = None) -> Optional[str]:
        """``variant`` checked against the format's (and against ``held``, those this file holds); None gives
        the paper's default (or the only one the file holds)."""
        held = self.variants if held is None else held
        if variant is None:
            return next((v for v in self.variants if v in held), None)
        if variant not in self.variants:
            raise CheckpointFormatError(
                f"{source}: a {self.name} checkpoint has no variant {variant!r}; "
                + (f"expected one of {list(self.variants)} (default {self.variants[0]})" if self.variants
                   else "its files hold one network: leave the variant out"))
        if variant not in held:
            raise CheckpointFormatError(
                f"{source}: this {self.name} file holds only the {' and '.join(held) or 'backbone'} network, not the "
                f"{variant}: read the full training checkpoint for it, or leave the variant out")
        return variant


_REGISTRY: Registry[CheckpointFormat] = Registry("checkpoint format", __name__)
register_format = _REGISTRY.register


def formats() -> Dict[str, Type[CheckpointFormat]]:
    """Every registered checkpoint format by name (importing each module of this package once)."""
    return _REGISTRY.all()


def format_of(ckpt: Any, source: str = "") -> Optional[CheckpointFormat]:
    """The format that claims ``ckpt``, or None. Formats claim disjoint layouts; only the file names some
    releases are told apart by can make two claim one file."""
    if not isinstance(ckpt, Mapping):
        return None
    claiming = [cls for cls in formats().values() if cls.claims(ckpt, source)]
    if len(claiming) > 1:
        raise CheckpointFormatError(f"{source}: its name fits several checkpoint formats "
                                    f"({', '.join(c.name for c in claiming)}): rename it to name one")
    return claiming[0]() if claiming else None


def file_tensors(ckpt: Mapping, prefix: str = "") -> Dict[str, torch.Tensor]:
    """Every tensor of a loaded file's networks by its dotted place in the file (``teacher.backbone.cls_token``),
    nested mappings walked, the optimisation's state (``TRAINING_STATE``) left out: what an export accounts for."""
    out: Dict[str, torch.Tensor] = {}
    for k, v in ckpt.items():
        if not prefix and k in TRAINING_STATE:
            continue
        if isinstance(v, torch.Tensor):
            out[prefix + str(k)] = v
        elif isinstance(v, Mapping):
            out |= file_tensors(v, f"{prefix}{k}.")
    return out


def training_state_note(ckpt: Mapping) -> List[str]:
    """A note naming the training state a checkpoint holds besides its networks (not read)."""
    state = [k for k in ckpt if k in TRAINING_STATE]
    return [f"training state not read: {', '.join(state)}"] if state else []


def take_network(tensors: Mapping[str, torch.Tensor], prefixes: Tuple[str, ...], source: str
                 ) -> Tuple[Dict[str, torch.Tensor], List[str], str]:
    """(the tensors under the first of ``prefixes`` that ``tensors`` has, without it; every other key; that
    prefix): a backbone inside its file, the rest to name as dropped."""
    for prefix in prefixes:
        inside, rest = split_prefix(tensors, prefix)
        if inside:
            return inside, rest, prefix
    raise CheckpointFormatError(f"{source}: found no backbone under {' or '.join(map(repr, prefixes))} "
                                f"(first keys: {sorted(tensors)[:5]})")
