"""ViT classifiers for the MAE protocols, built on timm's ``VisionTransformer``.

* Linear probing: ``global_pool="token"`` (the cls token after the final norm, as the
  pretrained encoder computes it) and a ``BatchNorm1d(affine=False, eps=1e-6)`` in front
  of the linear head, which whitens the features without adding parameters.
* Fine-tuning: ``global_pool="avg"``: the mean of the patch tokens, then ``fc_norm``.
  timm replaces the final ``norm`` by ``fc_norm`` in this mode, so the pretrained
  ``norm.*`` goes unused and ``fc_norm.*`` starts fresh, by design (the authors' loader
  asserts the same).

State dicts are the authors' (``models_vit.py``) layout, so their fine-tuned and
linear-probe checkpoints load here and ours in their code. Pretrained weights come as a
``pretrain.backbones.BackboneExport`` (``read_backbone``: any pretraining method's checkpoint, the
authors' or the project's, timm and DeiT ViTs for the supervised baselines), whose shape (heads
included) builds the model when ``model.arch=auto``, with its ViT options (``BackboneExport.vit_kwargs``:
LayerScale, registers, no class token, SwiGLU, CLIP's norm before the blocks, QuickGELU, LayerNorm eps).
Without a class token (I-JEPA) the linear probe's ``token`` pooling becomes the export's own: the final
norm per token, then the mean of the tokens.

A BEiT export (BEiT v1 / v2, data2vec: ``pretrain.formats.beit``) builds timm's ``Beit`` instead
(``build_beit_classifier``: relative position bias per block, q / v biases, LayerScale), its tables (and any
position table) resampled to the classifier's image size by timm's ``set_input_size`` (``transfer.beit``), noted
in the report. Its pooling is BEiT's: fine-tuning (``avg``) is BEiT's ``use_mean_pooling``, the patch tokens'
mean under a fresh ``fc_norm``; the linear probe (``token``) averages the patch tokens too, of the final layer
after the pretrained final norm. (BEiT probes the averaged tokens of a chosen block: its ``run_linear_eval.py``
trains a classifier on each block's [class token, patch tokens' mean], before the final norm, and the best block
is reported; the project probes the final layer, as for every other family.)
"""
from __future__ import annotations

from functools import partial
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn
from timm.layers import trunc_normal_
from timm.models.beit import Beit
from timm.models.vision_transformer import VisionTransformer

from pretrain.backbones import VIT_ARCHS, BackboneExport, read_backbone
from pretrain.checkpoint import CheckpointFormatError
from pretrain.errors import ConfigError
from pretrain.formats.beit import refuse_beit
from pretrain.pos_embed import resize_pos_embed
from transfer.beit import beit_network, resample_beit
from transfer.convert import ConversionReport

__all__ = [
    "vit_arch",
    "build_vit_classifier",
    "build_beit_classifier",
    "classifier_options",
    "vit_backbone_state",
    "load_vit_backbone",
    "layer_id_for_vit",
    "param_groups_layer_decay",
]


def vit_arch(name: str, export: Optional[BackboneExport] = None) -> Dict:
    """Encoder shape of ``name``: a preset (``vit_base_patch16``, or the MAE / timm spellings
    ``mae_vit_base_patch16``, ``vit_base_patch16_224``), or ``auto``: the shape of ``export``, the
    pretrained backbone (heads included, which a preset name could get wrong: MoCo v3's ViT-S has 12).
    Returns patch_size, embed_dim, depth, num_heads, mlp_ratio and ``name`` (the backbone's name in
    results files)."""
    if name == "auto":
        if export is None:
            raise ConfigError("model.arch=auto needs a checkpoint to read the architecture from: give --checkpoint, "
                              "or name the architecture (e.g. model.arch=vit_base_patch16)")
        if export.family != "vit":
            raise CheckpointFormatError(f"{export.provenance.source} holds a {export.arch}, not a ViT")
        return {k: export.shape[k] for k in ("patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio")} | \
            {"name": export.arch}
    base = name[len("mae_"):] if name.startswith("mae_") else name
    base = base[: -len("_224")] if base.endswith("_224") else base
    if base not in VIT_ARCHS:
        raise ConfigError(f"unknown ViT {name!r}; expected one of {sorted(VIT_ARCHS)} (or mae_*, *_224 spellings, "
                         f"or auto)")
    a = VIT_ARCHS[base]
    arch = {"patch_size": a.patch_size, "embed_dim": a.embed_dim, "depth": a.depth, "num_heads": a.num_heads,
            "mlp_ratio": a.mlp_ratio, "name": base}
    if export is not None and export.family == "vit":
        theirs = {k: export.shape[k] for k in ("patch_size", "embed_dim", "depth", "num_heads")}
        if theirs != {k: arch[k] for k in theirs}:
            raise CheckpointFormatError(f"{export.provenance.source} (a ViT of {theirs}) does not fit model.arch={name} "
                                        f"({ {k: arch[k] for k in theirs} }): say model.arch=auto")
    return arch


def classifier_options(options: Optional[Dict], global_pool: str) -> Dict:
    """timm keyword arguments of a classifier pooling ``global_pool`` from a pretrained export's ViT options
    (``BackboneExport.vit_kwargs``; None: the plain ViT). The protocol's pooling wins (fine-tuning's mean
    of the patch tokens and a fresh ``fc_norm``), except ``token`` without a class token: there the export's
    own pooling (I-JEPA's: the final norm per token, then the mean)."""
    kwargs = {"norm_layer": partial(nn.LayerNorm, eps=1e-6), **(options or {})}
    kwargs.pop("dynamic_img_size", None)  # the classifier's table is resized to its image size once, at load
    if global_pool != "token" or kwargs.get("class_token", True):
        kwargs.pop("fc_norm", None)
        kwargs["global_pool"] = global_pool
    # else no class token: the options' own global_pool="avg", fc_norm=False stay
    return kwargs


def build_vit_classifier(arch: Dict, num_classes: int, img_size: int = 224, global_pool: str = "token",
                         drop_path: float = 0.0, bn_head: bool = False,
                         head_init_std: float = 0.01, grad_checkpointing: bool = False,
                         options: Optional[Dict] = None) -> VisionTransformer:
    """timm ViT with a fresh head: trunc-normal(std=head_init_std) weight, zero bias.

    ``bn_head``: the linear probe's ``Sequential(BatchNorm1d(affine=False, eps=1e-6), Linear)``.
    ``grad_checkpointing``: timm's activation checkpointing of the blocks (state dict unchanged).
    ``options``: the pretrained export's ViT options (``classifier_options``).
    """
    model = VisionTransformer(
        img_size=img_size, patch_size=arch["patch_size"], embed_dim=arch["embed_dim"], depth=arch["depth"],
        num_heads=arch["num_heads"], mlp_ratio=arch["mlp_ratio"], qkv_bias=True, num_classes=num_classes,
        drop_path_rate=drop_path, **classifier_options(options, global_pool),
    )
    return fresh_head(model, head_init_std, bn_head, grad_checkpointing)


def build_beit_classifier(shape: Dict, num_classes: int, img_size: int = 224, global_pool: str = "token",
                          drop_path: float = 0.0, bn_head: bool = False, head_init_std: float = 0.01,
                          grad_checkpointing: bool = False) -> Beit:
    """timm's ``Beit`` of a BEiT export's ``shape`` at ``img_size`` with a fresh head (as
    ``build_vit_classifier``). Pooling (module docstring): ``avg``, BEiT's fine-tuning (the patch tokens' mean,
    then a fresh ``fc_norm``; the final ``norm`` is left out); ``token``, BEiT's linear probe (the final norm per
    token, then the patch tokens' mean)."""
    model = beit_network(shape, img_size, num_classes=num_classes, drop_path_rate=drop_path, global_pool="avg",
                         use_fc_norm=global_pool == "avg")
    return fresh_head(model, head_init_std, bn_head, grad_checkpointing)


def fresh_head(model: nn.Module, head_init_std: float, bn_head: bool, grad_checkpointing: bool) -> nn.Module:
    """The classifier's head: trunc-normal(std=head_init_std) weight, zero bias, behind the linear probe's
    ``BatchNorm1d(affine=False, eps=1e-6)`` with ``bn_head``; timm's activation checkpointing of the blocks."""
    trunc_normal_(model.head.weight, std=head_init_std)
    nn.init.zeros_(model.head.bias)
    if bn_head:
        model.head = nn.Sequential(nn.BatchNorm1d(model.head.in_features, affine=False, eps=1e-6), model.head)
    model.set_grad_checkpointing(grad_checkpointing)
    return model


def as_export(source, allow_pickle: bool = False, variant: Optional[str] = None) -> BackboneExport:
    """``source`` as a backbone export: one already read, or a path / loaded checkpoint to read (``variant``:
    ``read_backbone``'s, which network of a file that holds several)."""
    return source if isinstance(source, BackboneExport) else read_backbone(source, allow_pickle, variant=variant)


def vit_backbone_state(model: nn.Module, source, allow_pickle: bool = False, variant: Optional[str] = None
                       ) -> Tuple[Dict[str, torch.Tensor], str, List[str], List[str]]:
    """The encoder weights of ``source`` (an export, a path, or a loaded checkpoint) as ``model`` takes them.

    Returns (state_dict, the source's kind, dropped source keys, notes): the decoder and
    any classifier are dropped, the position table resized to the model's grid (a ``Beit``'s
    relative position tables too, by timm's ``set_input_size``).
    """
    export = as_export(source, allow_pickle, variant)
    if export.family != "vit":
        raise CheckpointFormatError(
            f"expected a ViT checkpoint (MAE, MoCo v3, timm, DeiT), found {export.provenance.layout} ({export.arch})")
    if isinstance(model, Beit) and export.shape.get("beit"):
        export = resample_beit(export, model.patch_embed.img_size[0])  # the classifier's size: square
        return dict(export.state_dict), export.provenance.layout, list(export.dropped), list(export.notes)
    refuse_beit(export, "timm's VisionTransformer classifier")
    sd, notes = dict(export.state_dict), list(export.notes)
    if sd["pos_embed"].shape != model.pos_embed.shape:
        old = tuple(sd["pos_embed"].shape)
        prefix_rows = 0 if model.no_embed_class else model.num_prefix_tokens  # DINOv2-reg's table: the grid only
        sd["pos_embed"] = resize_pos_embed(sd["pos_embed"], model.patch_embed.grid_size, prefix_rows)
        notes.append(f"resized pos_embed {old} -> {tuple(sd['pos_embed'].shape)}")
    return sd, export.provenance.layout, list(export.dropped), notes


def load_vit_backbone(model: nn.Module, source, allow_pickle: bool = False,
                      name: Optional[str] = None) -> ConversionReport:
    """Load pretrained encoder weights into ``model``; the new head (and ``fc_norm``) stay fresh.

    With average pooling the pretrained final ``norm`` has no place in the model and is
    reported as dropped by design; any other missing or unexpected key, or a shape
    mismatch, is an error that lists them.
    """
    name = name or source_name(source)
    try:
        sd, kind, dropped, notes = vit_backbone_state(model, source, allow_pickle)
    except CheckpointFormatError as e:
        raise (CheckpointFormatError(f"{name}: {e}") if name not in str(e) else e) from None
    target = model.state_dict()
    uses_fc_norm = not isinstance(model.fc_norm, nn.Identity)
    unused_by_design = [k for k in sd if k.startswith("norm.") and uses_fc_norm and k not in target]
    sd = {k: v for k, v in sd.items() if k not in unused_by_design}
    fresh = ("head.", "fc_norm.")
    bad = [f"{k} (shape {tuple(v.shape)} != {tuple(target[k].shape)})"
           for k, v in sd.items() if k in target and v.shape != target[k].shape]
    result = model.load_state_dict(sd, strict=False) if not bad else None
    if result is not None:
        bad += [f"{k} (missing)" for k in result.missing_keys if not k.startswith(fresh)]
        bad += [f"{k} (unexpected)" for k in result.unexpected_keys]
    if bad:
        raise CheckpointFormatError(
            f"{name} ({kind}) does not fit the ViT classifier: {', '.join(bad[:12])}"
            + (f" (+{len(bad) - 12} more)" if len(bad) > 12 else "")
        )
    if unused_by_design:
        notes.append("global average pooling: the pretrained final norm is unused; fc_norm starts fresh")
    elif isinstance(model, Beit) and model.global_pool == "avg":
        notes.append("BEiT's linear probe: the final norm per token, then the mean of the patch tokens")
    return ConversionReport(
        name, kind, f"timm {type(model).__name__} (global_pool={model.global_pool})", converted=len(sd),
        dropped=dropped + unused_by_design, missing_by_design=list(result.missing_keys), notes=notes,
    )


def source_name(source) -> str:
    if isinstance(source, BackboneExport):
        return source.provenance.source
    return str(source) if not isinstance(source, dict) else "<state dict>"


# ---------------------------------------------------------------- layer decay
def layer_id_for_vit(name: str, num_layers: int) -> int:
    """The layer of a parameter (BEiT / MAE rule): 0 for the embeddings (timm's ``Beit``'s shared
    ``rel_pos_bias`` among them), i + 1 for ``blocks.i``, ``num_layers`` (= depth + 1) for everything after
    the blocks (final norm, fc_norm, head)."""
    if name in ("cls_token", "pos_embed", "reg_token", "dist_token") or \
            name.startswith(("patch_embed", "norm_pre", "rel_pos_bias")):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return num_layers


def param_groups_layer_decay(model: nn.Module, weight_decay: float = 0.05, layer_decay: float = 0.75
                             ) -> List[Dict]:
    """Optimizer groups with ``lr_scale = layer_decay ** (depth + 1 - layer)``.

    ``pretrain.schedule.set_lr`` multiplies the scheduled lr by each group's
    ``lr_scale``. No weight decay on 1-d tensors (biases, norms) and on what the model's
    ``no_weight_decay`` names: the position embedding and tokens (and timm ``Beit``'s relative
    position tables). (timm's ``param_groups_layer_decay`` agrees
    with this for average pooling but ranks the final norm with the last block.)
    """
    num_layers = len(model.blocks) + 1
    no_decay_names = set(model.no_weight_decay())
    groups: Dict[Tuple[int, bool], Dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decay = not (p.ndim == 1 or name in no_decay_names)
        layer = layer_id_for_vit(name, num_layers)
        group = groups.setdefault((layer, decay), {
            "params": [], "param_names": [], "weight_decay": weight_decay if decay else 0.0,
            "lr_scale": layer_decay ** (num_layers - layer), "layer_id": layer,
        })
        group["params"].append(p)
        group["param_names"].append(name)
    return [groups[k] for k in sorted(groups)]
