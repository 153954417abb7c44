"""Checkpoint conversion between the formats users hold.

Every conversion starts from the backbone export (``pretrain.backbones.read_backbone``): a ViT
under timm names or a ResNet under torchvision names, with its shape and provenance, read from
any pretraining method's checkpoint (the authors' or the project's), timm, DeiT and torchvision
files. A target turns it into a framework's form, checks it against that framework's model, and
returns a ``ConversionReport`` that separates the keys missing or dropped by design from real
mismatches.

Targets: ``timm`` (ViT), ``torchvision`` (ResNet), ``detectron2`` and ``mmseg``
(both families; their modules import the framework lazily). ``timm`` and ``torchvision`` write
a state dict file, or, given a folder (no suffix), the publishable export: ``model.safetensors``
+ timm's ``config.json`` (``timm.create_model("local-dir:FOLDER", pretrained=True)``).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import torch

from pretrain.backbones import BackboneExport, read_backbone
from pretrain.checkpoint import CheckpointFormatError, save_atomic
from pretrain.errors import ConfigError, InputNotFound


@dataclass
class ConversionReport:
    source: str
    source_kind: str
    target: str
    output: Optional[str] = None
    converted: int = 0
    dropped: List[str] = field(default_factory=list)  # source keys not carried over, by design
    missing_by_design: List[str] = field(default_factory=list)  # target keys trained from scratch
    mismatched: List[str] = field(default_factory=list)  # real problems: wrong shapes, unknown keys
    notes: List[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.mismatched

    def format(self, max_keys: int = 12) -> str:
        def keys(ks):
            shown = ", ".join(ks[:max_keys])
            return shown + (f", ... (+{len(ks) - max_keys})" if len(ks) > max_keys else "")

        lines = [f"{self.source} ({self.source_kind}) -> {self.target}" + (f": {self.output}" if self.output else ""),
                 f"  converted tensors:            {self.converted}"]
        lines.append(f"  dropped by design ({len(self.dropped)}):       {keys(self.dropped)}" if self.dropped
                     else "  dropped by design:            none")
        lines.append(f"  missing by design ({len(self.missing_by_design)}):      {keys(self.missing_by_design)}"
                     if self.missing_by_design else "  missing by design:            none")
        lines.append(f"  MISMATCHED ({len(self.mismatched)}):              {keys(self.mismatched)}"
                     if self.mismatched else "  mismatched:                   none")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def compare_keys(converted: Dict[str, torch.Tensor], target: Dict[str, torch.Tensor],
                 by_design: Callable[[str], bool]) -> Tuple[List[str], List[str]]:
    """(missing_by_design, mismatched) of a converted state dict against a target model's.

    Target keys absent from ``converted`` are by design when ``by_design(key)``,
    else mismatched; converted keys the target lacks, or of another shape, are
    mismatched.
    """
    missing = [k for k in target if k not in converted]
    design = [k for k in missing if by_design(k)]
    bad = [f"{k} (missing)" for k in missing if not by_design(k)]
    bad += [f"{k} (unexpected)" for k in converted if k not in target]
    bad += [f"{k} (shape {tuple(v.shape)} != {tuple(target[k].shape)})"
            for k, v in converted.items() if k in target and tuple(v.shape) != tuple(target[k].shape)]
    return design, bad


# ------------------------------------------------------------------ targets
def _no_patch_resize(target: str, patch_size):
    if patch_size is not None:
        raise ConfigError(f"--patch-size applies to --to detectron2 ViTs, not to --to {target}; leave it out")


def _write(export: BackboneExport, report: "ConversionReport", output) -> None:
    """A state dict file, or the publishable folder when ``output`` has no suffix."""
    if output and report.ok:
        path = Path(output)
        report.output = str(export.save(path) if not path.suffix else save_atomic(export.state_dict, path))


def to_torchvision(source, output=None, allow_pickle: bool = False, patch_size=None, **_) -> ConversionReport:
    """ResNet checkpoint (MoCo v1/v2/v3, torchvision, ...) -> torchvision ResNet state dict (no fc)."""
    import torchvision

    _no_patch_resize("torchvision", patch_size)
    export = read_backbone(source, allow_pickle)
    if export.family != "resnet":
        raise CheckpointFormatError(f"--to torchvision converts ResNets; {export.provenance.source} holds a "
                                    f"{export.arch} ({export.provenance.layout}): use --to timm")
    target = getattr(torchvision.models, export.arch)().state_dict()
    design, bad = compare_keys(export.state_dict, target, lambda k: k.startswith("fc."))
    report = ConversionReport(export.provenance.source, export.provenance.layout,
                              f"torchvision {export.arch} (fc dropped)", converted=len(export.state_dict),
                              missing_by_design=design, mismatched=bad, dropped=export.dropped,
                              notes=[f"pretraining: {export.label}"])
    _write(export, report, output)
    return report


def to_timm(source, output=None, allow_pickle: bool = False, patch_size=None, **_) -> ConversionReport:
    """ViT checkpoint (MAE, MoCo v3, timm, DeiT, ...) -> timm VisionTransformer state dict (no head)."""
    from timm.models.vision_transformer import VisionTransformer

    _no_patch_resize("timm", patch_size)
    export = read_backbone(source, allow_pickle)
    if export.family != "vit":
        raise CheckpointFormatError(f"--to timm converts ViTs; {export.provenance.source} holds a {export.arch} "
                                    f"({export.provenance.layout}): use --to torchvision")
    s = export.shape
    with torch.device("meta"):
        vit = VisionTransformer(img_size=s["img_size"], patch_size=s["patch_size"], embed_dim=s["embed_dim"],
                                depth=s["depth"], num_heads=s["num_heads"], mlp_ratio=s["mlp_ratio"], num_classes=0,
                                **export.vit_kwargs())  # LayerScale, registers, CLIP's norm before the blocks, ...
    design, bad = compare_keys(export.state_dict, vit.state_dict(), lambda k: False)
    report = ConversionReport(export.provenance.source, export.provenance.layout,
                              f"timm VisionTransformer ({export.arch}, {s['num_heads']} heads, num_classes=0)",
                              converted=len(export.state_dict), dropped=export.dropped, missing_by_design=design,
                              mismatched=bad, notes=export.notes + [f"pretraining: {export.label}"])
    _write(export, report, output)
    return report


TARGETS: Dict[str, str] = {
    "timm": "transfer.convert:to_timm",
    "torchvision": "transfer.convert:to_torchvision",
    "detectron2": "transfer.detection.convert:convert",
    "mmseg": "transfer.segmentation.convert:convert",
}


def get_target(name: str) -> Callable[..., ConversionReport]:
    if name not in TARGETS:
        raise ConfigError(f"unknown conversion target {name!r}; expected one of {', '.join(sorted(TARGETS))}")
    module, fn = TARGETS[name].split(":")
    return getattr(importlib.import_module(module), fn)


def convert(source, target: str, output=None, **opts) -> ConversionReport:
    if not isinstance(source, dict) and not Path(source).exists():
        raise InputNotFound(f"checkpoint not found: {source} (expected a checkpoint file or an exported folder)")
    return get_target(target)(source, output, **opts)
