"""BEiT v1 (Bao et al. 2022, github.com/microsoft/unilm/tree/master/beit), BEiT v2 (Peng et al. 2022,
unilm/beit2) and data2vec v1's vision models (Baevski et al. 2022, github.com/facebookresearch/data2vec_vision),
which are trained in BEiT's code and saved in its layout.

* released pretrained files (``beit_base_patch16_224_pt22k.pth``, ``beitv2_base_patch16_224_pt1k.pth``,
  data2vec's ``checkpoint-799.pth``) and training checkpoints: ``{'model': network, 'optimizer', 'epoch',
  'scaler', 'args', ...}`` (some BEiT v2 files ``{'module': network}``); the network is the authors'
  ``VisionTransformerForMaskedImageModeling`` (data2vec: ``...ForCyclicalTraining``): timm's ViT names but
  the attention's bias as ``q_bias`` / ``v_bias`` (no key bias), LayerScale ``gamma_1`` / ``gamma_2``, a
  relative position bias, shared by the blocks (``rel_pos_bias.relative_position_bias_table``) or one per
  block, usually no absolute position table; and the pretraining's ``mask_token``, ``lm_head`` (BEiT:
  to the tokenizer's 8192 codes; data2vec: width to width, which tells them apart) and BEiT v2's
  ``cls_pt_layers`` (its class-token pretraining head): dropped and listed, as are the relative
  position indices (derived from the grid, recomputed); anything else in the file (an EMA copy, the
  optimisation's state) is listed too.

Read into timm's ``Beit`` (``timm.models.beit``: per-block relative position bias, q / v biases,
LayerScale) as BEiT's fine-tuning reads them: the shared table is copied into every block
(summed with a block's own table where a file has both: the pretraining forward adds both). The
export is a ViT (``family`` "vit") whose shape says ``beit`` (and ``rel_pos_bias``, ``abs_pos_emb``,
``qkv_bias``, ``init_values``): ``timm_config`` writes timm's
``Beit`` for it (``beit_model_args``) and the frozen backbone builds one. The features are the
pretraining's: the final ``norm`` per token, the class token (``global_pool="token"``); BEiT's
fine-tuning instead averages the patch tokens under a fresh norm.

Input normalisation: the training run's ``args.imagenet_default_mean_and_std`` where the file has it;
else ImageNet's for BEiT v2 and data2vec (their pretraining commands set it) and for BEiT v1 files
pretrained on ImageNet-1k (``pt1k`` in the name), and BEiT v1's default (0.5, 0.5, 0.5) for its
ImageNet-22k releases.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch

from ..backbones import VIT_ARCHS, BackboneExport, Provenance
from ..checkpoint import CheckpointFormatError
from ..transforms import IMAGENET_MEAN, IMAGENET_STD
from . import CheckpointFormat, file_tensors, register_format, take_network, training_state_note

__all__ = ["BEiTFormat", "BEiTv2Format", "Data2VecFormat", "beit_layout", "beit_model_args", "refuse_beit",
           "BEIT_MEAN_STD"]

# Where a network sits in the released files and the training checkpoints (BEiT v2 keeps DDP's "module").
_NETWORK = ("model.", "module.", "state_dict.", "")
# BEiT v1's default input normalisation (its ImageNet-22k pretraining); ImageNet's with --imagenet_default_mean_and_std.
BEIT_MEAN_STD = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
# Tensors of the pretraining only: BEiT v2's class-token head, the masked patches' embedding, the prediction head.
_PRETRAINING_ONLY = ("mask_token", "lm_head.", "cls_pt_layers.", "cls_pt_norm.", "cls_pt_lm_head.")
_SHARED_TABLE = "rel_pos_bias.relative_position_bias_table"


def beit_layout(ckpt: Mapping) -> Optional[str]:
    """Where the BEiT-layout network of a loaded file is (``model.``, ``module.``, ...), or None: a class
    token, BEiT's attention biases (``q_bias``) and its masked-image-modelling head (``lm_head``)."""
    keys = file_tensors(ckpt)
    return next((p for p in _NETWORK if p + "cls_token" in keys and p + "lm_head.weight" in keys
                 and p + "blocks.0.attn.q_bias" in keys), None)


def _is_data2vec(ckpt: Mapping, prefix: str) -> bool:
    """data2vec regresses features (``lm_head``: width to width); BEiT predicts one of 8192 codes."""
    head = file_tensors(ckpt)[prefix + "lm_head.weight"]
    return head.ndim == 2 and head.shape[0] == head.shape[1]


def _args(ckpt: Mapping) -> Dict[str, Any]:
    """The training run's arguments (an argparse Namespace or a dict), or {}."""
    args = ckpt.get("args")
    return vars(args) if hasattr(args, "__dict__") else dict(args) if isinstance(args, Mapping) else {}


def _is_beit_v2(ckpt: Mapping, prefix: str, source: str) -> bool:
    """BEiT v2: its class-token head (``cls_pt_layers``), its VQ-KD tokenizer in the run's arguments, or
    its name (the pretrained releases hold the backbone alone, in BEiT v1's layout)."""
    if any(k.startswith(prefix + "cls_pt_layers.") for k in file_tensors(ckpt)):
        return True
    if "tokenizer_model" in _args(ckpt):
        return True
    return re.search(r"beit_?v?2", Path(source).name.lower()) is not None


class _BEiTLayoutFormat(CheckpointFormat):
    title: str

    @classmethod
    def family_of(cls, ckpt: Mapping, source: str) -> Optional[str]:
        """The format name of a BEiT-layout file (beit / beit_v2 / data2vec), or None."""
        prefix = beit_layout(ckpt)
        if prefix is None:
            return None
        if _is_data2vec(ckpt, prefix):
            return "data2vec"
        return "beit_v2" if _is_beit_v2(ckpt, prefix, source) else "beit"

    @classmethod
    def claims(cls, ckpt: Mapping, source: str = "") -> bool:
        return cls.family_of(ckpt, source) == cls.name

    def default_mean_std(self, source: str) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
        return IMAGENET_MEAN, IMAGENET_STD

    def export(self, ckpt: Mapping, source: str = "<dict>", variant: Optional[str] = None) -> BackboneExport:
        self.pick_variant(variant, source)  # one network: a variant is refused
        prefix = beit_layout(ckpt)
        if prefix is None:
            raise CheckpointFormatError(f"{source}: not in BEiT's layout (cls_token, blocks.N.attn.q_bias, lm_head)")
        network, dropped, _ = take_network(file_tensors(ckpt), (prefix,), source)
        sd, inner_dropped, notes = beit_to_timm(network)
        shape = beit_shape(sd)
        epoch, args = ckpt.get("epoch"), _args(ckpt)
        layout = f"a {self.title} pretraining checkpoint" + (" (training state)" if "optimizer" in ckpt else "")
        export = BackboneExport(
            "vit", shape.pop("arch"), sd, shape, sorted(dropped + [prefix + k for k in inner_dropped]),
            notes + training_state_note(ckpt),
            Provenance(self.name, epochs=epoch + 1 if isinstance(epoch, int) else None,  # the last epoch's index
                       data=args.get("data_path"), layout=layout))
        if "imagenet_default_mean_and_std" in args:
            export.mean, export.std = (IMAGENET_MEAN, IMAGENET_STD) if args["imagenet_default_mean_and_std"] \
                else BEIT_MEAN_STD
        else:
            export.mean, export.std = self.default_mean_std(source)
        return export


@register_format
class BEiTFormat(_BEiTLayoutFormat):
    name = "beit"
    title = "BEiT"

    def default_mean_std(self, source: str) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
        return (IMAGENET_MEAN, IMAGENET_STD) if re.search(r"(pt|in)1k", Path(source).name.lower()) else BEIT_MEAN_STD


@register_format
class BEiTv2Format(_BEiTLayoutFormat):
    name = "beit_v2"
    title = "BEiT v2"


@register_format
class Data2VecFormat(_BEiTLayoutFormat):
    name = "data2vec"
    title = "data2vec"


def beit_to_timm(network: Mapping[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], List[str], List[str]]:
    """(the authors' network as timm's ``Beit`` state dict, their keys dropped by design, notes). The names
    are timm's already; the shared relative position table goes into every block, as fine-tuning does."""
    sd, dropped, notes = {}, [], []
    for k, v in network.items():
        if k.startswith(_PRETRAINING_ONLY) or k.endswith("relative_position_index") or k == _SHARED_TABLE:
            if k != _SHARED_TABLE:
                dropped.append(k)
            continue
        sd[k] = v
    shared = network.get(_SHARED_TABLE)
    if shared is not None:
        depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
        for i in range(depth):
            key = f"blocks.{i}.attn.relative_position_bias_table"
            # A block's own table and the shared one index the same positions: their sum is the bias of both.
            sd[key] = shared.clone() if key not in sd else sd[key] + shared
        notes.append("the shared relative position bias copied into every block (as BEiT's fine-tuning does)")
    if any(k.endswith("relative_position_index") for k in network):
        notes.append("relative position indices recomputed from the grid")
    return sd, dropped, notes


def beit_shape(sd: Mapping[str, torch.Tensor]) -> Dict[str, Any]:
    """A BEiT's shape off its tensors (timm ``Beit`` names): heads from the relative position table, the
    pretraining grid from it (or from the absolute position table)."""
    w = sd["patch_embed.proj.weight"]
    embed_dim, patch_size = int(w.shape[0]), int(w.shape[-1])
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    table = sd.get("blocks.0.attn.relative_position_bias_table")  # [(2W - 1)^2 + 3, heads]
    if "pos_embed" in sd:
        window = int(round((int(sd["pos_embed"].shape[1]) - 1) ** 0.5))
    elif table is not None:
        window = int(round(((int(table.shape[0]) - 3) ** 0.5 + 1) / 2))
    else:
        raise CheckpointFormatError("a BEiT with neither a position table nor relative position bias")
    preset = next((name for name, a in VIT_ARCHS.items()
                   if (a.patch_size, a.embed_dim, a.depth) == (patch_size, embed_dim, depth)), None)
    return {"arch": "beit_" + (preset[len("vit_"):] if preset else f"{embed_dim}d{depth}_patch{patch_size}"),
            "patch_size": patch_size, "embed_dim": embed_dim, "depth": depth,
            "num_heads": int(table.shape[1]) if table is not None else max(1, embed_dim // 64),
            "mlp_ratio": sd["blocks.0.mlp.fc1.weight"].shape[0] / embed_dim, "img_size": window * patch_size,
            "beit": True, "rel_pos_bias": table is not None, "abs_pos_emb": "pos_embed" in sd,
            "qkv_bias": "blocks.0.attn.q_bias" in sd,
            "init_values": 0.1 if "blocks.0.gamma_1" in sd else None}  # LayerScale: the trained gammas replace it


def beit_model_args(shape: Mapping[str, Any], img_size: Optional[int] = None) -> Dict[str, Any]:
    """timm ``Beit`` keyword arguments for a BEiT export's shape (``img_size``: another input size; its
    tables are then resampled by timm when loading)."""
    return {"img_size": img_size or shape["img_size"], "patch_size": shape["patch_size"],
            "embed_dim": shape["embed_dim"], "depth": shape["depth"], "num_heads": shape["num_heads"],
            "mlp_ratio": shape["mlp_ratio"], "qkv_bias": shape.get("qkv_bias", True),
            "init_values": shape.get("init_values"), "use_abs_pos_emb": shape["abs_pos_emb"],
            "use_rel_pos_bias": shape["rel_pos_bias"], "global_pool": "token", "num_classes": 0}


def refuse_beit(export: BackboneExport, target: str) -> None:
    """Stop a protocol that builds a plain ViT (``target``) from loading a BEiT export: its relative position
    tables, q / v biases and LayerScale have no place there and would be lost."""
    if export.shape.get("beit"):
        raise CheckpointFormatError(
            f"{export.provenance.source} ({export.provenance.layout}) is a BEiT ViT (relative position bias, q / v "
            f"biases, LayerScale: timm's Beit), which {target} does not take yet: the frozen-backbone rungs (kNN, "
            f"dense probe) read it")
