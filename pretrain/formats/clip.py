"""CLIP (Radford et al. 2021, github.com/openai/CLIP) and OpenCLIP (github.com/mlfoundations/open_clip): the
image tower of a ViT CLIP.

The files:

* OpenAI's releases (``ViT-B-32.pt``, ``ViT-B-16.pt``, ``ViT-L-14.pt``, ``ViT-L-14-336px.pt``) are TorchScript
  archives of the whole model (fp16). ``torch.jit.load`` would compile and run the archive's code; the
  weights need none of it, and the archive's ``data.pkl`` names only module classes, tensors and
  storages, so ``pretrain.checkpoint.load_file`` reads them with an unpickler that rebuilds exactly
  those (``pretrain.torchscript``): no code of the file runs, no ``--allow-pickle`` is needed. An archive
  holding anything else is refused in one line that says to pass ``--allow-pickle`` (then
  ``torch.jit.load`` opens it). The module classes it names show the MLP's activation (``QuickGELU``),
  which the tensors cannot;
* OpenAI's model saved as a state dict (``torch.save(model.state_dict())`` after ``clip.load(...,
  jit=False)``): ``visual.*`` beside the text tower (``transformer.*``, ``token_embedding``,
  ``positional_embedding``, ``ln_final``, ``text_projection``, ``logit_scale``);
* OpenCLIP: its training checkpoints ``{'epoch', 'name', 'state_dict', 'optimizer', 'scaler'}``
  (``module.`` before every key when trained with DDP) and its hub files (``open_clip_pytorch_model.bin``,
  ``open_clip_model.safetensors``): the same names as OpenAI's state dict.

The image tower ``visual`` is a ViT: ``conv1`` (no bias), ``class_embedding``, ``positional_embedding``
(class row first), ``ln_pre`` (a LayerNorm before the blocks), ``transformer.resblocks.N`` (``ln_1``,
``attn.in_proj_*`` = timm's fused qkv, ``attn.out_proj``, ``ln_2``, ``mlp.c_fc`` / ``c_proj``, OpenCLIP's
LayerScale ``ls_1`` / ``ls_2``), ``ln_post`` on the class token, and ``proj``, the linear map into the
image-text embedding space. It reads into timm's ``VisionTransformer`` as timm reads CLIP
(``vit_*_clip_*``): ``pre_norm`` (``norm_pre`` = ``ln_pre``, no patch bias), LayerNorm eps 1e-5 (torch's
default, which CLIP keeps), the class token through ``norm``, heads of width 64 (80 / 88 / 104 for
OpenCLIP's ViT-H, g and bigG: 16 heads).

The features are those before ``proj`` (``ln_post`` of the class token): the CLIP paper's linear probes
use them ("for CLIP-ViT models, we used the features before the linear projection to the embedding
space", appendix A.3), as DINOv2's comparisons with OpenCLIP do, and ``proj`` is the contrastive head
the way DINO's projection head is: it is dropped and listed with the text tower. The export records
CLIP's input normalisation (``CLIP_MEAN`` / ``CLIP_STD``, not ImageNet's) and casts fp16 weights to fp32.

The MLP's activation is not in the tensors: OpenAI's models all use QuickGELU (``x * sigmoid(1.702 x)``),
OpenCLIP's the exact GELU unless the model's config name ends ``-quickgelu`` (its LAION-400M ViT-B/32,
MetaCLIP, DFN, and OpenAI's weights loaded into OpenCLIP). So: a TorchScript archive's module classes
say it; an OpenAI state dict is QuickGELU; an OpenCLIP file is QuickGELU when its run name (the
checkpoint's ``name``, which OpenCLIP makes of the model's) or its path says ``quickgelu``, else GELU.
The export's notes say which and why. CLIP's ModifiedResNet towers (RN50, RN101, RN50x4, ...) are
refused: their 3-convolution stem, average-pool downsampling and attention pooling have no
torchvision ResNet counterpart; so are OpenCLIP's timm / Hugging Face towers and ViT options timm's
ViT lacks (attentional pooling, the scaled-cosine norms), named.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple

import torch

from ..backbones import BackboneExport, Provenance, vit_export
from ..checkpoint import CheckpointFormatError
from ..torchscript import ScriptArchive
from . import CheckpointFormat, file_tensors, register_format, take_network, training_state_note

__all__ = ["CLIPFormat", "OpenCLIPFormat", "CLIP_MEAN", "CLIP_STD", "clip_to_timm"]

# CLIP's input normalisation (clip/clip.py's transform; OpenCLIP's OPENAI_DATASET_MEAN / STD).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# Where the CLIP model is in a file: OpenCLIP's training checkpoint (DDP's module. or not), or a bare state dict.
_PLACES = ("state_dict.module.", "state_dict.", "module.", "")
# OpenCLIP's heads of width 80 / 88 / 104 (ViT-H/14, ViT-g/14, ViT-bigG/14); every other CLIP ViT's are 64 wide.
_HEADS = {1280: 16, 1408: 16, 1664: 16}
# CLIP's names -> timm's, in a block and outside the blocks (prefixes of the keys).
_BLOCK_NAMES = {"ln_1.": "norm1.", "ln_2.": "norm2.", "attn.in_proj_weight": "attn.qkv.weight",
                "attn.in_proj_bias": "attn.qkv.bias", "attn.out_proj.": "attn.proj.", "mlp.c_fc.": "mlp.fc1.",
                "mlp.c_proj.": "mlp.fc2.", "ls_1.gamma": "ls1.gamma", "ls_2.gamma": "ls2.gamma"}
_TOP_NAMES = {"conv1.weight": "patch_embed.proj.weight", "ln_pre.": "norm_pre.", "ln_post.": "norm."}
_BLOCK = re.compile(r"^transformer\.resblocks\.(\d+)\.(.+)$")
_ACTIVATION = re.compile(r"^visual\.transformer\.resblocks\.0\.mlp\.[^.]+$")  # the MLP's modules in a TorchScript tree


def clip_place(keys) -> Optional[str]:
    """Where a CLIP model is in a file's tensors (``_PLACES``), or None: a ``visual`` tower beside
    ``logit_scale`` (every CLIP), or an image tower's own ``visual.class_embedding`` (a ViT) /
    ``visual.attnpool`` (a ModifiedResNet)."""
    keys = set(keys)
    for place in _PLACES:
        if place + "logit_scale" in keys and any(k.startswith(place + "visual.") for k in keys) \
                or place + "visual.class_embedding" in keys or place + "visual.attnpool.c_proj.weight" in keys:
            return place
    return None


def is_openclip_name(source: str) -> bool:
    """OpenCLIP's hub files (``open_clip_pytorch_model.bin``, ``open_clip_model.safetensors``) say so in their name."""
    name = Path(source).name.lower()
    return "open_clip" in name or "openclip" in name


class CLIPTowerFormat(CheckpointFormat):
    """A CLIP's image tower; the subclasses tell the releases apart and say the MLP's activation."""

    title: str  # the family in messages

    def activation(self, ckpt: Mapping, source: str) -> Tuple[str, str]:
        """(the MLP's activation, a timm name; why, for the notes)."""
        raise NotImplementedError

    def layout(self, ckpt: Mapping, place: str) -> str:
        raise NotImplementedError

    def export(self, ckpt: Mapping, source: str = "<dict>", variant: Optional[str] = None) -> BackboneExport:
        self.pick_variant(variant, source)
        tensors = file_tensors(ckpt)
        place = clip_place(tensors)
        visual, dropped, prefix = take_network(tensors, (f"{place}visual.",), source)
        layout = self.layout(ckpt, place)
        sd, inner_dropped, notes = clip_to_timm(visual, f"{source}: {layout}")
        act, why = self.activation(ckpt, source)
        width = int(sd["patch_embed.proj.weight"].shape[0])
        epochs = ckpt.get("epoch")
        export = vit_export(sd, Provenance(self.name, epochs=epochs if isinstance(epochs, int) else None,
                                           layout=layout),
                            num_heads=_HEADS.get(width, max(1, width // 64)), prefix=prefix,
                            dropped=dropped + [prefix + k for k in inner_dropped])
        # torch's LayerNorm default, which CLIP keeps; evaluated at other sizes than the table's (336 px, 224 px).
        export.shape.update(norm_eps=1e-5, dynamic_img_size=True)
        if act != "gelu":
            export.shape["act_layer"] = act
        export.mean, export.std = CLIP_MEAN, CLIP_STD
        export.notes += training_state_note(ckpt) + notes + [f"MLP activation {act}: {why}",
                                                             "features before the image projection (visual.proj, "
                                                             "dropped): the CLIP paper's linear-probe features"]
        return export


def clip_to_timm(visual: Mapping[str, torch.Tensor], where: str
                 ) -> Tuple[Dict[str, torch.Tensor], List[str], List[str]]:
    """(a CLIP ViT image tower under timm's names, fp32; its keys dropped by design (``proj``); notes). A
    ModifiedResNet, a timm / Hugging Face tower or a key of no timm ViT option is refused (``where``: the file)."""
    if "attnpool.c_proj.weight" in visual or "layer1.0.conv1.weight" in visual:
        raise CheckpointFormatError(
            f"{where} has a ModifiedResNet image tower (CLIP RN50 / RN101 / RN50x4 ...), which is not read: its "
            f"3-convolution stem, average-pool downsampling and attention pooling have no torchvision ResNet "
            f"counterpart; use a ViT CLIP (ViT-B/32, B/16, L/14)")
    if "class_embedding" not in visual or "conv1.weight" not in visual:
        raise CheckpointFormatError(
            f"{where} has an image tower that is not CLIP's ViT (first keys: {sorted(visual)[:4]}; OpenCLIP's timm "
            f"and Hugging Face towers are not read here): read the tower's own timm weights instead")
    sd, dropped, unknown = {}, [], []
    for k, v in visual.items():
        v = v.float() if v.is_floating_point() else v
        block = _BLOCK.match(k)
        if k == "proj":
            dropped.append(k)
        elif k == "class_embedding":
            sd["cls_token"] = v.reshape(1, 1, -1)
        elif k == "positional_embedding":
            sd["pos_embed"] = v.unsqueeze(0)
        elif block:
            new = next((t for s, t in _BLOCK_NAMES.items() if block.group(2).startswith(s)), None)
            if new is None:
                unknown.append(k)
            else:
                old = next(s for s in _BLOCK_NAMES if block.group(2).startswith(s))
                sd[f"blocks.{block.group(1)}.{new}{block.group(2)[len(old):]}"] = v
        elif any(k.startswith(s) for s in _TOP_NAMES):
            old = next(s for s in _TOP_NAMES if k.startswith(s))
            sd[_TOP_NAMES[old] + k[len(old):]] = v
        else:
            unknown.append(k)
    if unknown:
        raise CheckpointFormatError(
            f"{where}: image tower tensors of no timm ViT option: {', '.join('visual.' + k for k in sorted(unknown)[:6])}"
            f" (OpenCLIP's attentional pooling or scaled-cosine norms): this CLIP variant is not read")
    notes = ["fp16 weights cast to fp32"] if any(v.dtype == torch.float16 for v in visual.values()) else []
    return sd, dropped, notes


@register_format
class CLIPFormat(CLIPTowerFormat):
    """OpenAI's releases: TorchScript archives, and their model saved as a state dict."""

    name = "clip"
    title = "CLIP"

    @classmethod
    def claims(cls, ckpt: Mapping, source: str = "") -> bool:
        place = clip_place(file_tensors(ckpt))
        return place == "" and (isinstance(ckpt, ScriptArchive) or not is_openclip_name(source))

    def layout(self, ckpt: Mapping, place: str) -> str:
        if isinstance(ckpt, ScriptArchive):
            return "an OpenAI CLIP TorchScript archive (weights read without running it)" if ckpt.module_types \
                else "an OpenAI CLIP TorchScript archive (opened with torch.jit.load)"
        return "an OpenAI CLIP state dict"

    def activation(self, ckpt: Mapping, source: str) -> Tuple[str, str]:
        types = getattr(ckpt, "module_types", {})
        mlp = [t for k, t in types.items() if _ACTIVATION.match(k) and t != "Linear"]
        if not mlp:
            return "quick_gelu", "OpenAI's CLIP models all use QuickGELU"
        if mlp[0] not in ("QuickGELU", "GELU"):
            raise CheckpointFormatError(f"{source}: the archive's MLP activation is a {mlp[0]}, expected CLIP's "
                                        f"QuickGELU (or GELU)")
        return ("quick_gelu" if mlp[0] == "QuickGELU" else "gelu"), f"the archive's MLP holds a {mlp[0]}"


@register_format
class OpenCLIPFormat(CLIPTowerFormat):
    """OpenCLIP's training checkpoints and hub files."""

    name = "openclip"
    title = "OpenCLIP"

    @classmethod
    def claims(cls, ckpt: Mapping, source: str = "") -> bool:
        place = clip_place(file_tensors(ckpt))
        return place is not None and not isinstance(ckpt, ScriptArchive) and (place != "" or is_openclip_name(source))

    def layout(self, ckpt: Mapping, place: str) -> str:
        return "an OpenCLIP training checkpoint" if place.startswith("state_dict.") else "an OpenCLIP state dict"

    def activation(self, ckpt: Mapping, source: str) -> Tuple[str, str]:
        run = ckpt.get("name") if isinstance(ckpt.get("name"), str) else ""
        said = [f"its {where} says quickgelu" for where, text in (("run name", run), ("path", source))
                if "quickgelu" in text.lower()]
        if said:
            return "quick_gelu", said[0]
        return "gelu", ("OpenCLIP's default; neither the run name nor the path says quickgelu (a -quickgelu model "
                        "read this way would be wrong: put quickgelu in the file's name)")
