"""Checkpoints -> detectron2 weights, with a report of what was carried over.

Both start from the backbone export (``pretrain.backbones.read_backbone``: any pretraining
method's checkpoint, the authors' or the project's, timm / DeiT / torchvision files), by family,
each into the detectron2 module behind the published numbers:

* ViTs (MAE, MoCo v3, timm and DeiT ViTs) -> detectron2's ``ViT`` (ViTDet), under the Mask R-CNN's names
  ``backbone.net.*``. The decoder, the classifier, the final ``norm`` and the
  ``cls_token`` are dropped by design (ViTDet has no class token and no final
  norm); the position table keeps its class row, as detectron2's ViT expects
  with ``pretrain_use_cls_token=True``. ``patch_size`` resizes the patch
  embedding (ViT-H/14 -> 16 for ViTDet) and the position table, keeping the
  pretraining image size. The kernel is resized as the ViTDet authors made
  ``mae_pretrain_vit_huge_p14to16.pth`` behind the published ViTDet-H numbers:
  bicubic interpolation (``patch_resize="bicubic"``, the default). FlexiViT's
  pseudo-inverse resize (``"pinv"``: a patch upsampled to the new size embeds as
  before) is an option, and a deviation from the published recipe.
  The published ViTs' options (LayerScale, registers, SwiGLU, CLIP's ``norm_pre``,
  activation and eps) keep their timm names for the project's ViTDet backbone
  (``transfer.detection.backbones.ViT``), whose arguments the file records
  (``sslkit.net``); a patch-14 ViT is converted to 16 by default. BEiT v1 / v2 and data2vec keep their
  relative position bias per block (``rel_pos_bias_grid``; the class token's entries dropped, ViTDet having
  none), their q / v biases as ``qkv.bias`` with a zero key bias, and LayerScale (``beit_to_vitdet``).
* ResNets (MoCo v1/v2/v3, torchvision) ->
  detectron2's ``ResNet`` names (``stem``, ``res2``-``res5``, ``shortcut``,
  ``convK.norm``), with ``matching_heuristics`` so that detectron2 places
  ``res5`` in the backbone (FPN) or in the C4 box head alike, as the MoCo
  authors' converter does.

Outputs: ``.pkl`` (pickle of numpy arrays: ``{"model", "__author__",
"matching_heuristics"}``, detectron2's model-zoo format) or ``.pth``
(``torch.save`` of the same dict with tensors). Both also carry
``"sslkit": {"pretrain", "backbone", "source"}`` for the results files. Every
conversion is checked against the detectron2 module it targets (built on the
meta device), and the report separates what is dropped or missing by design
(relative position terms, the pyramid, the heads) from real mismatches.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch

from pretrain.backbones import VIT_ARCHS, BackboneExport, read_backbone
from pretrain.checkpoint import CheckpointFormatError, save_atomic
from pretrain.pos_embed import resize_pos_embed
from transfer.convert import ConversionReport, compare_keys

from . import require_detectron2
from .utils import meta_init

__all__ = [
    "convert", "load_converted", "vit_to_detectron2", "resnet_to_detectron2", "resize_patch_embed",
    "vit_name", "backbone_name", "vitdet_net_args", "pyramid_patch_size", "beit_to_vitdet", "AUTHOR", "VIT_PREFIX",
    "PATCH_RESIZE",
]

AUTHOR = "sslkit"  # the "__author__" of the files written here
VIT_PREFIX = "backbone.net."  # where detectron2's ViTDet keeps the ViT
# Source keys ViTDet has no use for: the final norm (ViTDet reads the last block's
# output), the class token (no class token), the classifier (a new task).
_VIT_UNUSED = ("cls_token", "norm.")
_VIT_SIZES = {192: "tiny", 384: "small", 768: "base", 1024: "large", 1280: "huge"}
# How a patch embedding is resized to another patch size: the ViTDet authors' bicubic
# interpolation of the kernel (their ViT-H/14 -> 16 file), or FlexiViT's pseudo-inverse resize.
PATCH_RESIZE = ("bicubic", "pinv")


# --------------------------------------------------------------------- labels
def vit_name(embed_dim: int, depth: int, patch_size: int) -> str:
    """``vit_base_patch16`` ...: the timm-style name of a ViT shape (``vit_pico_patch8`` for the demo preset)."""
    size = next((name.split("_")[1] for name, a in VIT_ARCHS.items() if (a.embed_dim, a.depth) == (embed_dim, depth)),
                _VIT_SIZES.get(embed_dim, f"d{embed_dim}x{depth}"))
    return f"vit_{size}_patch{patch_size}"


def backbone_name(model: torch.nn.Module) -> str:
    """``vit_base_patch16``, ``resnet50`` ...: read off the detectron2 modules of a model."""
    require_detectron2()
    from detectron2.modeling.backbone import BottleneckBlock, ViT
    from detectron2.modeling.backbone.resnet import BasicBlock

    model = getattr(model, "module", model)
    for m in model.modules():
        if isinstance(m, ViT):
            return vit_name(m.patch_embed.proj.out_channels, len(m.blocks), m.patch_embed.proj.kernel_size[0])
    bottlenecks = sum(isinstance(m, BottleneckBlock) for m in model.modules())
    basics = sum(isinstance(m, BasicBlock) for m in model.modules())
    if bottlenecks:
        return f"resnet{3 * bottlenecks + 2}"
    if basics:
        return f"resnet{2 * basics + 2}"
    return type(getattr(model, "backbone", model)).__name__.lower()


# ------------------------------------------------------------------------ ViT
def resize_patch_embed(weight: torch.Tensor, patch_size: int, method: str = "bicubic") -> torch.Tensor:
    """[D, C, p, p] -> [D, C, q, q].

    ``bicubic``: the kernel interpolated as an image (``F.interpolate``, bicubic,
    ``align_corners=False``), as the ViTDet authors resized MAE's ViT-H/14 for
    their published ViTDet-H. ``pinv``: FlexiViT's pseudo-inverse resize (timm's
    implementation): for a patch x and its bicubic resize B x to q x q,
    <B x, w'> = <x, w> when q >= p, so an upsampled patch embeds as before.
    """
    if method == "bicubic":
        resized = torch.nn.functional.interpolate(weight.float(), size=(patch_size, patch_size), mode="bicubic",
                                                  align_corners=False)
    elif method == "pinv":
        from timm.layers import resample_patch_embed

        resized = resample_patch_embed(weight.float(), [patch_size, patch_size])
    else:
        raise ValueError(f"patch embedding resize must be one of {', '.join(PATCH_RESIZE)}, got {method!r}")
    return resized.to(weight.dtype)


def pyramid_patch_size(patch_size: int) -> int:
    """The patch size ViTDet's pyramid takes for a ViT's: its own when a power of two, else 16 (no scale of the
    pyramid reaches strides 4 ... 32 from 14), as the ViTDet authors resized MAE's ViT-H/14 for ViTDet-H."""
    return 16 if patch_size & (patch_size - 1) else patch_size


def vit_to_detectron2(source, patch_size: Optional[int] = None, patch_resize: str = "bicubic"
                      ) -> Tuple[Dict[str, torch.Tensor], List[str], List[str], Dict]:
    """A ViT backbone (an export, or any checkpoint ``read_backbone`` reads) -> detectron2 ``ViT`` weights
    under ``backbone.net.``.

    Returns (weights, dropped source keys, notes, shape info with the
    ``pretrain_img_size`` the position table was made for). The info's
    ``backbone`` names the pretrained ViT (``vit_huge_patch14`` also when its
    patch embedding is resized to 16), as the published numbers do.
    """
    export = source if isinstance(source, BackboneExport) else read_backbone(dict(source))
    if export.family != "vit":
        raise CheckpointFormatError(f"expected a ViT checkpoint, found {export.provenance.layout} ({export.arch})")
    info = dict(export.shape)
    notes: List[str] = list(export.notes)
    sd = export.state_dict
    dropped = sorted(export.dropped + [k for k in sd if k.startswith(_VIT_UNUSED)])
    out = {k: v for k, v in sd.items() if not k.startswith(_VIT_UNUSED)}
    if info.get("beit"):
        out, info["adapted"], beit_notes = beit_to_vitdet(out)
        notes += beit_notes
        info["rel_pos_bias_grid"] = _beit_table_grid(out)
    grid = info["img_size"] // info["patch_size"]
    pos = out.get("pos_embed")  # (BEiT's files mostly have none: its relative position bias instead)
    # The table's prefix rows: the class row (kept: detectron2's pretrain_use_cls_token), then the registers'
    # (folded into the register tokens: a register's position term is a constant added to it).
    class_row = info.get("class_token", True) and not info.get("no_embed_class", False)
    regs = info.get("reg_tokens", 0)
    prefix = 0 if info.get("no_embed_class", False) else int(info.get("class_token", True)) + regs
    if pos is not None and pos.shape[1] != grid * grid + prefix:
        raise CheckpointFormatError(f"pos_embed has {pos.shape[1]} rows; expected {prefix} prefix rows and a square "
                                    f"grid of {grid}x{grid}")
    if pos is not None and prefix and regs:
        out["reg_token"] = out["reg_token"] + pos[:, prefix - regs:prefix]
        pos = torch.cat([pos[:, :prefix - regs], pos[:, prefix:]], dim=1)
        notes.append(f"the {regs} register rows of the position table added to the register tokens")
    info["pretrain_use_cls_token"] = class_row
    old_patch = info["patch_size"]
    pretrained_name = vit_name(info["embed_dim"], info["depth"], old_patch)
    if patch_size and patch_size != old_patch:
        out["patch_embed.proj.weight"] = resize_patch_embed(out["patch_embed.proj.weight"], patch_size, patch_resize)
        new_grid = max(1, round(grid * old_patch / patch_size))
        pos = None if pos is None else resize_pos_embed(pos, new_grid, num_prefix_tokens=int(class_row))
        how = ("bicubic, as the ViTDet authors" if patch_resize == "bicubic"
               else "pseudo-inverse resize: a deviation from the ViTDet authors' bicubic kernel")
        notes.append(f"patch embedding resized {old_patch}x{old_patch} -> {patch_size}x{patch_size} "
                     f"({how}); position grid {grid}x{grid} -> {new_grid}x{new_grid}")
        info.update(patch_size=patch_size, img_size=new_grid * patch_size)
        grid = new_grid
    if pos is not None:
        out["pos_embed"] = pos
    info["pretrain_img_size"] = grid * info["patch_size"]
    info["backbone"] = pretrained_name
    info["net"] = vitdet_net_args(info)
    return {VIT_PREFIX + k: v for k, v in out.items()}, dropped, notes, info


def vitdet_net_args(info: Dict) -> Dict[str, Any]:
    """The arguments of the project's ViTDet backbone (``transfer.detection.backbones.ViT``) that the
    checkpoint fixes: its shape and its options (LayerScale, SwiGLU, ``pre_norm``, activation, LayerNorm eps,
    registers); a LazyConfig's ``model.backbone.net`` takes them (``fit_vitdet_to_checkpoint``)."""
    net = {k: info[k] for k in ("embed_dim", "depth", "num_heads", "mlp_ratio", "patch_size", "pretrain_img_size",
                                "pretrain_use_cls_token")}
    net.update(init_values=info.get("init_values"), mlp_layer=info.get("mlp_layer", "mlp"),
               pre_norm=info.get("pre_norm", False), act_layer=info.get("act_layer", "gelu"),
               norm_eps=info.get("norm_eps", 1e-6), reg_tokens=info.get("reg_tokens", 0))
    if info.get("beit"):  # BEiT's position terms replace detectron2's decomposed ones; its key has no bias
        net.update(use_abs_pos=info["abs_pos_emb"], qkv_bias=info.get("qkv_bias", True))
        if info.get("rel_pos_bias_grid"):
            net.update(rel_pos_bias_grid=info["rel_pos_bias_grid"], use_rel_pos=False)
    return net


def beit_to_vitdet(sd: Dict[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], Dict[str, str], List[str]]:
    """A BEiT export's tensors (timm ``Beit`` names) -> the project's ViTDet: (weights, {source key: the key it went
    into, for the tensors renamed or combined}, notes). The q / v biases become ``qkv.bias`` with a zero key bias
    (BEiT's key has none), ``gamma_1`` / ``gamma_2`` LayerScale's ``ls1.gamma`` / ``ls2.gamma``, and each block's
    relative position table loses its last 3 rows (class to patches, patches to class, class to class): ViTDet has
    no class token. The rest keeps its name."""
    out, adapted, tables = {}, {}, 0
    for key, value in sd.items():
        if key.endswith(".attn.v_bias"):
            continue  # with q_bias
        if key.endswith(".attn.q_bias"):
            attn = key[:-len("q_bias")]
            out[attn + "qkv.bias"] = torch.cat([value, torch.zeros_like(value), sd[attn + "v_bias"]])
            adapted[key] = adapted[attn + "v_bias"] = attn + "qkv.bias"
        elif key.endswith((".gamma_1", ".gamma_2")):
            out[key[:-len("gamma_1")] + f"ls{key[-1]}.gamma"] = value
            adapted[key] = key[:-len("gamma_1")] + f"ls{key[-1]}.gamma"
        elif key.endswith(".attn.relative_position_bias_table"):
            out[key] = value[:-3]
            tables += 1
        else:
            out[key] = value
    notes = []
    if any(k.endswith("q_bias") for k in adapted):
        notes.append("adapted: blocks.*.attn.q_bias and v_bias -> blocks.*.attn.qkv.bias with a zero key bias "
                     "(BEiT's key has none; detectron2's qkv trains it from there)")
    if any(k.endswith("gamma_1") for k in adapted):
        notes.append("adapted: LayerScale blocks.*.gamma_1 / gamma_2 -> blocks.*.ls1.gamma / ls2.gamma")
    if tables:
        notes.append(f"dropped by design: the 3 class-token entries (class to patches, patches to class, class to "
                     f"class: the last rows) of the {tables} blocks' relative_position_bias_table, ViTDet having no "
                     f"class token; the patch part is resampled bicubically at forward for a window of another size")
    return out, adapted, notes


def _beit_table_grid(sd: Dict[str, torch.Tensor]) -> int:
    """The grid side a BEiT's relative position tables (without the class entries) were made for; 0: none."""
    table = sd.get("blocks.0.attn.relative_position_bias_table")
    if table is None:
        return 0
    side = math.isqrt(table.shape[0])
    if side * side != table.shape[0] or side % 2 == 0:
        raise CheckpointFormatError(f"a relative position table of {table.shape[0] + 3} rows is not BEiT's "
                                    f"(2G - 1)^2 + 3 for a square grid")
    return (side + 1) // 2


def _vitdet_model_keys(info: Dict) -> Dict[str, torch.Tensor]:
    """State dict (meta tensors) of detectron2's ViTDet Mask R-CNN with the checkpoint's ViT shape."""
    require_detectron2()
    from detectron2 import model_zoo
    from detectron2.config import instantiate

    from .backbones import ViT

    model = model_zoo.get_config("common/models/mask_rcnn_vitdet.py").model
    net = model.backbone.net
    net._target_ = ViT  # the project's: it has the places of LayerScale, registers, SwiGLU, norm_pre
    net.update(**info["net"],
               window_block_indexes=[i for i in range(info["depth"]) if (i + 1) % max(1, info["depth"] // 4)])
    with meta_init():
        return instantiate(model).state_dict()


def _vit_by_design(key: str) -> bool:
    # Everything but the ViT is new in detection; in the ViT only the relative position terms are.
    return not key.startswith(VIT_PREFIX) or key.endswith(("attn.rel_pos_h", "attn.rel_pos_w"))


# --------------------------------------------------------------------- ResNet
def _resnet_name(key: str) -> str:
    """torchvision ResNet name -> detectron2 ResNet name."""
    parts = key.split(".")
    if parts[0].startswith("layer"):  # layer1.0.bn2.weight -> res2.0.conv2.norm.weight
        stage = f"res{int(parts[0][len('layer'):]) + 1}"
        rest = ".".join(parts[2:])
        rest = rest.replace("downsample.0.", "shortcut.").replace("downsample.1.", "shortcut.norm.")
        for i in (1, 2, 3):
            rest = rest.replace(f"bn{i}.", f"conv{i}.norm.")
        return f"{stage}.{parts[1]}.{rest}"
    return "stem." + key.replace("bn1.", "conv1.norm.")  # conv1.weight, bn1.* -> stem.conv1(.norm)


def resnet_to_detectron2(source) -> Tuple[Dict[str, torch.Tensor], List[str], str]:
    """A ResNet backbone (an export, or any checkpoint ``read_backbone`` reads) -> detectron2 ``ResNet`` names;
    returns (weights, dropped keys, arch)."""
    export = source if isinstance(source, BackboneExport) else read_backbone(dict(source))
    if export.family != "resnet":
        raise CheckpointFormatError(f"expected a ResNet checkpoint, found {export.provenance.layout} ({export.arch})")
    # The counters of batch norm are not weights (frozen BN has none).
    sd = export.state_dict
    out = {_resnet_name(k): v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    dropped = export.dropped + [k for k in sd if k.endswith("num_batches_tracked")]
    return out, sorted(dropped), export.arch


def _resnet_model_keys(arch: str) -> Dict[str, torch.Tensor]:
    """State dict (meta tensors) of detectron2's ResNet (stem .. res5) of the same depth."""
    require_detectron2()
    from detectron2.modeling.backbone import BasicStem, ResNet

    match = re.fullmatch(r"resnet(\d+)", arch)
    if match is None:
        raise CheckpointFormatError(f"{arch}: detectron2's default ResNet stages cover resnet18 to resnet152 only")
    depth = int(match.group(1))
    stages = ResNet.make_default_stages(depth, norm="FrozenBN", **({"stride_in_1x1": False} if depth >= 50 else {}))
    with meta_init():
        return ResNet(BasicStem(3, 64, norm="FrozenBN"), stages, out_features=["res5"]).state_dict()


# ------------------------------------------------------------------- entries
def _read(source, allow_pickle: bool, name: Optional[str] = None, variant: Optional[str] = None) -> BackboneExport:
    return read_backbone(source, allow_pickle, path=name, variant=variant)


def _convert_export(export: BackboneExport, patch_size: Optional[int], patch_resize: str = "bicubic"
                    ) -> Tuple[Dict[str, Any], List[str], Dict]:
    notes: List[str] = []
    if export.family == "vit":
        weights, dropped, notes, info = vit_to_detectron2(export, patch_size, patch_resize)
        meta = {k: info[k] for k in ("backbone", "pretrain_img_size", "patch_size", "embed_dim", "depth", "num_heads",
                                     "net")}
        meta.update(pixel_mean=[255 * m for m in export.mean], pixel_std=[255 * s for s in export.std])
        heuristics = False  # full names: loads into any ViTDet model as it is
    else:
        if patch_size:
            raise CheckpointFormatError("--patch-size applies to ViTs; this is a ResNet checkpoint: leave it out")
        weights, dropped, arch = resnet_to_detectron2(export)
        info = meta = {"backbone": arch, "weights": "torchvision"}  # the layout it converts into (7x7 stem, stride 3x3)
        heuristics = True  # res5 sits in the backbone (FPN) or in the box head (C4)
    meta.update(pretrain=export.label, source=export.provenance.source)
    if export.provenance.epochs is not None:
        meta["pretrain_epochs"] = export.provenance.epochs
    converted = {"model": weights, "__author__": AUTHOR, "matching_heuristics": heuristics, "sslkit": meta}
    return converted, notes, {**info, "dropped": dropped}


def load_converted(source, allow_pickle: bool = False, patch_size: Optional[int] = None, name: Optional[str] = None,
                   patch_resize: str = "bicubic", variant: Optional[str] = None) -> Tuple[Dict[str, Any], List[str]]:
    """A checkpoint converted in memory: the dict detectron2's checkpointer loads, and notes.

    ``{"model": weights, "__author__": "sslkit", "matching_heuristics": bool,
    "sslkit": {"pretrain", "backbone", "source", ...}}``. ``name``: the file a loaded ``source`` came from;
    ``variant``: which network of a file that holds several (``read_backbone``'s), recorded in ``sslkit`` when given.
    """
    converted, notes, _ = _convert_export(_read(source, allow_pickle, name, variant), patch_size, patch_resize)
    if variant is not None:  # the results record which network of the file was trained (as the other tools do)
        converted["sslkit"]["variant"] = variant
    return converted, notes


def convert(source, output=None, allow_pickle: bool = False, patch_size: Optional[int] = None,
            patch_resize: str = "bicubic", **_) -> ConversionReport:
    """Convert a MAE / ViT or MoCo / ResNet checkpoint for detectron2; write ``output`` when it matches.

    ``output``: ``.pkl`` (detectron2 model-zoo pickle of numpy arrays) or ``.pth``. ``patch_size``
    resizes a ViT's patch embedding by ``patch_resize`` (``bicubic``, the ViTDet authors'; ``pinv``); by
    default to ``pyramid_patch_size`` (14 -> 16: DINOv2).
    """
    if output is not None and Path(output).suffix not in (".pkl", ".pth"):
        raise ValueError(f"detectron2 reads .pkl or .pth files; got output {output}")
    export = _read(source, allow_pickle)
    if patch_size is None and export.family == "vit":
        patch_size = pyramid_patch_size(export.shape["patch_size"])  # the file is for ViTDet's pyramid
    converted, notes, info = _convert_export(export, patch_size, patch_resize)
    weights, meta = converted["model"], converted["sslkit"]
    if export.family == "vit":
        target = _vitdet_model_keys(info)
        design, bad = compare_keys(weights, target, _vit_by_design)
        target_name = (f"detectron2 ViTDet Mask R-CNN ({meta['backbone']}, ViT under {VIT_PREFIX}; "
                       f"patch_size={meta['patch_size']}, pretrain_img_size={meta['pretrain_img_size']})")
        rel = sum(k.startswith(VIT_PREFIX) for k in design)
        notes.append("missing by design: " + (f"{rel} relative position terms (zero-initialised) and " if rel else "")
                     + f"{len(design) - rel} tensors of the pyramid and the heads")
        mean, std = ([round(v, 3) for v in meta[k]] for k in ("pixel_mean", "pixel_std"))
        notes.append(f"input: RGB, the backbone's pixel mean {mean} / std {std} in 0-255 units (recorded in the file: "
                     f"the from-checkpoint configs take them; a MAE config has ImageNet's)")
    else:
        target = _resnet_model_keys(meta["backbone"])
        design, bad = compare_keys(weights, target, lambda k: False)
        target_name = f"detectron2 ResNet ({meta['backbone']}, stem..res5; matching_heuristics)"
        notes.append("input: RGB, ImageNet mean/std in 0-255 units, RESNETS.STRIDE_IN_1X1=False (torchvision "
                     "layout); res5 is placed by detectron2's matching heuristics (backbone or C4 head)")
    report = ConversionReport(export.provenance.source, export.provenance.layout, target_name, converted=len(weights),
                              dropped=info["dropped"], missing_by_design=design, mismatched=bad,
                              notes=notes + [f"pretraining: {meta['pretrain']}"])
    if output and report.ok:
        report.output = str(write(converted, output))
    return report


def write(converted: Dict[str, Any], output) -> Path:
    """Write a converted checkpoint: ``.pkl`` as numpy arrays (detectron2's model zoo), ``.pth`` as tensors."""
    if Path(output).suffix == ".pkl":
        converted = {**converted, "model": {k: v.detach().cpu().numpy() for k, v in converted["model"].items()}}
    return save_atomic(converted, output)
