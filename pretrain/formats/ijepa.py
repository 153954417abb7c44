"""I-JEPA (Assran et al. 2023, github.com/facebookresearch/ijepa): ViT-H/14, H/16, g/16.

The released checkpoints (``IN1K-vit.h.14-300e.pth.tar``, ...) are the training checkpoints:
``{'encoder', 'predictor', 'target_encoder', 'opt', 'scaler', 'epoch', 'loss', 'batch_size',
'world_size', 'lr'}``, each network under DDP's ``module.``. The encoders are timm's ViT without a
class token: a fixed sin-cos position table of the patches only, the final norm (eps 1e-6) on every
token; the paper evaluates the average of the target encoder's tokens, so the export is a timm
``VisionTransformer(class_token=False, global_pool="avg", fc_norm=False)`` (the norm per token, then
the mean). The target encoder is read by default, the context encoder (``encoder``) with
``variant="context"``; the predictor and the other encoder are listed as dropped.
"""
from __future__ import annotations

from typing import Mapping, Optional

from ..backbones import BackboneExport, Provenance, vit_export
from . import CheckpointFormat, file_tensors, register_format, take_network, training_state_note

__all__ = ["IJEPAFormat"]

_ENTRIES = {"target": "target_encoder", "context": "encoder"}
# Heads by width of the authors' models (vit_tiny ... vit_giant): not in the tensors, and not width / 64 for
# ViT-H/16 and ViT-g/16 (16 heads).
_HEADS = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16, 1408: 16}


@register_format
class IJEPAFormat(CheckpointFormat):
    name = "ijepa"
    variants = ("target", "context")

    @classmethod
    def claims(cls, ckpt: Mapping, source: str = "") -> bool:
        return isinstance(ckpt.get("predictor"), Mapping) and any(
            isinstance(ckpt.get(entry), Mapping) for entry in _ENTRIES.values())

    def export(self, ckpt: Mapping, source: str = "<dict>", variant: Optional[str] = None) -> BackboneExport:
        held = tuple(v for v, entry in _ENTRIES.items() if isinstance(ckpt.get(entry), Mapping))
        variant = self.pick_variant(variant, source, held=held)
        entry = _ENTRIES[variant]
        backbone, dropped, prefix = take_network(file_tensors(ckpt), (f"{entry}.module.", f"{entry}."), source)
        epochs = ckpt.get("epoch")
        width = int(backbone["patch_embed.proj.weight"].shape[0]) if "patch_embed.proj.weight" in backbone else None
        export = vit_export(backbone, Provenance(self.name, epochs=epochs if isinstance(epochs, int) else None,
                                                 layout=f"an I-JEPA checkpoint ({variant} encoder)"),
                            num_heads=_HEADS.get(width), dropped=dropped, prefix=prefix)
        export.notes += training_state_note(ckpt)
        return export
