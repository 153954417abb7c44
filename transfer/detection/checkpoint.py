"""detectron2's checkpointer, reading the checkpoints users hold, safely.

``Checkpointer`` is detectron2's ``DetectionCheckpointer`` (resume, model-zoo
files, ``?matching_heuristics=True`` URLs) with three differences:

* ``.pkl`` files are read with the numpy-only unpickler and torch files with
  ``weights_only=True``; running a file's pickled code is the caller's choice
  (``allow_pickle=True``, ``--allow-pickle``), never the default;
* a pretraining checkpoint (MAE, MoCo, timm, DeiT, torchvision; the authors'
  or the project's) is converted in memory by ``transfer.detection.convert``,
  so ``train.init_checkpoint`` / ``MODEL.WEIGHTS`` can name it directly;
* weights converted here (in memory or by ``tools/convert_checkpoint.py``) are
  placed strictly: every tensor must find exactly one place of its shape in the
  model, and every backbone tensor a pretraining provides must be filled, else
  ``CheckpointFormatError`` names the keys. detectron2's own heuristics would
  skip a tensor of the wrong shape with a log line. A position table for another
  grid is interpolated and a patch embedding for another patch size resized
  (``patch_resize``: ``bicubic`` as the ViTDet authors, or ``pinv``).
"""
from __future__ import annotations

import logging
import math
import os
import re
from typing import Dict, List, Mapping, Optional, Tuple
from urllib.parse import parse_qs

import torch

from pretrain.checkpoint import CheckpointFormatError, describe_state_dict, load_file, unwrap_state_dict
from pretrain.errors import ConfigError, InputNotFound
from pretrain.pos_embed import resize_pos_embed

from . import require_detectron2
from .convert import AUTHOR, VIT_PREFIX, backbone_name, load_converted, resize_patch_embed

require_detectron2()
from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402

__all__ = ["Checkpointer", "place_weights", "vit_option_problems", "is_detectron2_checkpoint", "read_checkpoint",
           "check_checkpoint"]
log = logging.getLogger(__name__)

_D2_PREFIXES = ("backbone.", "roi_heads.", "proposal_generator.", "sem_seg_head.")
_RESNET_PART = re.compile(r"(^|\.)(stem|res[2-5])\.")


def is_detectron2_checkpoint(obj: Mapping) -> bool:
    """A file detectron2 reads as it is: its training checkpoints, model-zoo files, converted files."""
    if "__author__" in obj:
        return True
    model = obj.get("model", obj)
    keys = [k for k in model if isinstance(k, str)] if isinstance(model, Mapping) else []
    return any(k.startswith(_D2_PREFIXES) for k in keys) or describe_state_dict(dict.fromkeys(keys)).startswith(
        "detectron2")


def _pretrained_part(key: str, vit: bool) -> bool:
    """Whether a model key is one a backbone pretraining provides (the rest is trained from scratch)."""
    if key.endswith(("num_batches_tracked", "attn.rel_pos_h", "attn.rel_pos_w")):
        return False
    if vit:
        return key.startswith(VIT_PREFIX)
    return bool(_RESNET_PART.search(key)) and not key.endswith((".res5.norm.weight", ".res5.norm.bias",
                                                                ".res5.norm.running_mean", ".res5.norm.running_var"))


def place_weights(weights: Mapping[str, torch.Tensor], model_state: Mapping[str, torch.Tensor],
                  patch_resize: str = "bicubic") -> Tuple[Dict[str, torch.Tensor], List[str], List[str]]:
    """Put converted backbone weights at their place in a model's state dict.

    A key is placed at the model key equal to it, else at the one model key
    ending with ``"." + key`` (``res5.0.conv1.weight`` -> ``roi_heads.res5.0...``
    in C4 models, ``backbone.bottom_up.res5...`` in FPN ones). Returns
    (placed weights, notes on what was adapted, problems).
    """
    placed, notes, problems = {}, [], []
    for key, value in weights.items():
        if key in model_state:
            target = key
        else:
            found = [m for m in model_state if m.endswith("." + key)]
            if len(found) != 1:
                problems.append(f"{key}: {'no place' if not found else f'{len(found)} places'} in the model"
                                + (f" ({', '.join(found[:3])})" if found else ""))
                continue
            target = found[0]
        want = tuple(model_state[target].shape)
        if tuple(value.shape) != want and target.endswith("pos_embed") and value.shape[-1] == want[-1]:
            # A class row, or none (registers' / I-JEPA's tables): a square grid has none
            prefix = int(math.isqrt(value.shape[1]) ** 2 != value.shape[1])
            if prefix == int(math.isqrt(want[1]) ** 2 != want[1]):
                value = resize_pos_embed(value, math.isqrt(want[1] - prefix), num_prefix_tokens=prefix)
                notes.append(f"{target}: interpolated the position table to {tuple(value.shape)}")
        if (tuple(value.shape) != want and target.endswith("patch_embed.proj.weight")
                and value.shape[:2] == want[:2]):
            value = resize_patch_embed(value, want[-1], patch_resize)
            notes.append(f"{target}: resized the patch embedding to {want[-2]}x{want[-1]} ({patch_resize})")
        if tuple(value.shape) != want:
            problems.append(f"{key}: shape {tuple(value.shape)} != {want} of {target} in the model")
            continue
        placed[target] = value
    vit = any(k.startswith(VIT_PREFIX) for k in weights)
    unfilled = [k for k in model_state if _pretrained_part(k, vit) and k not in placed]
    if unfilled:
        problems.insert(0, f"{len(unfilled)} backbone tensors of the model get no weights: "
                           f"{', '.join(unfilled[:4])}{' ...' if len(unfilled) > 4 else ''}")
    return placed, notes, problems


def vit_option_problems(model: torch.nn.Module, net: Optional[Mapping]) -> List[str]:
    """What of a converted ViT's options that are no tensors (the LayerNorms' eps, the MLP's activation) the
    model's ViT does not have: a CLIP file in a ViT of nn.GELU and eps 1e-6 would load every tensor and compute
    another function. ``net``: the file's ``sslkit.net`` (``convert.vitdet_net_args``; None: not recorded)."""
    from detectron2.modeling.backbone import ViT
    from timm.layers import get_act_layer

    vit = next((m for m in model.modules() if isinstance(m, ViT)), None)
    if vit is None or not net:
        return []
    problems = []
    eps, want = vit.blocks[0].norm1.eps, net.get("norm_eps", 1e-6)
    if eps != want:
        problems.append(f"the model's LayerNorm eps is {eps}, the checkpoint's {want} (model.backbone.net.norm_eps)")
    if net.get("mlp_layer", "mlp") == "mlp":  # (SwiGLU's SiLU is part of its module)
        act, want = type(vit.blocks[0].mlp.act).__name__, get_act_layer(net.get("act_layer", "gelu")).__name__
        if act.lower() != want.lower():  # timm's GELU is torch's function
            problems.append(f"the model's MLP activation is {act}, the checkpoint's {want} "
                            f"(model.backbone.net.act_layer={net.get('act_layer')!r})")
    return problems


def read_checkpoint(filename: str, allow_pickle: bool = False, variant: Optional[str] = None) -> Dict:
    """A checkpoint file as detectron2's checkpointer takes it (``{"model": ..., ...}``): detectron2 files as
    they are, Caffe2 model-zoo pickles as detectron2 reads them, pretraining checkpoints converted (``variant``:
    which network of one that holds several, ``read_backbone``'s; a detectron2 file with one is refused)."""
    data = load_file(filename, allow_pickle=allow_pickle)
    if not isinstance(data, Mapping):
        raise CheckpointFormatError(f"{filename}: expected a checkpoint dict, found {type(data).__name__}")
    if variant is not None and (filename.endswith(".pkl") or is_detectron2_checkpoint(data)):
        raise ConfigError(f"{filename}: a detectron2 file holds one network; --variant {variant} picks one of a "
                          f"pretraining checkpoint that holds several (DINO / iBOT / DINOv2 teacher or student, "
                          f"I-JEPA target or context): leave --variant out")
    if filename.endswith(".pkl") and not ("model" in data and "__author__" in data):
        # Caffe2 / Detectron1 model-zoo file, as detectron2 reads it.
        blobs = data.get("blobs", data)
        return {"model": {k: v for k, v in blobs.items() if not k.endswith("_momentum")},
                "__author__": "Caffe2", "matching_heuristics": True}
    if is_detectron2_checkpoint(data):
        return dict(data) if "model" in data else {"model": dict(data)}
    data, notes = load_converted(data, name=filename, variant=variant)
    for note in notes:
        log.info("%s: %s", filename, note)
    return data


def check_checkpoint(path: str, what: str, allow_pickle: bool = False, variant: Optional[str] = None) -> None:
    """A local checkpoint exists and reads as one (``read_checkpoint``, its network ``variant``), before a model
    is built or a run's folder made: ``InputNotFound`` / ``CheckpointFormatError`` naming ``what`` (the flag or
    key). URLs (``https://``, ``detectron2://``) are left to the checkpointer, which downloads them."""
    if not path or "://" in path:
        return
    local = path.split("?", 1)[0]  # a local file may carry ?matching_heuristics=True
    if not os.path.isfile(local):
        raise InputNotFound(f"{what}: checkpoint not found: {local}")
    read_checkpoint(local, allow_pickle, variant)


class Checkpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` that also reads pretraining checkpoints (see the module doc).

    After ``load``, ``pretrained`` holds what the file says of its pretraining
    (``pretrain``, ``backbone``, ``source``; ``variant`` when one was asked for) when
    it was a pretraining checkpoint or a file converted here, else None.
    """

    def __init__(self, model, save_dir: str = "", *, allow_pickle: bool = False, patch_resize: str = "bicubic",
                 **checkpointables):
        super().__init__(model, save_dir, **checkpointables)
        self.allow_pickle, self.patch_resize = allow_pickle, patch_resize
        self.pretrained = None
        self._variant: Optional[str] = None  # the network of the file ``load`` reads now

    def load(self, path: str, *args, variant: Optional[str] = None, **kwargs):
        """detectron2's ``load``; ``variant``: which network of a pretraining checkpoint that holds several
        (``read_backbone``'s: DINO's student, I-JEPA's context). The initial weights only: a run's own
        checkpoints, resumed, hold one network, and record the variant they started from (``pretrained``)."""
        self._variant = variant
        try:
            return super().load(path, *args, **kwargs)
        finally:
            self._variant = None

    def _load_file(self, filename: str):
        data = read_checkpoint(filename, self.allow_pickle, self._variant)
        query = parse_qs(self._parsed_url_during_load.query) if self._parsed_url_during_load else {}
        if query.pop("matching_heuristics", ["False"]) == ["True"]:
            data["matching_heuristics"] = True
        if query:
            raise ConfigError(f"unsupported query {query} in checkpoint path {filename} "
                              f"(only ?matching_heuristics=True)")
        return data

    def _load_model(self, checkpoint):
        self.pretrained = None
        if checkpoint.get("__author__") == AUTHOR:
            meta = dict(checkpoint.get("sslkit") or {})
            placed, notes, problems = place_weights(unwrap_state_dict(checkpoint["model"]), self.model.state_dict(),
                                                    self.patch_resize)
            problems += vit_option_problems(self.model, meta.get("net"))
            if problems:
                raise CheckpointFormatError(
                    f"{meta.get('source', 'checkpoint')} ({meta.get('backbone', '?')}) does not fit this model "
                    f"({backbone_name(self.model)}):\n  " + "\n  ".join(problems[:8])
                    + (f"\n  ... ({len(problems) - 8} more)" if len(problems) > 8 else "")
                    + "\nCheck the backbone's shape in the config (depth, width, patch size) against the checkpoint.")
            for note in notes:
                self.logger.info(note)
            checkpoint = {**checkpoint, "model": placed, "matching_heuristics": False}
            self.pretrained = meta
        return super()._load_model(checkpoint)
