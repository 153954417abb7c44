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


def test_every_registered_format_has_a_file_built_in_its_released_layout():
    assert set(formats()) == set(CASES)


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
