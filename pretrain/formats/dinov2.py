"""DINOv2 (Oquab et al. 2024, github.com/facebookresearch/dinov2): ViT-S/B/L/g-14, and the ``_reg4``
models with four register tokens (Darcet et al. 2024).

* released backbones (``dinov2_vits14_pretrain.pth``, ``dinov2_vitg14_reg4_pretrain.pth``, ...): the
  authors' ``DinoVisionTransformer`` state dict: timm's ViT names plus LayerScale ``ls1.gamma`` /
  ``ls2.gamma``, ``mask_token`` (the embedding of masked patches, pretraining only: dropped and
  listed), ``register_tokens``, a position table of 1 + 37 x 37 rows (518 px), and for ViT-g the
  fused SwiGLU MLP ``mlp.w12`` / ``mlp.w3``;
* training checkpoints: the trainer's ``{'model': {'student.backbone.*', 'teacher.backbone.*',
  '*.dino_head.*', '*.ibot_head.*'}, 'optimizer', 'iteration'}`` and the evaluation's
  ``teacher_checkpoint.pth``, ``{'teacher': {'backbone.*', 'dino_head.*', 'ibot_head.*'}}``; their
  blocks are chunked for FSDP (``blocks.<chunk>.<block>.*``, block numbers global).

Read into timm's ``VisionTransformer`` as timm reads DINOv2 (``vit_*_patch14_dinov2``,
``vit_*_patch14_reg4_dinov2``): LayerScale, SwiGLUPacked with SiLU for ViT-g; with registers the
table keeps only the patches' rows (``no_embed_class``), the class token's row added to the class
token once (the same sum the authors' forward makes). The 518 px table is resampled to other input
sizes (``dynamic_img_size``) by timm's bicubic interpolation, not the authors' (which offsets the scale
by 0.1): features at other sizes differ slightly from the authors' forward.
"""
from __future__ import annotations

import re
from typing import Dict, List, Mapping, Optional, Tuple

import torch

from ..backbones import BackboneExport, Provenance, vit_export
from . import CheckpointFormat, file_tensors, register_format, take_network, training_state_note

__all__ = ["DINOv2Format"]

_CHUNKED = re.compile(r"^blocks\.\d+\.(\d+\.)")  # blocks.<chunk>.<block>. -> blocks.<block>.


@register_format
class DINOv2Format(CheckpointFormat):
    name = "dinov2"
    variants = ("teacher", "student")

    @staticmethod
    def networks(ckpt: Mapping) -> Dict[str, Tuple[str, ...]]:
        """{variant: where its backbone may be in the file} for the networks a DINOv2 file holds ("": one)."""
        keys = file_tensors(ckpt)
        found = {}
        for variant, prefixes in (("teacher", ("model.teacher.backbone.", "teacher.backbone.")),
                                  ("student", ("model.student.backbone.",)),
                                  ("", ("model.", "state_dict.", ""))):
            if any(p + "mask_token" in keys and p + "cls_token" in keys and p + "lm_head.weight" not in keys
                   for p in prefixes):  # (BEiT's and data2vec's have a masked-image-modelling head: formats.beit)
                found[variant] = prefixes
        return found

    @classmethod
    def claims(cls, ckpt: Mapping, source: str = "") -> bool:
        return bool(cls.networks(ckpt))

    def export(self, ckpt: Mapping, source: str = "<dict>", variant: Optional[str] = None) -> BackboneExport:
        networks = self.networks(ckpt)
        held = tuple(v for v in networks if v)
        variant = self.pick_variant(variant, source, held=held)
        backbone, dropped, prefix = take_network(file_tensors(ckpt), networks[variant or ""], source)
        sd, inner_dropped, notes = dinov2_to_timm(backbone)
        layout = f"a DINOv2 training checkpoint ({variant})" if variant else "a DINOv2 backbone"
        export = vit_export(sd, Provenance(self.name, layout=layout), prefix=prefix,
                            dropped=dropped + [prefix + k for k in inner_dropped],
                            no_embed_class="reg_token" in sd)  # timm's layout of registers
        export.shape["dynamic_img_size"] = True  # a 518 px table, evaluated at 224 px and other sizes
        export.notes += training_state_note(ckpt) + notes
        return export


def dinov2_to_timm(backbone: Mapping[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], List[str], List[str]]:
    """(the authors' backbone under timm's names, their keys dropped by design, notes)."""
    sd, dropped, notes = {}, [], []
    for k, v in backbone.items():
        if k == "mask_token":
            dropped.append(k)
            continue
        k = _CHUNKED.sub(r"blocks.\1", k)
        k = k.replace(".mlp.w12.", ".mlp.fc1.").replace(".mlp.w3.", ".mlp.fc2.")
        sd[k] = v
    if len(sd) != len(backbone) - len(dropped):
        raise RuntimeError("two of the authors' keys map to one timm key")  # a bug in the mapping above
    if any(_CHUNKED.match(k) for k in backbone):
        notes.append("blocks un-chunked (FSDP's blocks.<chunk>.<block> read as blocks.<block>)")
    if "register_tokens" in sd:  # timm's no_embed_class: neither the class nor the register tokens have a row
        sd["reg_token"] = sd.pop("register_tokens")
        pos = sd["pos_embed"]
        sd["cls_token"] = sd["cls_token"] + pos[:, :1]
        sd["pos_embed"] = pos[:, 1:]
        notes.append("registers: the class token's position row added to the class token (timm's no_embed_class)")
    return sd, dropped, notes
