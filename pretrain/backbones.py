"""The backbone every method exports and every transfer reads, and the conversions into it.

Two canonical forms, each a model users already have:

* a ViT under the names of timm's ``VisionTransformer`` (``num_classes=0``): ``patch_embed.proj``,
  ``cls_token``, ``pos_embed`` (class row first), ``blocks.i.*``, ``norm``;
* a ResNet under torchvision's names, without ``fc``.

A ``BackboneExport`` is one of them with its shape (ViT heads included: they are not in the tensor
shapes), what was left out, and where it came from (``Provenance``: method, results label, epochs,
data). ``read_backbone`` makes one of any file users hold. A pretraining method knows its own
checkpoint layout (the project's files and the authors'), so a file in one is read by asking the
method (``pretrain.methods``); files of no method (timm, DeiT, torchvision, a bare encoder) are read
here, and the published files of other families (DINO, DINOv2, iBOT, I-JEPA, CLIP, the SSL ResNet-50s) by
their format's reader (``pretrain.formats``). ``BackboneExport.save`` writes a folder a user can publish:
``model.safetensors`` and a timm ``config.json``, which ``timm.create_model("local-dir:FOLDER",
pretrained=True)`` loads; ``save_file`` the same in one torch file (the config beside the tensors), which the
tools take wherever they take a checkpoint (the ladder's random twin of a backbone no preset describes).

The canonical ViT is timm's ``VisionTransformer`` with the options timm has for the published
families (``VIT_OPTIONS``): LayerScale, register tokens, no class token (average pooling), SwiGLU,
CLIP's norm before the blocks, QuickGELU and LayerNorm eps.
A shape names an option only when it differs from the plain ViT, so a plain ViT's shape is as before.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch

from .checkpoint import CheckpointFormatError, describe_state_dict, load_file, save_atomic, strip_prefix, \
    unwrap_state_dict
from .transforms import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "ViTArch", "VIT_ARCHS", "RESNET_PREFIXES", "Provenance", "BackboneExport", "read_backbone", "vit_shape",
    "vit_export", "resnet_export", "resnet_arch", "is_resnet_name", "CLASSIFIER_KEYS", "VIT_OPTIONS",
    "NO_NORMALIZATION",
]


# ------------------------------------------------------------------ shapes
@dataclass(frozen=True)
class ViTArch:
    """A ViT encoder's shape; ``timm_name`` is the timm model of that shape (None: no timm preset)."""

    patch_size: int
    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float = 4.0
    timm_name: Optional[str] = None


VIT_ARCHS: Dict[str, ViTArch] = {
    "vit_base_patch16": ViTArch(16, 768, 12, 12, timm_name="vit_base_patch16_224"),
    "vit_large_patch16": ViTArch(16, 1024, 24, 16, timm_name="vit_large_patch16_224"),
    "vit_huge_patch14": ViTArch(14, 1280, 32, 16, timm_name="vit_huge_patch14_224"),
    "vit_small_patch16": ViTArch(16, 384, 12, 6, timm_name="vit_small_patch16_224"),
    "vit_tiny_patch16": ViTArch(16, 192, 12, 3, timm_name="vit_tiny_patch16_224"),
    "vit_pico_patch8": ViTArch(8, 96, 4, 3),  # demo size: trains in minutes on 2 cores at 64 px
    # The published families' other shapes (DINO S/8, B/8; DINOv2 and CLIP /14; I-JEPA H/16; CLIP B/32; DINOv2's
    # giant, 1536 wide): named so that their results, published rows and recipes say which ViT they are. No timm
    # preset is plain at these shapes (timm's are DINOv2's or CLIP's, with their options): model_args say all.
    "vit_small_patch8": ViTArch(8, 384, 12, 6),
    "vit_base_patch8": ViTArch(8, 768, 12, 12),
    "vit_small_patch14": ViTArch(14, 384, 12, 6),
    "vit_base_patch14": ViTArch(14, 768, 12, 12),
    "vit_large_patch14": ViTArch(14, 1024, 24, 16),
    "vit_giant2_patch14": ViTArch(14, 1536, 40, 24),
    "vit_huge_patch16": ViTArch(16, 1280, 32, 16),
    "vit_base_patch32": ViTArch(32, 768, 12, 12),
}
RESNET_PREFIXES = ("resnet", "resnext", "wide_resnet")
# Keys of a fine-tuned / supervised timm ViT that a backbone has no use for.
CLASSIFIER_KEYS = ("head.", "fc_norm.", "head_dist.", "dist_token")
# timm VisionTransformer options of the published families, with the plain ViT's values (MAE, DeiT, DINO):
# LayerScale (init_values; the trained gammas replace the initial value), register tokens, position table
# without the prefix tokens' rows (DINOv2 with registers), no class token with the final norm per token
# before average pooling (I-JEPA), the MLP ("swiglu": timm's SwiGLUPacked with SiLU, DINOv2 ViT-g), a norm
# before the blocks (CLIP's ln_pre; the patch embedding then has no bias), the MLP's activation (a timm name:
# "quick_gelu" for OpenAI's CLIP) and the LayerNorms' eps (CLIP's are torch's default, 1e-5). A ViT's
# shape holds an option only when it differs from this value.
VIT_OPTIONS: Dict[str, Any] = {"class_token": True, "reg_tokens": 0, "no_embed_class": False, "init_values": None,
                               "global_pool": "token", "fc_norm": None, "mlp_layer": "mlp",
                               "dynamic_img_size": False, "pre_norm": False, "act_layer": "gelu", "norm_eps": 1e-6}
# The entry of BackboneExport.save_file's file that holds the export's config.json.
SAVED_CONFIG = "sslkit_backbone"
# The input normalisation of a backbone trained on unnormalised [0, 1] pixels (SimCLR v1's converted weights).
NO_NORMALIZATION = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))


def is_resnet_name(arch: str) -> bool:
    return arch.startswith(RESNET_PREFIXES)


def vit_shape(state_dict: Mapping[str, torch.Tensor], num_heads: Optional[int] = None,
              no_embed_class: Optional[bool] = None) -> Dict:
    """A ViT's shape read off its tensors (timm names): patch_size, embed_dim, depth, num_heads,
    mlp_ratio, img_size (the position table's), ``arch``, the preset of that shape or a made-up
    name, and the ``VIT_OPTIONS`` whose value differs from the plain ViT's. Heads are not in the
    shapes: ``num_heads`` when the caller knows them, else the preset's (the paper models), else
    width / 64. ``no_embed_class``: whether the position table lacks the prefix tokens' rows, when the
    caller knows (else read off the table's length, which a few small grids leave ambiguous)."""
    w = state_dict["patch_embed.proj.weight"]
    embed_dim, patch_size = int(w.shape[0]), int(w.shape[-1])
    depth = 1 + max(int(k.split(".")[1]) for k in state_dict if k.startswith("blocks."))
    class_token = "cls_token" in state_dict
    reg_tokens = int(state_dict["reg_token"].shape[1]) if "reg_token" in state_dict else 0
    prefix, rows = int(class_token) + reg_tokens, int(state_dict["pos_embed"].shape[1])
    # The table has the prefix tokens' rows unless no_embed_class; a grid is square (rows - prefix and rows
    # are both squares for no grid of a published model: 1 + 14 ** 2, 5 + 37 ** 2, ...).
    if no_embed_class is None:
        no_embed_class = prefix > 0 and not _is_square(rows - prefix) and _is_square(rows)
    grid = rows if no_embed_class else rows - prefix
    fc1, fc2 = state_dict["blocks.0.mlp.fc1.weight"].shape[0], state_dict["blocks.0.mlp.fc2.weight"].shape[1]
    preset = next((name for name, a in VIT_ARCHS.items()
                   if (a.patch_size, a.embed_dim, a.depth) == (patch_size, embed_dim, depth)), None)
    heads = num_heads or (VIT_ARCHS[preset].num_heads if preset else max(1, embed_dim // 64))
    # Registers make another network of the shape (DINOv2's _reg4 releases): the name says so, as timm's does,
    # so that results, published rows and baselines of the two never mix.
    arch = (preset or f"vit_{embed_dim}d{depth}_patch{patch_size}") + (f"_reg{reg_tokens}" if reg_tokens else "")
    shape = {"arch": arch, "patch_size": patch_size,
             "embed_dim": embed_dim, "depth": depth, "num_heads": heads,
             "mlp_ratio": fc1 / embed_dim,  # timm's: fc1's width (SwiGLU: both halves) over the embedding's
             "img_size": int(round(grid ** 0.5)) * patch_size}
    options = {"class_token": class_token, "reg_tokens": reg_tokens, "no_embed_class": no_embed_class,
               "init_values": 1e-5 if "blocks.0.ls1.gamma" in state_dict else None,
               "mlp_layer": "swiglu" if fc1 == 2 * fc2 else "mlp", "pre_norm": "norm_pre.weight" in state_dict}
    if not class_token:  # the final norm per token, then the mean of the tokens (I-JEPA's evaluation)
        options.update(global_pool="avg", fc_norm=False)
    return shape | {k: v for k, v in options.items() if v != VIT_OPTIONS[k]}


def _is_square(n: int) -> bool:
    return n > 0 and int(round(n ** 0.5)) ** 2 == n


def resnet_arch(state_dict: Mapping[str, torch.Tensor]) -> str:
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


# ------------------------------------------------------------------ export
@dataclass
class Provenance:
    """Where a backbone came from. ``label`` is the results files' pretraining label (``mae``,
    ``moco_v1`` / ``_v2`` / ``_v3``, ``supervised``, ``unknown``); ``method`` the registered method
    that trained it (empty for files of no method); ``epochs`` of pretraining, when the file says."""

    label: str = "unknown"
    method: str = ""
    epochs: Optional[int] = None
    data: Optional[str] = None  # what it was pretrained on, when the file says (a path, "synthetic")
    source: str = "<dict>"  # the file
    layout: str = ""  # what the file was, in words


@dataclass
class BackboneExport:
    family: str  # "vit" | "resnet"
    arch: str  # vit_base_patch16, resnet50, ... (a made-up name for a ViT of no preset's shape)
    state_dict: Dict[str, torch.Tensor]  # canonical names (module docstring)
    shape: Dict[str, Any] = field(default_factory=dict)  # ViT: vit_shape's keys; ResNet: {}
    dropped: List[str] = field(default_factory=list)  # source tensors left out, by design
    notes: List[str] = field(default_factory=list)  # what was adapted on the way
    provenance: Provenance = field(default_factory=Provenance)
    # The input normalisation it was trained with, of RGB in [0, 1]: ImageNet's for every family read
    # here but CLIP's (its own, pretrain.formats.clip) and SimCLR v1's converted ResNets (NO_NORMALIZATION:
    # mean 0, std 1, the pixels as they are).
    mean: Tuple[float, ...] = IMAGENET_MEAN
    std: Tuple[float, ...] = IMAGENET_STD

    @property
    def label(self) -> str:
        return self.provenance.label

    @property
    def preset(self) -> Optional[str]:
        """The architecture name that builds this network alone (``--random-init NAME``, the recipes' backbone
        keys): a ResNet's, or a ViT preset's when the ViT has its shape and none of ``VIT_OPTIONS``' other values;
        None for the rest (LayerScale, registers, CLIP's norms, BEiT's tables, a shape of no preset), whose
        network only the export itself describes."""
        if self.family != "vit":
            return self.arch
        a, s = VIT_ARCHS.get(self.arch), self.shape
        plain = (a is not None and not s.get("beit") and not any(k in s for k in VIT_OPTIONS)
                 and (s["num_heads"], s["mlp_ratio"]) == (a.num_heads, a.mlp_ratio))
        return self.arch if plain else None

    def vit_options(self) -> Dict[str, Any]:
        """The ``VIT_OPTIONS`` of this ViT (every one, defaults included)."""
        return {k: self.shape.get(k, default) for k, default in VIT_OPTIONS.items()}

    def vit_kwargs(self) -> Dict[str, Any]:
        """timm ``VisionTransformer`` keyword arguments for this ViT's options (the shape's other keys are
        the caller's: it may want another image size or a head): what ``timm_config`` writes, with the
        MLP and the norm as classes."""
        from functools import partial

        from timm.layers import SwiGLUPacked

        kwargs = {k: v for k, v in self.vit_options().items() if k not in ("mlp_layer", "norm_eps")
                  and not (k == "act_layer" and v == VIT_OPTIONS[k])}  # timm's default: torch's nn.GELU
        kwargs["norm_layer"] = partial(torch.nn.LayerNorm, eps=self.vit_options()["norm_eps"])
        if self.shape.get("mlp_layer", "mlp") == "swiglu":
            kwargs.update(mlp_layer=SwiGLUPacked, act_layer=torch.nn.SiLU)
        return kwargs

    def timm_config(self) -> Dict:
        """timm's ``config.json`` for this backbone (``architecture``, ``model_args``, ``pretrained_cfg``)."""
        if self.family == "vit" and self.shape.get("beit"):  # BEiT (pretrain.formats.beit): timm's Beit
            from .formats.beit import beit_model_args  # the formats import this module

            architecture, model_args = "beit_base_patch16_224", beit_model_args(self.shape)
            input_size, interpolation, crop_pct = [3, self.shape["img_size"], self.shape["img_size"]], "bicubic", 0.9
        elif self.family == "vit":
            s = self.shape
            preset = VIT_ARCHS.get(self.arch)
            architecture = preset.timm_name if preset and preset.timm_name and preset.num_heads == s["num_heads"] \
                else "vit_base_patch16_224"  # any ViT builder: model_args give the whole shape
            if s.get("mlp_layer", "mlp") == "swiglu":  # a class, not JSON: the one timm builder that sets it
                architecture = "vit_giant_patch14_dinov2"  # (SwiGLUPacked, SiLU); model_args give the rest
            # The norm is a class too: a CLIP builder sets LayerNorm with eps 1e-5 (its pre_norm is overridden below).
            eps = self.vit_options()["norm_eps"]
            if eps != VIT_OPTIONS["norm_eps"]:
                if eps != 1e-5 or architecture == "vit_giant_patch14_dinov2":
                    raise ValueError(f"no timm builder sets LayerNorm eps {eps} (with a {s.get('mlp_layer')} MLP)")
                architecture = "vit_base_patch16_clip_224"
            model_args = {"img_size": s["img_size"], "patch_size": s["patch_size"], "embed_dim": s["embed_dim"],
                          "depth": s["depth"], "num_heads": s["num_heads"], "mlp_ratio": s["mlp_ratio"],
                          "num_classes": 0}
            # The options that differ from the plain ViT's; a timm builder's own (the giant's LayerScale,
            # 518 px table) are overridden by their plain value.
            # (Classes: the MLP, the norm; the SwiGLU's activation is the builder's SiLU.)
            skip = ("mlp_layer", "norm_eps", "act_layer") if architecture == "vit_giant_patch14_dinov2" \
                else ("mlp_layer", "norm_eps")
            model_args |= {k: v for k, v in self.vit_options().items() if k not in skip
                           and (k in s or architecture in ("vit_giant_patch14_dinov2", "vit_base_patch16_clip_224"))}
            input_size, interpolation, crop_pct = [3, s["img_size"], s["img_size"]], "bicubic", 0.875
        else:
            architecture, model_args = self.arch, {"num_classes": 0}
            input_size, interpolation, crop_pct = [3, 224, 224], "bilinear", 0.875
        return {
            "architecture": architecture, "num_classes": 0, "num_features": self.num_features,
            "model_args": model_args,
            "pretrained_cfg": {"input_size": input_size, "interpolation": interpolation, "crop_pct": crop_pct,
                               "mean": list(self.mean), "std": list(self.std), "num_classes": 0,
                               "classifier": "head" if self.family == "vit" else "fc"},
            "sslkit": {"family": self.family, "arch": self.arch, "shape": self.shape,
                       "provenance": asdict(self.provenance), "dropped": self.dropped, "notes": self.notes},
        }

    @property
    def num_features(self) -> int:
        if self.family == "vit":
            return int(self.shape["embed_dim"])
        last = max(k for k in self.state_dict if k.startswith("layer4.") and k.endswith(".weight")
                   and self.state_dict[k].ndim == 1)
        return int(self.state_dict[last].shape[0])

    def save(self, folder) -> Path:
        """``folder/model.safetensors`` + ``folder/config.json``: loads with ``timm.create_model("local-dir:"
        + folder, pretrained=True)`` (and the weights alone into torchvision's ResNet with ``fc = Identity()``)."""
        folder = Path(folder)
        save_atomic({k: v.detach().cpu().contiguous() for k, v in self.state_dict.items()},
                    folder / "model.safetensors")
        save_atomic(self.timm_config(), folder / "config.json")
        return folder

    def save_file(self, path) -> Path:
        """One torch file of ``save``'s two: ``{"sslkit_backbone": config.json's dict, "state_dict": tensors}``
        (read back by ``read_backbone``, without pickled code)."""
        return save_atomic({SAVED_CONFIG: self.timm_config(),
                            "state_dict": {k: v.detach().cpu().contiguous() for k, v in self.state_dict.items()}},
                           path)


def vit_export(state_dict: Mapping[str, torch.Tensor], provenance: Provenance, num_heads: Optional[int] = None,
               dropped: Optional[List[str]] = None, prefix: str = "",
               no_embed_class: Optional[bool] = None) -> BackboneExport:
    """A ViT under timm names from a timm / DeiT / MAE-encoder state dict: classifier keys dropped (named
    ``prefix`` + key in ``dropped``: the encoder's place in its file), a DeiT distillation token's position
    row removed (``no_embed_class``: as ``vit_shape``'s)."""
    sd, notes = {}, []
    dropped = list(dropped or [])
    for k, v in state_dict.items():
        if k.startswith(CLASSIFIER_KEYS):
            dropped.append(prefix + k)
        else:
            sd[k] = v
    if "dist_token" in state_dict and "pos_embed" in sd:  # DeiT distilled: two prefix tokens
        sd["pos_embed"] = torch.cat([sd["pos_embed"][:, :1], sd["pos_embed"][:, 2:]], dim=1)
        notes.append("dropped the distillation token's position row")
    shape = vit_shape(sd, num_heads, no_embed_class)
    return BackboneExport("vit", shape.pop("arch"), sd, shape, sorted(dropped), notes, provenance)


def resnet_export(state_dict: Mapping[str, torch.Tensor], provenance: Provenance,
                  dropped: Optional[List[str]] = None, prefix: str = "") -> BackboneExport:
    """A ResNet under torchvision names (``fc`` dropped, named ``prefix`` + key in ``dropped``)."""
    sd = {k: v for k, v in state_dict.items() if not k.startswith("fc.")}
    dropped = sorted(list(dropped or []) + [prefix + k for k in state_dict if k.startswith("fc.")])
    return BackboneExport("resnet", resnet_arch(sd), sd, {}, dropped, [], provenance)


# ------------------------------------------------------------------ reading
def read_backbone(source, allow_pickle: bool = False, path: Optional[str] = None,
                  variant: Optional[str] = None) -> BackboneExport:
    """The backbone of any checkpoint users hold: a path, a loaded checkpoint or a state dict (``path``:
    the file a loaded one came from, for messages and labels).

    The project's checkpoints and the authors' files are read by their method (it knows its layout,
    label and epoch convention); the published files of other families by the format that claims
    them (``pretrain.formats``); a timm / DeiT ViT or a torchvision ResNet (``supervised`` when it
    has its ImageNet classifier) here. Anything else is refused, saying what was found.

    ``variant``: which network of a file that holds several (DINO / iBOT / DINOv2: ``teacher`` or
    ``student``; I-JEPA: ``target`` or ``context``); None is the one the paper evaluates. A variant
    the file's format does not have is refused, naming those it has.
    """
    from .formats import format_of  # the formats import this module
    from .methods import method_of

    if isinstance(source, Mapping):
        ckpt, name = source, path or "<dict>"
    elif Path(source).is_dir():  # a folder BackboneExport.save wrote
        if variant is not None:
            raise CheckpointFormatError(f"{source}: an exported backbone folder holds one network; "
                                        f"variant={variant!r} applies to training checkpoints")
        return read_saved(source)
    else:
        name = path or str(source)
        ckpt = load_file(source, allow_pickle)
    if isinstance(ckpt, Mapping) and SAVED_CONFIG in ckpt:  # a file BackboneExport.save_file wrote
        if variant is not None:
            raise CheckpointFormatError(f"{name}: an exported backbone file holds one network; "
                                        f"variant={variant!r} applies to training checkpoints")
        return saved_export(ckpt[SAVED_CONFIG], ckpt["state_dict"])
    method = method_of(ckpt, name)
    fmt = format_of(ckpt, name) if method is None else None
    if variant is not None and fmt is None:
        raise CheckpointFormatError(
            f"{name}: variant={variant!r} given, but this file is of no format with variants (DINO, iBOT, "
            f"DINOv2: teacher / student; I-JEPA: target / context): leave the variant out")
    if method is not None:
        export = method.export(ckpt, name)
    elif fmt is not None:
        export = fmt.export(ckpt, name, variant=variant)
    else:
        try:
            sd = strip_prefix(unwrap_state_dict(ckpt), "module.")
        except CheckpointFormatError as e:
            raise CheckpointFormatError(f"{name}: {e}") from None
        kind = describe_state_dict(sd)
        if kind == "vit":
            label = "supervised" if "head.weight" in sd else "unknown"
            export = vit_export(sd, Provenance(label, layout="a timm / DeiT ViT" if label == "supervised"
                                               else "a ViT encoder (timm names)"))
        elif kind == "resnet":
            label = "supervised" if "fc.weight" in sd else "unknown"
            export = resnet_export(sd, Provenance(label, layout="a torchvision ResNet"))
        else:
            raise CheckpointFormatError(
                f"{name}: expected a pretraining checkpoint (MAE, MoCo: the authors' or the project's), a timm / "
                f"DeiT ViT or a torchvision ResNet, found {describe_state_dict(sd, verbose=True)}"
                + (" (already converted for a framework: load it there as it is)"
                   if kind.startswith(("detectron2", "mmseg")) else ""))
    export.provenance.source = name
    return export


def split_prefix(state_dict: Mapping[str, torch.Tensor], prefix: str) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """(the tensors under ``prefix`` without it, the other keys): a method's encoder inside its checkpoint."""
    inside = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    return inside, sorted(k for k in state_dict if not k.startswith(prefix))


def read_saved(folder) -> BackboneExport:
    """A folder ``BackboneExport.save`` wrote."""
    folder = Path(folder)
    return saved_export(json.loads((folder / "config.json").read_text()), load_file(folder / "model.safetensors"))


def saved_export(config: Mapping, sd: Mapping[str, torch.Tensor]) -> BackboneExport:
    """The export of a ``timm_config`` dict and its tensors (``save``'s folder, ``save_file``'s file)."""
    meta = config["sslkit"]
    sd = dict(sd)
    cfg = config.get("pretrained_cfg", {})
    return BackboneExport(meta["family"], meta["arch"], sd, meta["shape"], meta["dropped"], meta["notes"],
                          Provenance(**meta["provenance"]), tuple(cfg.get("mean", IMAGENET_MEAN)),
                          tuple(cfg.get("std", IMAGENET_STD)))
