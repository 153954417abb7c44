"""Checkpoint conversion between the formats users hold.

Every conversion goes through one of two canonical forms, read by the model
definitions in ``pretrain``:
  * ViTs:    timm ViT names (``pretrain.mae.checkpoint_filter_fn`` reads MAE full /
             encoder-only, the project's checkpoints, timm and DeiT files);
  * ResNets: torchvision names (``pretrain.moco.backbone_state_dict`` reads MoCo
             v1/v2/v3, the project's checkpoints, torchvision files).
A target turns the canonical form into a framework's, checks it against that
framework's model, and returns a ``ConversionReport`` that separates the keys
missing or dropped by design from real mismatches.

Targets: ``timm`` (ViT), ``torchvision`` (ResNet), ``detectron2`` and ``mmseg``
(both families; their modules import the framework lazily).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import torch

from pretrain.checkpoint import (
    CheckpointFormatError, describe_state_dict, load_file, load_state_dict_file, save_atomic, strip_prefix,
    unwrap_state_dict,
)


def guess_pretrain(source, allow_pickle: bool = False, path: str = "") -> str:
    """The results label of a pretrained file (a path, or a loaded checkpoint and optionally its
    path): ``mae``, ``moco_v1`` / ``_v2`` / ``_v3``, ``supervised`` or ``unknown``.

    The project's trainer records its config, which says. Otherwise the key layout: MAE with
    its decoder, MoCo's query encoder (v2: the MLP head), MoCo v3's base encoder, an ImageNet
    classifier (timm, DeiT, torchvision: supervised). A bare ViT encoder is MAE's only when its
    file name says so (the authors' ``mae_pretrain_vit_*.pth``); a bare ResNet, e.g. a converted
    MoCo backbone, is ``unknown``: callers fall back on what their config or command line says.
    """
    if not isinstance(source, Mapping):
        path = path or str(source)
        source = load_file(source, allow_pickle)
    config = source.get("config") if isinstance(source, Mapping) else None
    if isinstance(config, str):  # the project's trainer: its config says
        from omegaconf import OmegaConf

        cfg = OmegaConf.create(config)
        if cfg.get("method") == "moco":
            return "moco_v2" if cfg.model.get("mlp") else "moco_v1"
        return str(cfg.get("method", "unknown"))
    keys = set(strip_prefix(unwrap_state_dict(source), "module."))
    if "decoder_embed.weight" in keys:
        return "mae"
    if any(k.startswith("encoder_q.") for k in keys):
        return "moco_v2" if "encoder_q.fc.0.weight" in keys else "moco_v1"
    if any(k.startswith("base_encoder.") for k in keys):
        return "moco_v3"
    if "head.weight" in keys or "fc.weight" in keys:
        return "supervised"
    if "mae" in Path(str(path)).name.lower():
        return "mae"
    return "unknown"


def pretrain_epochs(checkpoint: Any) -> Optional[int]:
    """Epochs of pretraining behind a loaded checkpoint, when it says: MAE's layout stores the
    last finished epoch, MoCo's (``state_dict`` + ``arch``) the next one; released weights
    without an ``epoch`` give None."""
    epoch = checkpoint.get("epoch") if isinstance(checkpoint, Mapping) else None
    if not isinstance(epoch, int) or isinstance(epoch, bool):
        return None
    return epoch if "state_dict" in checkpoint and "arch" in checkpoint else epoch + 1


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
def resnet_arch(state_dict: Dict[str, torch.Tensor]) -> str:
    """torchvision ResNet name from the block counts and block type of a state dict."""
    counts = tuple(1 + max((int(k.split(".")[1]) for k in state_dict if k.startswith(f"layer{i}.")), default=-1)
                   for i in range(1, 5))
    bottleneck = "layer1.0.conv3.weight" in state_dict
    table = {(2, 2, 2, 2, False): "resnet18", (3, 4, 6, 3, False): "resnet34", (3, 4, 6, 3, True): "resnet50",
             (3, 4, 23, 3, True): "resnet101", (3, 8, 36, 3, True): "resnet152"}
    name = table.get(counts + (bottleneck,))
    if name is None:
        raise CheckpointFormatError(f"no torchvision ResNet has blocks {counts} (bottleneck={bottleneck})")
    if bottleneck and state_dict["layer1.0.conv1.weight"].shape[0] == 128 and name in ("resnet50", "resnet101"):
        name = f"wide_{name}_2"
    return name


def _no_patch_resize(target: str, patch_size):
    if patch_size is not None:
        raise ValueError(f"--patch-size applies to --to detectron2 / mmseg ViTs, not to {target}")


def to_torchvision(source, output=None, allow_pickle: bool = False, patch_size=None, **_) -> ConversionReport:
    """MoCo / torchvision checkpoint -> torchvision ResNet state dict (no fc)."""
    import torchvision

    from pretrain.checkpoint import strip_prefix, unwrap_state_dict
    from pretrain.moco import backbone_state_dict

    _no_patch_resize("torchvision", patch_size)
    raw = load_state_dict_file(source, allow_pickle) if not isinstance(source, dict) else source
    sd = backbone_state_dict(raw)
    # Dropped: every source tensor that is not the backbone's (key encoder, queue, heads, fc).
    raw_sd = strip_prefix(unwrap_state_dict(raw), "module.")
    prefix = next(p for p in ("encoder_q.", "base_encoder.", "") if all(p + k in raw_sd for k in sd))
    dropped = sorted(k for k in raw_sd if not (k.startswith(prefix) and k[len(prefix):] in sd))
    arch = resnet_arch(sd)
    target = getattr(torchvision.models, arch)().state_dict()
    design, bad = compare_keys(sd, target, lambda k: k.startswith("fc."))
    report = ConversionReport(str(source if not isinstance(source, dict) else "<dict>"),
                              describe_state_dict(raw, verbose=True), f"torchvision {arch} (fc dropped)",
                              converted=len(sd), missing_by_design=design, mismatched=bad,
                              dropped=dropped)
    if output and report.ok:
        report.output = str(save_atomic(sd, output))
    return report


def to_timm(source, output=None, allow_pickle: bool = False, patch_size=None, **_) -> ConversionReport:
    """MAE / ViT checkpoint -> timm VisionTransformer state dict (no head)."""
    from timm.models.vision_transformer import VisionTransformer

    from pretrain.mae import arch_from_state_dict, encoder_state_dict
    from pretrain.checkpoint import unwrap_state_dict

    _no_patch_resize("timm", patch_size)
    raw = unwrap_state_dict(load_state_dict_file(source, allow_pickle) if not isinstance(source, dict) else source)
    kind = describe_state_dict(raw)
    if kind not in ("mae", "vit"):
        raise CheckpointFormatError(f"expected a MAE or ViT checkpoint, found {describe_state_dict(raw, True)}")
    info = arch_from_state_dict(raw)
    sd = {k: v for k, v in encoder_state_dict(raw).items()
          if not k.startswith(("head.", "fc_norm.", "head_dist.", "dist_token"))}
    if "dist_token" in raw:  # DeiT distilled: drop the distillation token's position row too
        sd["pos_embed"] = torch.cat([sd["pos_embed"][:, :1], sd["pos_embed"][:, 2:]], dim=1)
    with torch.device("meta"):
        vit = VisionTransformer(img_size=info["img_size"], patch_size=info["patch_size"], embed_dim=info["embed_dim"],
                                depth=info["depth"], num_heads=info["num_heads"], mlp_ratio=info["mlp_ratio"],
                                num_classes=0)
    design, bad = compare_keys(sd, vit.state_dict(), lambda k: False)
    dropped = sorted(k for k in raw if k not in sd)
    report = ConversionReport(str(source if not isinstance(source, dict) else "<dict>"),
                              describe_state_dict(raw, verbose=True),
                              f"timm VisionTransformer ({info['arch'] or 'custom'}, num_classes=0)",
                              converted=len(sd), dropped=dropped, missing_by_design=design, mismatched=bad)
    if output and report.ok:
        report.output = str(save_atomic(sd, output))
    return report


TARGETS: Dict[str, str] = {
    "timm": "transfer.convert:to_timm",
    "torchvision": "transfer.convert:to_torchvision",
    "detectron2": "transfer.detection.convert:convert",
    "mmseg": "transfer.segmentation.convert:convert",
}


def get_target(name: str) -> Callable[..., ConversionReport]:
    if name not in TARGETS:
        raise ValueError(f"unknown target {name!r}; expected one of {sorted(TARGETS)}")
    module, fn = TARGETS[name].split(":")
    return getattr(importlib.import_module(module), fn)


def convert(source, target: str, output=None, **opts) -> ConversionReport:
    if not isinstance(source, dict) and not Path(source).is_file():
        raise FileNotFoundError(f"checkpoint not found: {source}")
    return get_target(target)(source, output, **opts)
