"""The published checkpoint formats (``pretrain.formats``): each family's files, built here in the authors'
released layout from a tiny random model, read by ``read_backbone``, rebuilt through timm from the export's
``config.json`` and compared with the authors' model's features (to 1e-5, CPU fp32), every tensor of the
file either in the export or named as dropped.

The authors' models: DINO's and iBOT's ViT are timm's (same modules and names); DINOv2's is timm's
``vit_*_patch14_dinov2`` / ``_reg4_`` with its keys renamed back to the authors' (``register_tokens``,
``mask_token``, the class token's position row, ``mlp.w12`` / ``w3``, FSDP's chunked blocks); I-JEPA's
encoder is timm's ViT without a class token (its blocks are timm's); the SSL ResNets are torchvision's
(ResNet-18 here for speed: the readers take any torchvision ResNet, the releases are ResNet-50s).
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

import pytest
import timm
import torch
import torch.nn as nn
from timm.layers import SwiGLUPacked
from timm.models.vision_transformer import VisionTransformer
from torchvision.models import resnet18

from pretrain.backbones import read_backbone, vit_shape
from pretrain.checkpoint import CheckpointFormatError
from pretrain.formats import formats
from pretrain.transforms import IMAGENET_MEAN, IMAGENET_STD

OPTIMISER_STATE = ("optimizer", "opt", "scaler", "fp16_scaler")  # not network tensors: no export lists them


def randomize(model: nn.Module, seed: int) -> nn.Module:
    """Every parameter and batch-norm statistic random (timm's init leaves LayerScale at 1e-5, tokens near 0:
    a lost tensor would then hardly show in the features)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
        for name, b in model.named_buffers():
            if name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=g) + 0.5)
            elif name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=g) * 0.1)
    return model.eval()


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def tiny_vit(seed: int, patch: int = 16, img: int = 32, **kw) -> VisionTransformer:
    # Heads are not in the tensors: the readers take the published models' width / 64.
    return randomize(VisionTransformer(img_size=img, patch_size=patch, embed_dim=128, depth=2, num_heads=2,
                                       num_classes=0, **kw), seed)


def tiny_resnet(seed: int) -> nn.Module:
    net = resnet18()
    return randomize(net, seed)


def prefixed(sd: Dict[str, torch.Tensor], prefix: str) -> Dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in sd.items()}


def flat(obj, prefix: str = "") -> List[str]:
    """The dotted names of every tensor in a file, the optimiser's state left out."""
    out = []
    for k, v in obj.items():
        if not prefix and k in OPTIMISER_STATE:
            continue
        if isinstance(v, torch.Tensor):
            out.append(prefix + k)
        elif isinstance(v, dict):
            out += flat(v, f"{prefix}{k}.")
    return out


def dino_head(seed: int, dim: int = 128, patch_head: bool = False) -> Dict[str, torch.Tensor]:
    """DINOHead's tensors (three Linear layers, the weight-normed last layer); iBOT adds the patch head's."""
    sd = {"mlp.0.weight": rand(32, dim, seed=seed), "mlp.0.bias": rand(32), "mlp.2.weight": rand(32, 32),
          "mlp.2.bias": rand(32), "mlp.4.weight": rand(16, 32), "mlp.4.bias": rand(16),
          "last_layer.weight_g": rand(100, 1), "last_layer.weight_v": rand(100, 16)}
    if patch_head:
        sd |= {"last_layer2.weight_g": rand(50, 1), "last_layer2.weight_v": rand(50, 16)}
    return sd


@dataclass
class Case:
    """A file in a family's released layout and the model whose features reading it must give."""

    ckpt: dict
    filename: str
    reference: nn.Module  # the authors' network (timm / torchvision forward)
    backbone: List[str]  # the file's tensors the backbone is made of (the rest must be listed as dropped)
    img: int = 32
    variant: Optional[str] = None
    label: str = ""
    checks: List[Callable] = field(default_factory=list)  # more assertions on the export


# ------------------------------------------------------------------ DINO
def dino_full(variant: str, resnet: bool = False) -> Case:
    """main_dino.py's checkpoint: the student under DDP (``module.``), the teacher under DDP only with batch norm."""
    nets = {name: (tiny_resnet(seed) if resnet else tiny_vit(seed)) for name, seed in (("teacher", 1), ("student", 2))}
    for net in nets.values():
        if resnet:
            net.fc = nn.Identity()  # DINO replaces the classifier by the identity: no fc in the file
    ckpt = {"epoch": 100, "args": argparse.Namespace(arch="vit_small"), "optimizer": {"state": {}, "param_groups": []},
            "dino_loss": {"center": rand(1, 100)}}
    for name, net in nets.items():
        wrap = "module." if name == "student" or resnet else ""
        ckpt[name] = prefixed(net.state_dict(), wrap + "backbone.") | prefixed(dino_head(3), wrap + "head.")
    wrap = "module." if variant == "student" or resnet else ""
    backbone = [f"{variant}.{wrap}backbone.{k}" for k in nets[variant].state_dict()]
    return Case(ckpt, "checkpoint.pth", nets[variant], backbone,
                variant=None if variant == "teacher" else variant, label="dino")


def dino_backbone(resnet: bool = False) -> Case:
    net = tiny_resnet(1) if resnet else tiny_vit(1)
    if resnet:
        net.fc = nn.Identity()
    sd = net.state_dict()
    return Case(sd, "dino_resnet50_pretrain.pth" if resnet else "dino_deitsmall16_pretrain.pth", net, list(sd),
                label="dino")


# ------------------------------------------------------------------ DINOv2
def dinov2_layout(vit: VisionTransformer, seed: int, chunks: int = 0) -> Dict[str, torch.Tensor]:
    """A timm DINOv2 ViT's state dict under the authors' names (DinoVisionTransformer)."""
    sd = dict(vit.state_dict())
    out = {"mask_token": rand(1, vit.embed_dim, seed=seed)}
    if "reg_token" in sd:  # the authors' table has the class token's row; their class token is timm's minus it
        cls_row = rand(1, 1, vit.embed_dim, seed=seed + 1)
        out["register_tokens"] = sd.pop("reg_token")
        out["cls_token"] = sd.pop("cls_token") - cls_row
        out["pos_embed"] = torch.cat([cls_row, sd.pop("pos_embed")], dim=1)
    size = len(vit.blocks) // chunks if chunks else 0
    for k, v in sd.items():
        if type(vit.blocks[0].mlp).__name__ == "GluMlp":  # timm's SwiGLUPacked: the authors' fused SwiGLU
            k = k.replace(".mlp.fc1.", ".mlp.w12.").replace(".mlp.fc2.", ".mlp.w3.")
        if chunks and k.startswith("blocks."):
            i = int(k.split(".")[1])
            k = f"blocks.{i // size}.{k[len('blocks.'):]}"
        out[k] = v
    return out


def tiny_dinov2(seed: int, reg: bool = False, swiglu: bool = False) -> VisionTransformer:
    """timm's vit_small_patch14_dinov2 / _reg4_ / vit_giant_patch14_dinov2, tiny: LayerScale, patch 14."""
    kw = dict(init_values=1e-5)
    if reg:
        kw |= dict(reg_tokens=4, no_embed_class=True)
    if swiglu:
        kw |= dict(mlp_layer=SwiGLUPacked, act_layer=nn.SiLU)
    return tiny_vit(seed, patch=14, img=42, **kw)


def dinov2_backbone(reg: bool = False, swiglu: bool = False) -> Case:
    vit = tiny_dinov2(1, reg, swiglu)
    sd = dinov2_layout(vit, seed=5)
    name = f"dinov2_vit{'g' if swiglu else 's'}14{'_reg4' if reg else ''}_pretrain.pth"
    checks = [lambda e: "mask_token" in e.dropped, lambda e: e.shape["init_values"] and e.shape["dynamic_img_size"]]
    if reg:
        checks.append(lambda e: e.shape["reg_tokens"] == 4 and e.shape["no_embed_class"] and e.shape["img_size"] == 42)
    if swiglu:
        checks.append(lambda e: e.shape["mlp_layer"] == "swiglu")
    return Case(sd, name, vit, [k for k in sd if k != "mask_token"], img=42, label="dinov2", checks=checks)


def dinov2_training(variant: str) -> Case:
    """train.py's checkpoint: SSLMetaArch's state dict (student / teacher, each backbone + heads), chunked blocks."""
    nets = {"teacher": tiny_dinov2(1, reg=True), "student": tiny_dinov2(2, reg=True)}
    model = {}
    for name, vit in nets.items():
        model |= prefixed(dinov2_layout(vit, seed=7, chunks=2), f"{name}.backbone.")
        model |= prefixed(dino_head(3), f"{name}.dino_head.") | prefixed(dino_head(4), f"{name}.ibot_head.")
    ckpt = {"model": model, "optimizer": {"state": {}}, "iteration": 1249}
    backbone = [f"model.{k}" for k in model if k.startswith(f"{variant}.backbone.") and not k.endswith("mask_token")]
    checks = [lambda e: any("blocks un-chunked" in n for n in e.notes)]
    return Case(ckpt, "model_0001249.rank_0.pth", nets[variant], backbone, img=42,
                variant=None if variant == "teacher" else variant, label="dinov2", checks=checks)


def dinov2_teacher_checkpoint() -> Case:
    """The evaluation's teacher_checkpoint.pth: {'teacher': backbone + heads}."""
    vit = tiny_dinov2(1, swiglu=True)
    teacher = prefixed(dinov2_layout(vit, seed=7, chunks=1), "backbone.") | prefixed(dino_head(3), "dino_head.")
    backbone = [f"teacher.{k}" for k in teacher if k.startswith("backbone.") and not k.endswith("mask_token")]
    return Case({"teacher": teacher}, "teacher_checkpoint.pth", vit, backbone, img=42, label="dinov2")


# ------------------------------------------------------------------ iBOT
def ibot_layout(vit: VisionTransformer, seed: int) -> Dict[str, torch.Tensor]:
    """iBOT's ViT: timm's names, LayerScale as gamma_1 / gamma_2, the masked patches' embedding."""
    sd = {k.replace(".ls1.gamma", ".gamma_1").replace(".ls2.gamma", ".gamma_2"): v for k, v in vit.state_dict().items()}
    return sd | {"masked_embed": rand(1, vit.embed_dim, seed=seed)}


def ibot_full(variant: str) -> Case:
    nets = {"teacher": tiny_vit(1), "student": tiny_vit(2)}
    ckpt = {"epoch": 800, "args": argparse.Namespace(arch="vit_small"), "optimizer": {"state": {}},
            "ibot_loss": {"center": rand(1, 100), "center2": rand(1, 1, 50)}}
    for name, vit in nets.items():
        wrap = "module." if name == "student" else ""
        ckpt[name] = prefixed(ibot_layout(vit, 6), wrap + "backbone.") | \
            prefixed(dino_head(3, patch_head=True), wrap + "head.")
    wrap = "module." if variant == "student" else ""
    backbone = [f"{variant}.{wrap}backbone.{k}" for k in nets[variant].state_dict()]
    return Case(ckpt, "checkpoint.pth", nets[variant], backbone,
                variant=None if variant == "teacher" else variant, label="ibot",
                checks=[lambda e: f"{variant}.{wrap}backbone.masked_embed" in e.dropped])


def ibot_backbone() -> Case:
    """extract_backbone_weights.py's file: {'state_dict': backbone}, here of a ViT with LayerScale."""
    vit = tiny_vit(1, init_values=0.1)
    sd = ibot_layout(vit, 6)
    return Case({"state_dict": sd}, "checkpoint_teacher.pth", vit,
                [f"state_dict.{k}" for k in sd if k != "masked_embed"], label="ibot")


# ------------------------------------------------------------------ I-JEPA
def ijepa(variant: str) -> Case:
    """train.py's checkpoint: encoder, predictor, target_encoder under DDP, and the optimisation's state."""
    nets = {"encoder": tiny_vit(1, class_token=False, global_pool="avg", fc_norm=False),
            "target_encoder": tiny_vit(2, class_token=False, global_pool="avg", fc_norm=False)}
    predictor = {"predictor_embed.weight": rand(32, 128), "predictor_embed.bias": rand(32),
                 "mask_token": rand(1, 1, 32), "predictor_pos_embed": rand(1, 4, 32),
                 "predictor_proj.weight": rand(128, 32)}
    ckpt = {name: prefixed(net.state_dict(), "module.") for name, net in nets.items()}
    ckpt |= {"predictor": prefixed(predictor, "module."), "opt": {"state": {}}, "scaler": None, "epoch": 300,
             "loss": 0.1, "batch_size": 2048, "world_size": 16, "lr": 1e-3}
    entry = "target_encoder" if variant == "target" else "encoder"
    checks = [lambda e: e.shape["class_token"] is False and e.shape["global_pool"] == "avg",
              lambda e: e.provenance.epochs == 300]
    backbone = [f"{entry}.module.{k}" for k in nets[entry].state_dict()]
    return Case(ckpt, "IN1K-vit.h.14-300e.pth.tar", nets[entry], backbone,
                variant=None if variant == "target" else variant, label="ijepa", checks=checks)


# ------------------------------------------------------------------ SSL ResNets
def resnet_case(label: str, filename: str, wrap, heads: Dict[str, torch.Tensor], extra: Optional[dict] = None,
                keep_fc: bool = False) -> Case:
    """A ResNet under ``wrap`` (a key path: "module.", "model.module.backbone.", ...) beside its heads."""
    net = tiny_resnet(1)
    sd = dict(net.state_dict())
    if not keep_fc:
        sd = {k: v for k, v in sd.items() if not k.startswith("fc.")}
    net.fc = nn.Identity()  # the features: the pooled res5 (a kept fc is the classifier, dropped)
    network = prefixed(sd, wrap) | heads
    ckpt = network if extra is None else extra(network)
    names = flat(ckpt)
    backbone = [n for n in names if any(n.endswith(wrap + k) for k in sd if not k.startswith("fc."))
                and not any(n.endswith(h) for h in heads)]
    return Case(ckpt, filename, net, backbone, label=label)


def swav(full: bool = False) -> Case:
    heads = {"module.projection_head.0.weight": rand(32, 512), "module.projection_head.0.bias": rand(32),
             "module.projection_head.1.weight": rand(32), "module.projection_head.1.running_mean": rand(32),
             "module.projection_head.3.weight": rand(16, 32), "module.prototypes.weight": rand(30, 16)}
    extra = (lambda net: {"epoch": 800, "state_dict": net, "optimizer": {"state": {}}, "amp": {}}) if full else None
    return resnet_case("swav", "checkpoint.pth.tar" if full else "swav_800ep_pretrain.pth.tar", "module.", heads, extra)


def barlow_twins() -> Case:
    heads = {"module.projector.0.weight": rand(32, 512), "module.projector.1.weight": rand(32),
             "module.projector.3.weight": rand(16, 32), "module.bn.running_mean": rand(16),
             "module.bn.running_var": rand(16), "module.bn.num_batches_tracked": torch.tensor(5)}
    return resnet_case("barlow_twins", "checkpoint.pth", "module.backbone.", heads,
                       lambda net: {"epoch": 1000, "model": net, "optimizer": {"state": {}}})


def vicreg() -> Case:
    heads = {"module.projector.0.weight": rand(32, 512), "module.projector.0.bias": rand(32),
             "module.projector.1.weight": rand(32), "module.projector.3.weight": rand(16, 32)}
    return resnet_case("vicreg", "resnet50_fullckpt.pth", "module.backbone.", heads,
                       lambda net: {"epoch": 1000, "model": net, "optimizer": {"state": {}}})


def vicreg_backbone() -> Case:
    return resnet_case("vicreg", "vicreg_resnet50.pth", "", {})


def simclr() -> Case:
    case = resnet_case("simclr_v1", "simclr_resnet50-1x.pth", "", {}, lambda net: {"state_dict": net}, keep_fc=True)
    case.checks = [lambda e: e.mean == (0.0, 0.0, 0.0) and e.std == (1.0, 1.0, 1.0),
                   lambda e: e.dropped == ["state_dict.fc.bias", "state_dict.fc.weight"]]
    return case


def byol() -> Case:
    heads = {"projector.0.weight": rand(32, 512), "predictor.0.weight": rand(16, 32)}
    return resnet_case("byol", "byol_pretrain_res50x1.pth.tar", "", heads, keep_fc=True)


CASES: Dict[str, Dict[str, Callable[[], Case]]] = {
    "dino": {"full-teacher": lambda: dino_full("teacher"), "full-student": lambda: dino_full("student"),
             "full-resnet": lambda: dino_full("teacher", resnet=True), "backbone": dino_backbone,
             "backbone-resnet": lambda: dino_backbone(resnet=True)},
    "dinov2": {"s14": dinov2_backbone, "s14-reg4": lambda: dinov2_backbone(reg=True),
               "g14-swiglu": lambda: dinov2_backbone(swiglu=True), "g14-reg4": lambda: dinov2_backbone(True, True),
               "training-teacher": lambda: dinov2_training("teacher"),
               "training-student": lambda: dinov2_training("student"), "teacher-checkpoint": dinov2_teacher_checkpoint},
    "ibot": {"full-teacher": lambda: ibot_full("teacher"), "full-student": lambda: ibot_full("student"),
             "backbone": ibot_backbone},
    "ijepa": {"target": lambda: ijepa("target"), "context": lambda: ijepa("context")},
    "swav": {"release": swav, "training": lambda: swav(full=True)},
    "barlow_twins": {"full": barlow_twins},
    "vicreg": {"full": vicreg, "backbone": vicreg_backbone},
    "simclr_v1": {"converted": simclr},
    "byol": {"converted": byol},
}


# Formats whose released files are built in a test module of their own (a TorchScript archive, the authors'
# CLIP forward): tests/test_formats_clip.py.
CASES_ELSEWHERE = {"clip": "test_formats_clip.py", "openclip": "test_formats_clip.py"}


def test_every_registered_format_has_a_file_built_in_its_released_layout():
    assert set(formats()) == set(CASES) | set(CASES_ELSEWHERE)
    assert all((Path(__file__).parent / module).is_file() for module in CASES_ELSEWHERE.values())


@pytest.mark.parametrize("family,case_name", [(f, c) for f, cases in CASES.items() for c in cases])
def test_format_reads_the_authors_file_with_the_same_features(tmp_path, family, case_name):
    torch.manual_seed(0)
    case = CASES[family][case_name]()
    path = tmp_path / case.filename
    torch.save(case.ckpt, path)
    export = read_backbone(path, variant=case.variant)
    assert export.label == case.label == family

    # Nothing dropped silently: every tensor of the file is in the backbone or named as dropped.
    assert sorted(export.dropped) == sorted(set(flat(case.ckpt)) - set(case.backbone))
    assert len(export.state_dict) == len(case.backbone)
    for check in case.checks:
        assert check(export), export

    # The network timm rebuilds from the exported folder alone has the authors' features.
    net = timm.create_model(f"local-dir:{export.save(tmp_path / 'export')}", pretrained=True).eval()
    x = torch.randn(2, 3, case.img, case.img)
    with torch.no_grad():
        if export.family == "vit":
            ours, theirs = net.forward_features(x), case.reference.forward_features(x)
            assert torch.allclose(net.forward_head(ours, pre_logits=True),
                                  case.reference.forward_head(theirs, pre_logits=True), atol=1e-5)
        else:
            ours, theirs = net(x), case.reference(x)
    assert ours.shape == theirs.shape
    assert torch.allclose(ours, theirs, atol=1e-5), (ours - theirs).abs().max()
    config = json.loads((tmp_path / "export" / "config.json").read_text())
    assert config["pretrained_cfg"]["mean"] == list(export.mean)


def test_teacher_and_student_differ_and_the_default_is_the_papers(tmp_path):
    """A variant picks the other network (not the same one relabelled)."""
    case = dino_full("teacher")
    teacher = read_backbone(case.ckpt, path="checkpoint.pth")
    student = read_backbone(case.ckpt, path="checkpoint.pth", variant="student")
    assert torch.equal(teacher.state_dict["cls_token"], case.ckpt["teacher"]["backbone.cls_token"])
    assert not torch.equal(teacher.state_dict["cls_token"], student.state_dict["cls_token"])
    assert teacher.provenance.epochs == 100 and "teacher" in teacher.provenance.layout


@pytest.mark.parametrize("build,variant,match", [
    (lambda: dino_full("teacher"), "target", r"no variant 'target'.*\['teacher', 'student'\]"),
    (lambda: ijepa("target"), "teacher", r"no variant 'teacher'.*\['target', 'context'\]"),
    (swav, "teacher", "hold one network: leave the variant out"),
    (dino_backbone, "student", "holds only the backbone network, not the student"),
    (dinov2_teacher_checkpoint, "student", "holds only the teacher network, not the student"),
])
def test_a_variant_the_file_does_not_have_is_refused_naming_those_it_has(build, variant, match):
    case = build()
    with pytest.raises(CheckpointFormatError, match=match):
        read_backbone(case.ckpt, path=case.filename, variant=variant)


def test_a_variant_for_a_file_of_no_format_is_refused():
    sd = tiny_vit(1).state_dict()
    assert read_backbone(sd, path="vit.pth").label == "unknown"  # a plain timm encoder, as before
    with pytest.raises(CheckpointFormatError, match="variant='teacher' given, but this file is of no format"):
        read_backbone(sd, path="vit.pth", variant="teacher")


def test_plain_vit_shape_and_config_are_unchanged():
    """The new options appear only when they differ from the plain ViT (existing exports keep their shape)."""
    shape = vit_shape(tiny_vit(1).state_dict())
    assert set(shape) == {"arch", "patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio", "img_size"}
    export = read_backbone(tiny_vit(1).state_dict())
    config = export.timm_config()
    assert set(config["model_args"]) == {"img_size", "patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio",
                                         "num_classes"}
    assert tuple(config["pretrained_cfg"]["mean"]) == IMAGENET_MEAN


def test_exported_folder_keeps_options_and_normalisation(tmp_path):
    case = simclr()
    export = read_backbone(case.ckpt, path=case.filename)
    again = read_backbone(export.save(tmp_path / "simclr"))
    assert (again.mean, again.std) == (export.mean, export.std) == ((0.0,) * 3, (1.0,) * 3)
    case = dinov2_backbone(reg=True, swiglu=True)
    export = read_backbone(case.ckpt, path=case.filename)
    again = read_backbone(export.save(tmp_path / "dinov2"))
    assert again.shape == export.shape and again.vit_options() == export.vit_options()


@pytest.mark.parametrize("build", [lambda: dinov2_backbone(reg=True, swiglu=True), lambda: ijepa("target"), simclr],
                         ids=["dinov2-reg4-swiglu", "ijepa", "simclr"])
def test_frozen_rungs_take_the_options_and_the_normalisation(tmp_path, build):
    """kNN's and the dense probe's backbone (transfer.backbone) builds the export's ViT: registers, LayerScale,
    SwiGLU, average pooling without a class token; and normalises inputs as the backbone was trained."""
    from transfer.backbone import load_frozen_backbone

    case = build()
    torch.save(case.ckpt, tmp_path / case.filename)
    backbone = load_frozen_backbone(tmp_path / case.filename)
    x = torch.randn(2, 3, case.img, case.img)
    ref = case.reference
    with torch.no_grad():
        if backbone.family == "vit":
            tokens = ref.forward_features(x)
            assert torch.allclose(backbone.global_features(x), ref.forward_head(tokens, pre_logits=True), atol=1e-5)
            grid = case.img // 14 if "dinov2" in case.filename else case.img // 16
            dense = tokens[:, ref.num_prefix_tokens:].transpose(1, 2).reshape(2, -1, grid, grid)
            assert torch.allclose(backbone.dense_features(x), dense, atol=1e-5)
        else:
            assert torch.allclose(backbone.global_features(x), ref(x), atol=1e-5)
    expected = ((0.0,) * 3, (1.0,) * 3) if case.label == "simclr_v1" else (IMAGENET_MEAN, IMAGENET_STD)
    assert (tuple(backbone.mean), tuple(backbone.std)) == expected


def test_ijepa_vit_h16_has_the_authors_16_heads():
    """Heads are not in the tensors; I-JEPA's ViT-H/16 has 16 (not width / 64 = 20), its ViT-H/14 too."""
    def encoder(patch):
        sd = {"patch_embed.proj.weight": torch.empty(1280, 3, patch, patch, device="meta"),
              "pos_embed": torch.empty(1, (224 // patch) ** 2, 1280, device="meta"),
              "blocks.31.mlp.fc1.weight": torch.empty(5120, 1280, device="meta"),
              "blocks.0.mlp.fc1.weight": torch.empty(5120, 1280, device="meta"),
              "blocks.0.mlp.fc2.weight": torch.empty(1280, 5120, device="meta"),
              "blocks.0.attn.qkv.weight": torch.empty(3840, 1280, device="meta")}
        return prefixed(sd, "module.")
    for patch in (14, 16):
        ckpt = {"encoder": encoder(patch), "target_encoder": encoder(patch), "predictor": {}, "epoch": 300}
        export = read_backbone(ckpt, path=f"IN1K-vit.h.{patch}-300e.pth.tar")
        assert (export.shape["num_heads"], export.shape["depth"], export.shape["img_size"]) == (16, 32, 224)


def test_backbone_only_releases_are_told_apart_by_their_name_only():
    """A bare timm ViT / torchvision ResNet is DINO's (or an SSL ResNet's) only when its file name says so."""
    vit, net = tiny_vit(1).state_dict(), tiny_resnet(1).state_dict()
    assert read_backbone(vit, path="dino_vitbase8_pretrain.pth").label == "dino"
    assert read_backbone(vit, path="encoder.pth").label == "unknown"
    assert read_backbone(vit | {"head.weight": rand(10, 128), "head.bias": rand(10)},
                         path="dino_finetuned.pth").label == "supervised"  # a classifier: not a DINO backbone
    net = {k: v for k, v in net.items() if not k.startswith("fc.")}
    assert read_backbone(net, path="barlowtwins_resnet50.pth").label == "barlow_twins"
    assert read_backbone(net, path="resnet50.pth").label == "unknown"
    with pytest.raises(CheckpointFormatError, match="fits several checkpoint formats.*swav.*byol"):
        read_backbone(net, path="swav_vs_byol.pth")


# ------------------------------------------------------------------ BEiT v1 / v2, data2vec (pretrain.formats.beit)
# The authors' networks, re-derived from microsoft/unilm beit/modeling_finetune.py + modeling_pretrain.py (BEiT
# v2's beit2/modeling_pretrain.py adds cls_pt_layers; data2vec_vision's modeling_cyclical.py has lm_head D -> D):
# the attention's q / v biases (a zero key bias), relative position bias per block and / or shared by the blocks,
# LayerScale gamma_1 / gamma_2; and the fine-tuning's reading of a pretrained file (run_class_finetuning.py: the
# shared table copied into every block, the pretraining's tensors left out).
def beit_relative_position_index(window: int) -> torch.Tensor:
    distances = (2 * window - 1) ** 2 + 3
    coords = torch.stack(torch.meshgrid([torch.arange(window), torch.arange(window)], indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0).contiguous()
    rel[:, :, 0] += window - 1
    rel[:, :, 1] += window - 1
    rel[:, :, 0] *= 2 * window - 1
    index = torch.zeros((window * window + 1,) * 2, dtype=rel.dtype)
    index[1:, 1:] = rel.sum(-1)
    index[0, 0:] = distances - 3
    index[0:, 0] = distances - 2
    index[0, 0] = distances - 1
    return index


class BeitRelativePositionBias(nn.Module):
    def __init__(self, window: int, heads: int):
        super().__init__()
        self.window = window
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2 + 3, heads))
        self.register_buffer("relative_position_index", beit_relative_position_index(window))

    def forward(self) -> torch.Tensor:
        n = self.window ** 2 + 1
        return self.relative_position_bias_table[self.relative_position_index.view(-1)].view(n, n, -1).permute(2, 0, 1)


class BeitAttention(nn.Module):
    def __init__(self, dim: int, heads: int, window: Optional[int]):
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.q_bias, self.v_bias = nn.Parameter(torch.zeros(dim)), nn.Parameter(torch.zeros(dim))
        self.rel = BeitRelativePositionBias(window, heads) if window else None
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, rel_pos_bias=None):
        B, N, _ = x.shape
        bias = torch.cat((self.q_bias, torch.zeros_like(self.v_bias), self.v_bias))
        q, k, v = nn.functional.linear(x, self.qkv.weight, bias).reshape(B, N, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        if self.rel is not None:
            attn = attn + self.rel().unsqueeze(0)
        if rel_pos_bias is not None:
            attn = attn + rel_pos_bias
        return self.proj((attn.softmax(-1) @ v).transpose(1, 2).reshape(B, N, -1))


class BeitBlock(nn.Module):
    def __init__(self, dim: int, heads: int, window: Optional[int], layer_scale: bool):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
        self.attn = BeitAttention(dim, heads, window)
        self.mlp = nn.Sequential()
        self.mlp.fc1, self.mlp.act, self.mlp.fc2 = nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim)
        if layer_scale:
            self.gamma_1, self.gamma_2 = nn.Parameter(torch.ones(dim)), nn.Parameter(torch.ones(dim))
        else:
            self.gamma_1 = self.gamma_2 = None

    def forward(self, x, rel_pos_bias=None):
        g1, g2 = (self.gamma_1, self.gamma_2) if self.gamma_1 is not None else (1.0, 1.0)
        x = x + g1 * self.attn(self.norm1(x), rel_pos_bias)
        return x + g2 * self.mlp(self.norm2(x))


class BeitViT(nn.Module):
    """The authors' ViT: ``pretraining`` adds the pretraining's tensors (mask_token, lm_head of ``vocab`` outputs,
    BEiT v2's ``cls_pt_layers``); the fine-tuning model (use_mean_pooling=False) has neither."""

    def __init__(self, shared: bool, per_block: bool, abs_pos: bool, pretraining: bool, vocab: int = 50,
                 cls_pt_layers: int = 0, layer_scale: bool = True, dim: int = 64, depth: int = 2, heads: int = 4,
                 patch: int = 8, img: int = 32):
        super().__init__()
        window = img // patch
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, window ** 2 + 1, dim)) if abs_pos else None
        self.rel_pos_bias = BeitRelativePositionBias(window, heads) if shared else None
        self.blocks = nn.ModuleList(BeitBlock(dim, heads, window if per_block else None, layer_scale)
                                    for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        if pretraining:
            self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
            self.lm_head = nn.Linear(dim, vocab)
            if cls_pt_layers:
                self.cls_pt_layers = nn.ModuleList(BeitBlock(dim, heads, None, layer_scale)
                                                   for _ in range(cls_pt_layers))

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """forward_features without masking: every token after the final norm."""
        x = self.patch_embed.proj(x).flatten(2).transpose(1, 2)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        if self.pos_embed is not None:
            x = x + self.pos_embed
        rel_pos_bias = self.rel_pos_bias() if self.rel_pos_bias is not None else None
        for blk in self.blocks:
            x = blk(x, rel_pos_bias)
        return self.norm(x)

    def state_dict_authors(self) -> Dict[str, torch.Tensor]:
        """Its state dict under the authors' names (the relative position modules are the attention's own)."""
        return {k.replace("attn.rel.", "attn."): v for k, v in self.state_dict().items()}


def beit_finetuning_model(pretrained: Dict[str, torch.Tensor], **shape) -> BeitViT:
    """run_class_finetuning.py's reading of a pretrained file into the fine-tuning model (rel_pos_bias per block)."""
    sd = dict(pretrained)
    model = BeitViT(shared=False, per_block=True, abs_pos="pos_embed" in sd, pretraining=False, **shape)
    if "rel_pos_bias.relative_position_bias_table" in sd:
        shared = sd.pop("rel_pos_bias.relative_position_bias_table")
        for i in range(len(model.blocks)):
            # (the authors overwrite a block's own table; a file with both adds both in pretraining: see below)
            own = sd.get(f"blocks.{i}.attn.relative_position_bias_table")
            sd[f"blocks.{i}.attn.relative_position_bias_table"] = shared.clone() if own is None else own + shared
    sd = {k.replace("attn.relative_position", "attn.rel.relative_position"): v for k, v in sd.items()
          if not k.startswith(("mask_token", "lm_head.", "cls_pt_layers.", "rel_pos_bias."))}
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert not unexpected and all(k.endswith("relative_position_index") for k in missing), (missing, unexpected)
    return model.eval()


class BeitReference(nn.Module):
    """The authors' features as the generic check reads them: tokens after the norm, the class token."""

    def __init__(self, net: BeitViT):
        super().__init__()
        self.net = net

    def forward_features(self, x):
        return self.net.tokens(x)

    def forward_head(self, x, pre_logits=True):
        return x[:, 0]


def beit_case(label: str, filename: str, shared=True, per_block=False, abs_pos=False, cls_pt_layers=0,
              wrap="model", extra: Optional[dict] = None, mean_std=None, epochs=None) -> Case:
    vocab = 64 if label == "data2vec" else 50  # data2vec regresses features: lm_head is width to width
    net = randomize(BeitViT(shared, per_block, abs_pos, pretraining=True, vocab=vocab, cls_pt_layers=cls_pt_layers), 3)
    sd = net.state_dict_authors()
    ckpt = {wrap: sd} | (extra or {})
    reference = beit_finetuning_model(sd)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():  # the fine-tuning model's reading is the pretraining forward (a pretrained file's features)
        assert torch.allclose(reference.tokens(x), net.tokens(x), atol=1e-5)
    pretraining_only = ("mask_token", "lm_head.", "cls_pt_layers.")
    backbone = [f"{wrap}.{k}" for k in sd
                if not k.startswith(pretraining_only) and not k.endswith("relative_position_index")]
    mean, std = mean_std or (IMAGENET_MEAN, IMAGENET_STD)
    checks = [lambda e: e.shape["beit"] and e.shape["num_heads"] == 4 and e.shape["img_size"] == 32,
              lambda e: e.shape["abs_pos_emb"] == abs_pos and e.shape["rel_pos_bias"],
              lambda e: (e.mean, e.std) == (mean, std), lambda e: e.provenance.epochs == epochs,
              lambda e: all(f"blocks.{i}.attn.relative_position_bias_table" in e.state_dict for i in range(2))]
    return Case(ckpt, filename, BeitReference(reference), backbone, label=label, checks=checks)


BEIT_CASES: Dict[str, Callable[[], Case]] = {
    # beit_base_patch16_224_pt22k.pth: {'model': ...}, shared relative position bias, no position table, (0.5, 0.5, 0.5)
    "beit-pt22k": lambda: beit_case("beit", "beit_base_patch16_224_pt22k.pth", mean_std=((0.5,) * 3, (0.5,) * 3)),
    # run_beit_pretraining.py's checkpoint on ImageNet-1k: the run's arguments say the normalisation
    "beit-training": lambda: beit_case(
        "beit", "checkpoint-799.pth", per_block=True, shared=False, abs_pos=True, epochs=800,
        extra={"optimizer": {"state": {}}, "epoch": 799, "scaler": {},
               "args": argparse.Namespace(imagenet_default_mean_and_std=True, data_path="/data/in1k")}),
    "beit_v2-pt1k": lambda: beit_case("beit_v2", "beitv2_base_patch16_224_pt1k.pth", wrap="module"),
    "beit_v2-training": lambda: beit_case(
        "beit_v2", "checkpoint-299.pth", cls_pt_layers=1, epochs=300,
        extra={"epoch": 299, "args": argparse.Namespace(tokenizer_model="vqkd_encoder_base_decoder_3x768x12_clip",
                                                        imagenet_default_mean_and_std=True)}),
    # data2vec_vision's checkpoint-799.pth (run_cyclical.py); here also with a per-block table besides the shared one
    "data2vec": lambda: beit_case("data2vec", "checkpoint-799.pth", per_block=True, epochs=800,
                                  extra={"epoch": 799, "optimizer": {"state": {}}}),
}
CASES |= {label: {name: build for name, build in BEIT_CASES.items() if name.split("-")[0] == label}
          for label in ("beit", "beit_v2", "data2vec")}


@pytest.mark.parametrize("case_name", list(BEIT_CASES))
def test_beit_layout_reads_with_the_authors_features(tmp_path, case_name):
    """Every tensor in the export or dropped (the shared table counted once, in every block), timm's Beit rebuilt
    from the exported folder and the frozen backbone both give the authors' fine-tuning model's features."""
    from transfer.backbone import load_frozen_backbone

    case = BEIT_CASES[case_name]()
    path = tmp_path / case.filename
    torch.save(case.ckpt, path)
    export = read_backbone(path)
    assert export.label == case.label
    assert sorted(export.dropped) == sorted(set(flat(case.ckpt)) - set(case.backbone))
    shared = [k for k in case.backbone if k.endswith("rel_pos_bias.relative_position_bias_table")]
    assert set(export.state_dict) >= {k.split(".", 1)[1] for k in case.backbone if k not in shared}
    for check in case.checks:
        assert check(export), export

    net = timm.create_model(f"local-dir:{export.save(tmp_path / 'export')}", pretrained=True).eval()
    assert type(net).__name__ == "Beit"
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        theirs = case.reference.forward_features(x)
        ours = net.forward_features(x)
        assert torch.allclose(ours, theirs, atol=1e-5), (ours - theirs).abs().max()
        assert torch.allclose(net.forward_head(ours, pre_logits=True), theirs[:, 0], atol=1e-5)

    backbone = load_frozen_backbone(path)
    assert (tuple(backbone.mean), tuple(backbone.std)) == (export.mean, export.std)
    assert backbone.pretrain == case.label and backbone.name == export.arch
    assert torch.allclose(backbone.global_features(x), theirs[:, 0], atol=1e-5)
    dense = theirs[:, 1:].transpose(1, 2).reshape(2, 64, 4, 4)
    assert torch.allclose(backbone.dense_features(x), dense, atol=1e-5)
    assert backbone.dense_features(torch.randn(1, 3, 48, 40)).shape == (1, 64, 6, 5)  # tables resampled per size


def test_beit_export_folder_reads_back_as_a_beit(tmp_path):
    case = BEIT_CASES["beit-pt22k"]()
    export = read_backbone(case.ckpt, path=case.filename)
    again = read_backbone(export.save(tmp_path / "beit"))
    assert again.shape == export.shape and (again.mean, again.std) == (export.mean, export.std)
    assert json.loads((tmp_path / "beit" / "config.json").read_text())["model_args"]["global_pool"] == "token"


def test_beit_layouts_are_told_apart_and_other_formats_keep_theirs():
    """BEiT's file is not DINOv2's (both have mask_token and cls_token); BEiT v1 / v2 / data2vec exclusive."""
    from pretrain.formats import format_of

    for name, build in BEIT_CASES.items():
        case = build()
        assert format_of(case.ckpt, case.filename).name == case.label, name
        with pytest.raises(CheckpointFormatError, match="hold one network"):
            read_backbone(case.ckpt, path=case.filename, variant="teacher")
    # a BEiT v1 file named like a v2 release is read as v2 (the released backbones differ by name only)
    assert format_of(BEIT_CASES["beit-pt22k"]().ckpt, "beitv2_large_patch16_224_pt1k.pth").name == "beit_v2"
    assert format_of(dinov2_backbone().ckpt, "dinov2_vits14_pretrain.pth").name == "dinov2"


@pytest.mark.slow
def test_knn_eval_reads_a_beit_file_end_to_end(tmp_path):
    """tools/knn_eval.py on BEiT's released layout: the frozen backbone is timm's Beit, labelled beit, at another
    input size than its pretraining grid (64 px: the relative position tables resampled)."""
    import subprocess
    import sys

    from transfer.classification.data import write_synthetic_folder

    case = BEIT_CASES["beit-pt22k"]()
    torch.save(case.ckpt, tmp_path / case.filename)
    data = write_synthetic_folder(tmp_path / "cls", per_class=4, size=64)
    out = tmp_path / "knn"
    cmd = [sys.executable, "tools/knn_eval.py", str(tmp_path / case.filename), "--train", str(data / "train"),
           "--val", str(data / "val"), "--out", str(out), "--img-size", "64", "--batch", "8", "--num-workers", "0",
           "--device", "cpu", "--k", "3"]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    record = json.loads((out / "results.json").read_text())
    assert record["pretrain"] == "beit", record


def test_plain_vit_protocols_refuse_a_beit_instead_of_losing_its_tensors():
    """Fine-tuning's timm ViT has no relative position bias, q / v biases or LayerScale slots: a BEiT export stops
    there with one line (mmseg's report lists them as mismatched; ViTDet keeps them: tests/test_vitdet_hosts.py)."""
    from transfer.classification.vit import build_vit_classifier, load_vit_backbone, vit_arch
    from transfer.segmentation.convert import convert

    case = BEIT_CASES["beit-training"]()
    export = read_backbone(case.ckpt, path=case.filename)
    with pytest.raises(CheckpointFormatError, match="is a BEiT ViT.*VisionTransformer classifier does not take"):
        load_vit_backbone(build_vit_classifier(vit_arch("auto", export), 10, img_size=32), export)
    report = convert(case.ckpt)
    assert not report.ok and any("q_bias" in k for k in report.mismatched)
