"""Frozen backbones for the evaluation rungs (kNN, dense probe): any checkpoint, one interface.

``load_frozen_backbone`` reads every checkpoint the project reads as its backbone export
(``pretrain.backbones.read_backbone``: any pretraining method's file, the authors' or the project's,
timm, DeiT and torchvision files, an exported folder), loaded as the classification protocols load
it (``transfer.classification.vit.load_vit_backbone`` / ``resnet.load_resnet_backbone``), or
initialises an architecture at random (seeded by the caller's ``torch.manual_seed``). The backbone it returns is frozen: eval mode (batch norm keeps its
pretrained statistics, also when a parent module calls ``train()``) and no gradients. It gives

* ``global_features(x) -> [B, C]``: ViT: the cls token after the final norm (what MAE's linear
  probe reads; without a class token, I-JEPA's, the mean of the patch tokens); ResNet: the global average pool of res5 (the input of ``fc``);
* ``dense_features(x) -> [B, C, H / stride, W / stride]``: ViT: the last layer's patch tokens after
  the final norm, on the patch grid, the position table interpolated (bicubic) to the input's grid;
  ResNet: the res5 map (stride 32).

A BEiT export (``pretrain.formats.beit``) is built as timm's ``Beit`` (``BEiTBackbone``: its relative position
tables resampled to other grids), the other ViTs as timm's ``VisionTransformer``.

Inputs are RGB in [0, 1] normalised with ``mean`` / ``std``: the checkpoint's (``BackboneExport.mean``:
ImageNet's for every supported pretraining but CLIP's (its own), SimCLR v1's (none) and BEiT v1's ImageNet-22k
releases (0.5). The forward runs in fp32, or under bf16 autocast after ``set_precision`` (what DINO's and
DINOv2's evaluation code do on a GPU); the features come out in fp32 either way.
"""
from __future__ import annotations

import copy
from functools import partial
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn
from timm.models.vision_transformer import VisionTransformer

from pretrain.backbones import BackboneExport, is_resnet_name, read_backbone
from pretrain.checkpoint import CheckpointFormatError
from pretrain.cli import non_negative_int
from pretrain.errors import ConfigError, InputNotFound
from pretrain.precision import autocast_dtype, matmul_shapes, precision_name
from pretrain.transforms import IMAGENET_MEAN, IMAGENET_STD
from transfer.classification.resnet import build_resnet_classifier, load_resnet_backbone
from transfer.classification.vit import load_vit_backbone, vit_arch
from transfer.convert import ConversionReport

__all__ = ["FrozenBackbone", "ViTBackbone", "BEiTBackbone", "ResNetBackbone", "load_frozen_backbone"]


class FrozenBackbone(nn.Module):
    """A pretrained (or random) feature extractor that never trains; see the module docstring."""

    family: str  # "vit" | "resnet"
    mean, std = IMAGENET_MEAN, IMAGENET_STD  # pixel normalisation of the inputs

    def __init__(self, name: str, embed_dim: int, stride: int, pretrain: str = "random",
                 pretrain_epochs: Optional[int] = None, report: Optional[ConversionReport] = None):
        super().__init__()
        self.name = name  # the backbone's name in results files (vit_base_patch16, resnet50, ...)
        self.embed_dim = embed_dim
        self.stride = stride  # output stride of dense_features
        self.pretrain = pretrain  # the export's provenance label, or "random"
        self.pretrain_epochs = pretrain_epochs
        self.report = report  # what the checkpoint conversion loaded and left out (None: random init)
        self.amp_dtype: Optional[torch.dtype] = None  # the forward's autocast dtype (None: fp32)

    @property
    def patch_size(self) -> int:
        return self.stride

    def freeze(self) -> "FrozenBackbone":
        for p in self.parameters():
            p.requires_grad = False
        return self.eval()

    def train(self, mode: bool = True) -> "FrozenBackbone":
        return super().train(False)  # frozen: batch norm and dropout stay in inference mode

    def set_precision(self, precision: str, device: torch.device) -> str:
        """The forward's precision from ``--precision``: auto (bf16 on a GPU with native bf16, on a CPU where
        it measures faster at this backbone's widths; else fp32), bf16 or fp32. Returns its name (bf16 / fp32)
        for results.json."""
        amp = {"auto": "auto", "bf16": "bf16", "fp32": "none"}[precision]
        self.amp_dtype = autocast_dtype(amp, device, matmul_shapes(self), setting="--precision")
        return precision_name(self.amp_dtype)

    def set_compile(self, enabled: bool) -> bool:
        """``--compile``: the feature functions through ``torch.compile`` (compiled at the first batch of each
        input size; the same features to rounding). Returns whether on, for results.json."""
        if enabled:
            self._global_features = torch.compile(self._global_features)
            self._dense_features = torch.compile(self._dense_features)
        return enabled

    def autocast(self, x: torch.Tensor):
        return torch.autocast(x.device.type, dtype=self.amp_dtype or torch.bfloat16, enabled=self.amp_dtype is not None)

    @torch.no_grad()
    def global_features(self, x: torch.Tensor) -> torch.Tensor:
        with self.autocast(x):
            return self._global_features(x).float()

    @torch.no_grad()
    def dense_features(self, x: torch.Tensor) -> torch.Tensor:
        with self.autocast(x):
            return self._dense_features(x).float()

    def _global_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _dense_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class ViTBackbone(FrozenBackbone):
    family = "vit"

    def __init__(self, vit: VisionTransformer, name: str, **kwargs):
        super().__init__(name, vit.embed_dim, vit.patch_embed.patch_size[0], **kwargs)
        self.vit = vit

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """The last block's output after the final norm, [B, prefix + H/p * W/p, C]."""
        if x.shape[-2] % self.stride or x.shape[-1] % self.stride:
            raise ValueError(f"a {x.shape[-2]}x{x.shape[-1]} input is not a multiple of the patch size {self.stride}")
        return self.vit.forward_features(x)

    def _global_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.vit.forward_head(self.tokens(x), pre_logits=True)  # the cls token, or the tokens' mean

    def _dense_features(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.tokens(x)[:, self.vit.num_prefix_tokens:]
        h, w = x.shape[-2] // self.stride, x.shape[-1] // self.stride
        return tokens.transpose(1, 2).reshape(x.shape[0], self.embed_dim, h, w)  # tokens are row-major


class BEiTBackbone(ViTBackbone):
    """BEiT's ViT (timm's ``Beit``, ``pretrain.formats.beit``): its relative position tables are of the
    pretraining grid; another input size runs a copy with the tables (and any position table) resampled
    from the trained ones by timm's ``set_input_size``, made once per size."""

    def __init__(self, vit: nn.Module, name: str, **kwargs):
        super().__init__(vit, name, **kwargs)
        self.resized = nn.ModuleDict()  # "HxW" -> the copy for that input size

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] % self.stride or x.shape[-1] % self.stride:
            raise ValueError(f"a {x.shape[-2]}x{x.shape[-1]} input is not a multiple of the patch size {self.stride}")
        size = (int(x.shape[-2]), int(x.shape[-1]))
        if size == tuple(self.vit.patch_embed.img_size):
            return self.vit.forward_features(x)
        key = f"{size[0]}x{size[1]}"
        if key not in self.resized:
            vit = copy.deepcopy(self.vit)
            vit.set_input_size(img_size=size)
            self.resized[key] = vit.eval()
        return self.resized[key].forward_features(x)


def build_beit(export) -> nn.Module:
    """timm's ``Beit`` of a BEiT export's shape, loaded with its weights (every tensor, strictly)."""
    vit = export_network(export)
    vit.load_state_dict(export.state_dict, strict=True)
    return vit


class ResNetBackbone(FrozenBackbone):
    family = "resnet"

    def __init__(self, net: nn.Module, name: str, **kwargs):
        super().__init__(name, net.fc.in_features, 32, **kwargs)
        net.fc = nn.Identity()
        self.net = net

    def res5(self, x: torch.Tensor) -> torch.Tensor:
        n = self.net
        x = n.maxpool(n.relu(n.bn1(n.conv1(x))))
        return n.layer4(n.layer3(n.layer2(n.layer1(x))))

    def _global_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.res5(x).float().mean(dim=(2, 3))  # the pool in fp32

    def _dense_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.res5(x)


def build_vit(arch: dict, img_size: int = 224, options: Optional[dict] = None) -> VisionTransformer:
    """The encoder ``transfer.classification.vit.build_vit_classifier`` builds, without a head, its
    position table resampled to each input's grid (``dynamic_img_size``) so any size multiple of the
    patch runs; ``options``: a pretrained export's (``BackboneExport.vit_kwargs``: LayerScale, registers,
    no class token, SwiGLU, CLIP's norm before the blocks, QuickGELU and LayerNorm eps)."""
    kwargs = {"global_pool": "token", "norm_layer": partial(nn.LayerNorm, eps=1e-6), **(options or {}),
              "dynamic_img_size": True}
    return VisionTransformer(
        img_size=img_size, patch_size=arch["patch_size"], embed_dim=arch["embed_dim"], depth=arch["depth"],
        num_heads=arch["num_heads"], mlp_ratio=arch["mlp_ratio"], qkv_bias=True, num_classes=0, **kwargs,
    )


def export_network(export: BackboneExport, img_size: Optional[int] = None, drop_path_rate: float = 0.0,
                   **vit_options) -> nn.Module:
    """A ViT export's timm network, random weights: ``Beit`` for a BEiT export at ``img_size`` (default: its own;
    its relative position tables are of that grid), else ``build_vit``'s ``VisionTransformer`` with the export's
    options (and ``vit_options``) at its own size, the position table resampled to each input's grid."""
    if export.shape.get("beit"):
        from transfer.beit import beit_network

        return beit_network(export.shape, img_size, drop_path_rate=drop_path_rate)
    return build_vit(export.shape, export.shape["img_size"],
                     export.vit_kwargs() | {"drop_path_rate": drop_path_rate, **vit_options})


def _family(arch: str) -> str:
    return "resnet" if is_resnet_name(arch) else "vit"


def load_frozen_backbone(checkpoint=None, arch: Optional[str] = None, allow_pickle: bool = False,
                         variant: Optional[str] = None) -> FrozenBackbone:
    """A frozen backbone from ``checkpoint`` (a path; its architecture is read off the weights, or
    checked against ``arch`` when given), or a random initialisation of ``arch`` when no checkpoint:
    a ViT preset (``mae_vit_pico_patch8``, ``vit_base_patch16``, ...) or a torchvision ResNet
    (``resnet18``, ``resnet50``, ...). ``variant``: which network of a file that holds several (``read_backbone``'s)."""
    if checkpoint is None:
        if variant is not None:
            raise ConfigError(f"--variant {variant} picks a network of a checkpoint, and there is none: give the "
                              "checkpoint, or leave the variant out")
        if not arch:
            raise ConfigError("no checkpoint and no architecture: give a checkpoint, or the architecture to "
                             "initialise at random (e.g. resnet50, vit_base_patch16, mae_vit_pico_patch8)")
        if _family(arch) == "resnet":
            return ResNetBackbone(build_resnet_classifier(arch, num_classes=1), arch).freeze()
        try:
            info = vit_arch(arch)
        except ValueError as e:
            raise ConfigError(f"{e}; or a torchvision ResNet (resnet18, resnet50, ...)") from None
        return ViTBackbone(build_vit(info), info["name"]).freeze()

    path = str(checkpoint)
    if not Path(path).exists():
        raise InputNotFound(f"checkpoint not found: {path}: give an existing checkpoint file")
    export = read_backbone(path, allow_pickle, variant=variant)
    if arch and _family(arch) != export.family:
        family = {"vit": "ViT", "resnet": "ResNet"}[export.family]
        raise CheckpointFormatError(f"{path} holds a {family} ({export.arch}, {export.provenance.layout}), not a {arch}")
    labels = dict(pretrain=export.label, pretrain_epochs=export.provenance.epochs)
    if export.family == "vit" and export.shape.get("beit"):  # BEiT (pretrain.formats.beit): timm's Beit
        vit = build_beit(export)
        report = ConversionReport(path, export.provenance.layout, "timm Beit (global_pool=token)",
                                  converted=len(export.state_dict), dropped=list(export.dropped),
                                  notes=list(export.notes))
        backbone = BEiTBackbone(vit, export.arch, report=report, **labels)
    elif export.family == "vit":
        info = vit_arch(arch or "auto", export)
        vit = build_vit(info, img_size=export.shape["img_size"], options=export.vit_kwargs())  # the table as trained
        report = load_vit_backbone(vit, export, name=path)
        backbone = ViTBackbone(vit, info["name"], report=report, **labels)
    else:
        net = build_resnet_classifier(arch or export.arch, num_classes=1)  # fc is replaced by the identity
        report = load_resnet_backbone(net, export, name=path)
        backbone = ResNetBackbone(net, arch or export.arch, report=report, **labels)
    backbone.mean, backbone.std = export.mean, export.std  # as it was trained (SimCLR v1: none)
    return backbone.freeze()


def add_backbone_args(p) -> None:
    """The command-line arguments of a tool that evaluates a frozen backbone (tools/knn_eval.py,
    tools/dense_probe.py): what to load, where to run it, how to label its results. ``check_backbone_args``
    checks them after parsing."""
    p.add_argument("checkpoint", nargs="?", help="pretrained backbone (MAE / MoCo / timm / DeiT / torchvision file)")
    p.add_argument("--random-init", metavar="ARCH",
                   help="no checkpoint: initialise ARCH at random, seeded by --seed (resnet18, resnet50, "
                        "vit_base_patch16, mae_vit_pico_patch8, ...)")
    p.add_argument("--num-workers", type=non_negative_int, default=2, help="data loading processes (default 2)")
    p.add_argument("--device", default="auto", help="cuda, cpu, cuda:1... (default: cuda when available)")
    p.add_argument("--pretrain", help="pretraining label for results.json (default: what the checkpoint says; "
                                      "'random' with --random-init)")
    p.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                   help="the backbone's forward: bf16 autocast or fp32; auto (default): bf16 on a GPU with native "
                        "bf16, on a CPU where it measures faster, else fp32 (recorded in results.json)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the backbone's forward (compiled at the first batch; recorded in results.json)")
    p.add_argument("--variant", help="which network of a checkpoint that holds several: DINO / iBOT / DINOv2 "
                                     "teacher (default) or student, I-JEPA target (default) or context")
    p.add_argument("--allow-pickle", action="store_true", help="open a checkpoint that holds pickled objects "
                                                               "(only for files you trust)")


def check_backbone_args(p, args) -> None:
    if (args.checkpoint is None) == (args.random_init is None):
        p.error("give a CHECKPOINT or --random-init ARCH (one of them)")


def random_twin(export: BackboneExport, seed: int = 0) -> BackboneExport:
    """The export's network (its shape and every option: LayerScale, registers, CLIP's norms, BEiT's tables)
    with the random initialisation its timm class draws under ``seed``, labelled ``random``: the untrained
    baseline of a backbone that no preset name describes (``BackboneExport.preset`` is None), which the
    tools' ``--random-init ARCH`` cannot build. Its tensors are the export's keys, every one."""
    import dataclasses

    from pretrain.backbones import Provenance

    if export.family != "vit":
        raise ValueError(f"a {export.arch} is built by its name (--random-init {export.arch}); no twin is needed")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = export_network(export)
    drawn = net.state_dict()
    missing = sorted(set(export.state_dict) - set(drawn))
    if missing:
        raise CheckpointFormatError(f"{export.provenance.source}: its network has no {', '.join(missing[:5])}: "
                                    "cannot draw a random twin of it")
    source = export.provenance.source
    return dataclasses.replace(
        export, state_dict={k: drawn[k].clone() for k in export.state_dict}, dropped=[],
        notes=[f"random initialisation (timm's, seed {seed}) of the network of {source}"],
        provenance=Provenance("random", layout=f"random weights of the network of {export.provenance.layout}",
                              source=f"random twin of {source}"))
