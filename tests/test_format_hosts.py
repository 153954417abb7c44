"""Every published checkpoint format in the transfer hosts: one contract over the format registry.

For each case of each registered format (``pretrain.formats.formats()``: the files tests/test_formats.py and
tests/test_formats_clip.py build in the authors' released layouts, tiny and random), the file is read by the two
transfer frameworks as their tools read it, and the features are compared to 1e-5 (CPU fp32) with the authors'
network (where it is timm's or torchvision's: DINO, iBOT, DINOv2, I-JEPA, the SSL ResNets) or the export's timm
network (CLIP, OpenCLIP; BEiT in mmseg: its equality with the authors' forward is tests/test_formats*.py's), and every
tensor of the file is used by the host or named as dropped:

* detectron2: ``transfer.detection.convert.load_converted`` and the host the conversion names: the project's
  ViTDet ``ViT`` with the file's arguments (``sslkit.net``; all blocks global, input at the pretraining grid),
  reference the ViT run as ViTDet runs it (no class token; BEiT: the authors' blocks over the patches); or
  detectron2's ``ResNet`` as the project's R-18 FPN config builds it (batch norm frozen), each stage against
  torchvision's in eval mode.
* mmseg: the backbone tools/train_seg.py's configs route the file to (the configs choose it; the rule is the
  MAE backbone's own refusal, ``transfer.segmentation.vit.unheld_options``): a plain ViT to mmseg's MAE
  (``MAEViTEncoder``; ``MAETimmViT`` gives the same maps), one with options mmseg's MAE cannot compute to
  ``MAETimmViT`` (the MAE host refusing it with the reason), a ResNet to ``ResNetEncoder`` (``MAETimmViT``
  refusing it, naming the ResNet configs); each block's / stage's map compared.

A format registered without a case here fails (as tests/test_formats.py's registry test).
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Set

import pytest
import timm
import torch
import torchvision
from timm.models.vision_transformer import VisionTransformer

from conftest import REPO
from pretrain.backbones import read_backbone
from pretrain.checkpoint import CheckpointFormatError
from pretrain.errors import ConfigError
from pretrain.formats import formats
from test_formats import CASES, CASES_ELSEWHERE, flat
from test_formats_clip import IMG as CLIP_IMG
from test_formats_clip import KINDS as CLIP_KINDS
from test_formats_clip import write_case as write_clip_case
from test_mmseg_encoders import resnet_stage_maps  # torchvision's ResNet, stage by stage

pytestmark = pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")  # the CLIP archives are traced

ATOL = 1e-5
R18_FPN = REPO / "configs" / "detectron2" / "tiny" / "mask_rcnn_R_18_FPN.py"  # the project's ResNet recipe
# tests/test_formats_clip.py's kinds by the format that claims them (OpenAI's files: clip; OpenCLIP's: openclip)
CLIP_CASES = {"clip": [k for k in CLIP_KINDS if k.startswith("openai-")],
              "openclip": [k for k in CLIP_KINDS if k.startswith("openclip-")]}
assert set(CLIP_CASES) == set(CASES_ELSEWHERE) and sum(map(len, CLIP_CASES.values())) == len(CLIP_KINDS)


def builds_a_resnet(family: str, name: Optional[str]) -> bool:
    """The cases of the SSL ResNet formats and DINO's RN-50 layouts (torchvision ResNet-18s here): the slow ones."""
    return formats()[family].__module__.endswith(".ssl_resnet") or "resnet" in (name or "")


def host_cases() -> List:
    """(format, case) for every registered format: its cases in tests/test_formats*.py; a format with none gets
    one (format, None) entry, which fails. The ResNet cases are marked slow."""
    out = []
    for family in sorted(formats()):
        names = list(CASES.get(family, {})) + CLIP_CASES.get(family, []) or [None]
        for name in names:
            marks = [pytest.mark.slow] if builds_a_resnet(family, name) else []
            out.append(pytest.param(family, name, id=f"{family}-{name or 'no-case'}", marks=marks))
    return out


class TensorsUnaccounted(AssertionError):
    """A tensor of the file neither in the backbone the host loads nor named as dropped under its place in the file."""


@dataclass
class Released:
    """A released file written to disk, and what reading it must give."""

    family: str
    path: Path
    img: int  # the pretraining's input size (the position tables' grid)
    variant: Optional[str]
    allow_pickle: bool
    file_tensors: Set[str]  # every tensor of the file, by dotted place
    backbone: Set[str]  # those the backbone is made of (the rest must be named as dropped)
    authors: Optional[torch.nn.Module]  # the authors' network where it is timm's / torchvision's, else None
    beit: Optional[torch.nn.Module] = None  # BEiT's: the authors' fine-tuning model (tests/test_formats.py)


def released(family: str, name: Optional[str], folder: Path) -> Released:
    if name is None:
        pytest.fail(f"format {family!r} is registered but has no file built in its released layout here: add its "
                    f"cases to tests/test_formats.py's CASES (or a module of CASES_ELSEWHERE)")
    if family in CLIP_CASES:
        case = write_clip_case(name, folder)
        keys = set(case.model.state_dict())
        visual = {k for k in keys if k.startswith("visual.") and k != "visual.proj"}
        return Released(case.label, folder / case.filename, CLIP_IMG, None, case.allow_pickle,
                        {case.place + k for k in keys}, {case.place + k for k in visual}, None)
    case = CASES[family][name]()
    path = folder / case.filename
    torch.save(case.ckpt, path)
    ref = case.reference
    authors = ref if isinstance(ref, (VisionTransformer, torchvision.models.ResNet)) else None
    return Released(case.label, path, case.img, case.variant, False, set(flat(case.ckpt)), set(case.backbone),
                    authors, getattr(ref, "net", None))


def export_timm(export, folder: Path) -> torch.nn.Module:
    """The network timm rebuilds from the export's folder alone (config.json + weights)."""
    return timm.create_model(f"local-dir:{export.save(folder / 'export')}", pretrained=True).eval()


def assert_file_accounted(f: Released, export, dropped: List[str]) -> None:
    """Every tensor of the file: in the backbone the host gets, or named in the conversion's dropped list."""
    assert f.backbone <= f.file_tensors
    outside = f.file_tensors - f.backbone  # the reader's part: tests/test_formats*.py check it too
    assert set(export.dropped) == outside, sorted(set(export.dropped) ^ outside)
    unnamed = set(export.dropped) - set(dropped)
    if unnamed:
        raise TensorsUnaccounted(f"not named as dropped under their place in the file: {sorted(unnamed)}; "
                                 f"the host's dropped list: {sorted(dropped)}")


# ------------------------------------------------------------------ detectron2
def detectron2_resnet(depth: int) -> torch.nn.Module:
    """detectron2's ResNet as the project's R-18 FPN recipe builds it (its bottom-up), of the file's depth, every
    stage an output, batch norm frozen."""
    from detectron2.config import LazyConfig, instantiate

    bottom_up = LazyConfig.load(str(R18_FPN)).model.backbone.bottom_up
    bottom_up.stages.depth = depth
    if depth >= 50:  # torchvision's stride placement, as the full-size MoCo recipes (configs/detectron2/common)
        bottom_up.stages.stride_in_1x1 = False
    bottom_up.out_features = ["res2", "res3", "res4", "res5"]
    bottom_up.stem.norm = bottom_up.stages.norm = "FrozenBN"  # the statistics as trained (detectron2's default)
    return instantiate(bottom_up)


@pytest.mark.detectron2
@pytest.mark.parametrize("family,case_name", host_cases())
def test_detectron2_host_gives_the_features_with_every_tensor_accounted_for(tmp_path, family, case_name):
    from transfer.detection.backbones import ViT
    from transfer.detection.convert import VIT_PREFIX, load_converted, resnet_to_detectron2, vit_to_detectron2

    f = released(family, case_name, tmp_path)
    export = read_backbone(f.path, allow_pickle=f.allow_pickle, variant=f.variant)
    assert export.label == f.family == family
    converted, _ = load_converted(f.path, allow_pickle=f.allow_pickle, variant=f.variant)
    assert converted["sslkit"]["pretrain"] == family
    weights = converted["model"]
    img = torch.randn(2, 3, f.img, f.img)

    if export.family == "vit":
        vit_weights, dropped, _, info = vit_to_detectron2(export)
        assert set(vit_weights) == set(weights)  # the accounting below is of the conversion the host loads
        used = {k[len(VIT_PREFIX):] for k in weights}
        adapted = info.get("adapted", {})  # BEiT: q / v biases into qkv.bias, gamma_i into LayerScale
        by_design = set(dropped) - set(export.dropped)
        kept = used & set(export.state_dict)
        # each tensor of the export: used under its name, adapted into another, or dropped by design; none twice
        assert kept | set(adapted) | by_design == set(export.state_dict)
        assert not kept & set(adapted) and not (kept | set(adapted)) & by_design
        assert by_design <= {"cls_token", "norm.weight", "norm.bias"} and used - kept <= set(adapted.values())
        assert_file_accounted(f, export, dropped)

        net = converted["sslkit"]["net"]
        assert net["patch_size"] == export.shape["patch_size"]  # as trained (load_converted resizes on request)
        vit = ViT(img_size=f.img, **({"use_rel_pos": True} | net), window_size=0, window_block_indexes=[])
        loaded = vit.load_state_dict({k[len(VIT_PREFIX):]: v for k, v in weights.items()}, strict=False)
        assert not loaded.unexpected_keys
        # detectron2's decomposed relative position terms (zero) are the only tensors the file does not fill
        assert all(k.endswith(("rel_pos_h", "rel_pos_w")) for k in loaded.missing_keys), loaded.missing_keys
        assert not (export.shape.get("beit") and loaded.missing_keys)
        vit.eval()
        with torch.no_grad():
            got = vit(img)["last_feat"]
            if export.shape.get("beit"):
                from test_vitdet_hosts import authors_patch_map

                want = authors_patch_map(f.beit, img)
            else:
                from test_vitdet_hosts import timm_patch_map

                want = timm_patch_map(f.authors or export_timm(export, tmp_path), img)
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, atol=ATOL, rtol=ATOL)
        return

    resnet_weights, dropped, arch = resnet_to_detectron2(export)
    assert set(resnet_weights) == set(weights)
    assert converted["sslkit"]["backbone"] == arch == export.arch
    by_design = set(dropped) - set(export.dropped)
    assert by_design == {k for k in export.state_dict if k.endswith("num_batches_tracked")}  # a counter, no weight
    assert len(weights) + len(by_design) == len(export.state_dict)
    assert_file_accounted(f, export, dropped)

    d2 = detectron2_resnet(int(arch[len("resnet"):]))
    loaded = d2.load_state_dict(weights, strict=False)
    assert not loaded.unexpected_keys
    assert not loaded.missing_keys  # FrozenBN has no counter: every tensor of the host comes from the file
    d2.eval()
    with torch.no_grad():
        got = d2(img)
        want = resnet_stage_maps(f.authors.eval(), img)
    for i, w in enumerate(want, start=2):
        torch.testing.assert_close(got[f"res{i}"], w, atol=ATOL, rtol=ATOL, msg=lambda m: f"res{i}: {m}")


# ------------------------------------------------------------------ mmseg
@pytest.mark.skipif(importlib.util.find_spec("mmseg") is None, reason="mmsegmentation is not installed")
@pytest.mark.parametrize("family,case_name", host_cases())
def test_mmseg_host_gives_the_maps_with_every_tensor_accounted_for(tmp_path, family, case_name):
    from transfer.segmentation.checkpoint import load_checkpoint_file
    from transfer.segmentation.resnet import ResNetEncoder, resnet_depth, resnet_to_mmseg
    from transfer.segmentation.timm_vit import MAETimmViT, timm_vit_to_host
    from transfer.segmentation.vit import MAEViTEncoder, mmseg_vit_kwargs, unheld_options, vit_to_mmseg

    f = released(family, case_name, tmp_path)
    export = read_backbone(f.path, allow_pickle=f.allow_pickle, variant=f.variant)
    assert export.label == family
    pretrained = dict(type="Pretrained", checkpoint=str(f.path))
    img = torch.randn(2, 3, f.img, f.img)

    if export.family == "resnet":
        host = ResNetEncoder(depth=resnet_depth(export.state_dict), out_indices=(0, 1, 2, 3), init_cfg=pretrained,
                             variant=f.variant)
        host.init_weights()
        host.eval()
        with torch.no_grad():
            got, want = host(img), resnet_stage_maps(f.authors.eval(), img)
        assert len(got) == len(want) == 4
        for i, (a, b) in enumerate(zip(got, want)):
            torch.testing.assert_close(a, b, atol=ATOL, rtol=ATOL, msg=lambda m: f"stage {i}: {m}")
        # the ViT configs' backbone refuses it, saying which configs take it
        with pytest.raises((CheckpointFormatError, ConfigError), match="not a ViT.*ResNet configs"):
            MAETimmViT(embed_dims=64, init_cfg=pretrained, variant=f.variant)
        _, report = resnet_to_mmseg(load_checkpoint_file(f.path), host.state_dict(), source=str(f.path),
                                    variant=f.variant)
        assert report.ok and report.converted == len(export.state_dict) and not report.missing_by_design
        assert_file_accounted(f, export, report.dropped)
        return

    depth = export.shape["depth"]
    ckpt = load_checkpoint_file(f.path, allow_pickle=f.allow_pickle)
    timm_host = MAETimmViT(embed_dims=export.shape["embed_dim"], out_indices=tuple(range(depth)), init_cfg=pretrained,
                           allow_pickle=f.allow_pickle, variant=f.variant)
    timm_host.init_weights()
    _, report = timm_vit_to_host(export, timm_host.state_dict(), source=str(f.path))
    final_norm = {k for k in export.state_dict if k.startswith("norm.")}
    assert report.ok and report.converted == len(export.state_dict) - len(final_norm)
    assert set(report.dropped) == set(export.dropped) | final_norm
    assert_file_accounted(f, export, report.dropped)
    hosts = {"MAETimmViT": timm_host.eval()}

    mae = MAEViTEncoder(img_size=f.img, **mmseg_vit_kwargs(export.shape), out_indices=tuple(range(depth)),
                        variant=f.variant)
    if unheld_options(export):  # the config's MAETimmViT hosts it; mmseg's MAE refuses, naming that host
        with pytest.raises(CheckpointFormatError, match="MAETimmViT"):
            mae.load_pretrained(f.path, allow_pickle=f.allow_pickle)
    else:  # a plain ViT (LayerScale and patch 14 included): mmseg's MAE, the MAE configs' backbone
        mae.load_pretrained(f.path, allow_pickle=f.allow_pickle)
        _, report = vit_to_mmseg(ckpt, mae.state_dict(), grid=tuple(mae.patch_shape), final_norm=mae.final_norm,
                                 source=str(f.path), variant=f.variant)
        assert report.ok and set(report.dropped) - set(export.dropped) <= final_norm
        assert all("relative_position" in k for k in report.missing_by_design), report.missing_by_design
        assert_file_accounted(f, export, report.dropped)
        mae.eval()  # (mmseg's ViT.train returns None)
        hosts["MAEViTEncoder"] = mae

    reference = f.authors or export_timm(export, tmp_path)
    with torch.no_grad():
        want = reference.forward_intermediates(img, indices=list(range(depth)), norm=False, output_fmt="NCHW",
                                               intermediates_only=True)
        for name, host in hosts.items():
            got = host(img)
            assert len(got) == len(want) == depth, name
            for i, (a, b) in enumerate(zip(got, want)):
                assert a.shape == b.shape, (name, i)
                torch.testing.assert_close(a, b, atol=ATOL, rtol=ATOL, msg=lambda m: f"{name} block {i}: {m}")


def test_every_registered_format_has_host_cases():
    """The contract covers the registry: each format has a case (a new one without fails here and above)."""
    covered = {p.values[0] for p in host_cases() if p.values[1] is not None}
    assert covered == set(formats()), set(formats()) - covered
