"""iBOT (Zhou et al. 2022, github.com/bytedance/ibot): DINO's layout (``pretrain.formats.dino``) plus
masked image modelling.

* full training checkpoints: ``{'student', 'teacher', 'optimizer', 'epoch', 'args', 'ibot_loss',
  'fp16_scaler'}``, each network ``backbone.*`` + an ``iBOTHead`` (``head.*``, with the patch head's
  ``last_layer2``); the teacher by default (``variant="student"`` for the other);
* released backbones (``checkpoint_teacher.pth``, ``checkpoint_student.pth``):
  ``{'state_dict': backbone}``, as the authors' ``extract_backbone_weights.py`` writes them.

The backbone is timm's ViT plus ``masked_embed``, the embedding of masked patches (pretraining only:
dropped and listed), and, when trained with LayerScale, ``gamma_1`` / ``gamma_2`` (timm's
``ls1.gamma`` / ``ls2.gamma``).
"""
from __future__ import annotations

from typing import Dict, List, Mapping, Tuple

import torch

from . import file_tensors, register_format
from .dino import SelfDistillationFormat

__all__ = ["IBOTFormat"]


@register_format
class IBOTFormat(SelfDistillationFormat):
    name = "ibot"
    title = "iBOT"

    @classmethod
    def claims(cls, ckpt: Mapping, source: str = "") -> bool:
        if cls.full_checkpoint(ckpt):
            return "ibot_loss" in ckpt or any("masked_embed" in k or "last_layer2" in k for k in ckpt["teacher"])
        keys = file_tensors(ckpt)
        return any(k.endswith("masked_embed") for k in keys) and any(k.endswith("blocks.0.attn.qkv.weight")
                                                                     for k in keys)

    def to_timm(self, backbone: Dict[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], List[str], List[str]]:
        sd, dropped = {}, []
        for k, v in backbone.items():
            if k == "masked_embed":
                dropped.append(k)
            else:
                sd[k.replace(".gamma_1", ".ls1.gamma").replace(".gamma_2", ".ls2.gamma")] = v
        notes = ["LayerScale gamma_1 / gamma_2 read as timm's ls1 / ls2"] if any(".gamma_1" in k for k in backbone) \
            else []
        return sd, dropped, notes
