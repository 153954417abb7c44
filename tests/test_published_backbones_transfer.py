"""The published ViTs through the classification rungs and the ladder (issue 25, part 2).

The files are built as tests/test_formats.py and tests/test_formats_clip.py build them (the authors' released
layouts, random weights): DINOv2 with registers (LayerScale, four registers, a position table without the
prefix tokens' rows), CLIP (OpenAI's state dict: ``ln_pre``, QuickGELU, LayerNorm eps 1e-5, CLIP's input
normalisation), I-JEPA (no class token, average pooling), DINO training checkpoints (teacher / student).

* The linear probe's and fine-tuning's classifier (``transfer.classification.vit``) is the network the export
  describes: its backbone features equal timm's model rebuilt from the export's ``config.json`` and the
  authors' forward, to 1e-5 on CPU fp32; layer-wise lr decay finds every parameter's layer.
* tools/train_cls.py normalises the inputs as the backbone was trained (CLIP's mean / std for a CLIP file).
* ``--variant`` (DINO's student, ...) reaches the classifier, the frozen backbone and the ladder's jobs, in a
  folder of its own.
* Done-when (slow): a pico-sized DINOv2-with-registers and CLIP file run tools/evaluate.py's quick suite
  end to end (kNN, linear probe, dense probe) with a random baseline, labelled dinov2 / clip.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
import torch.nn as nn
from timm.models.vision_transformer import VisionTransformer

from conftest import run_tool
from pretrain.backbones import read_backbone
from pretrain.formats.clip import CLIP_MEAN, CLIP_STD
from pretrain.transforms import IMAGENET_MEAN, IMAGENET_STD
from test_formats import dinov2_backbone, dinov2_layout, dino_head, ijepa, prefixed, randomize
from test_formats_clip import CLIP, authors_features, tiny_clip
from test_formats_clip import VisionTransformer as AuthorsCLIPViT

pytestmark = pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")


# ------------------------------------------------------------------ files
def clip_file(folder: Path, model: CLIP = None) -> Path:
    """OpenAI's state dict (``clip.load(jit=False).state_dict()``), fp16 as their release."""
    model = model or tiny_clip(3)
    model.half().float()  # the features the fp16 weights give in fp32
    path = folder / "clip_vit_b16.pth"
    torch.save({k: v.half() for k, v in model.state_dict().items()}, path)
    return path


def pico_vit(seed: int, **kw) -> VisionTransformer:
    """The ladder's CPU backbone's shape (vit_pico_patch8: 96 wide, 4 blocks, 3 heads), which has recipes."""
    return randomize(VisionTransformer(img_size=32, patch_size=8, embed_dim=96, depth=4, num_heads=3, num_classes=0,
                                       **kw), seed)


def pico_dinov2_reg_file(folder: Path) -> Path:
    """A DINOv2 ViT with registers (LayerScale, 4 registers) of the pico shape, in the authors' layout."""
    path = folder / "dinov2_vits14_reg4_pretrain.pth"
    torch.save(dinov2_layout(pico_vit(1, init_values=1e-5, reg_tokens=4, no_embed_class=True), seed=5), path)
    return path


def pico_clip_file(folder: Path) -> Path:
    """A CLIP ViT of the pico shape (96 wide, 4 blocks, patch 8; one head: the authors derive width // 64)."""
    torch.manual_seed(0)
    model = CLIP(16, 32, 4, 96, 8, 6, 20, 64, 1, 1)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return clip_file(folder, model.eval())


def pico_dino_training_file(folder: Path):
    """main_dino.py's checkpoint of pico ViTs: (path, {variant: the network})."""
    nets = {"teacher": pico_vit(1), "student": pico_vit(2)}
    ckpt = {"epoch": 100, "dino_loss": {"center": torch.zeros(1, 100)}}
    ckpt["teacher"] = prefixed(nets["teacher"].state_dict(), "backbone.") | prefixed(dino_head(3, 96), "head.")
    ckpt["student"] = prefixed(nets["student"].state_dict(), "module.backbone.") | \
        prefixed(dino_head(4, 96), "module.head.")
    path = folder / "checkpoint.pth"
    torch.save(ckpt, path)
    return path, nets


def timm_model(export, folder: Path) -> nn.Module:
    """timm's model of the export, from the folder ``BackboneExport.save`` writes (an independent build)."""
    return timm.create_model(f"local-dir:{export.save(folder)}", pretrained=True).eval()


def classifier(export, global_pool: str, img_size: int, num_classes: int = 3):
    """The classification protocols' ViT of ``export``, its pretrained weights loaded (as MAELinear / MAEFinetune)."""
    from transfer.classification.vit import build_vit_classifier, load_vit_backbone, vit_arch

    model = build_vit_classifier(vit_arch("auto", export), num_classes, img_size, global_pool=global_pool,
                                 bn_head=global_pool == "token", options=export.vit_kwargs())
    report = load_vit_backbone(model, export)
    return model.eval(), report


# ------------------------------------------------------------------ the classifier is the export's network
def dinov2_case(tmp_path):
    case = dinov2_backbone(reg=True)
    return read_backbone(case.ckpt, path=case.filename), case.reference, case.img


def clip_case(tmp_path):
    model = tiny_clip(3)
    export = read_backbone(clip_file(tmp_path, model))
    return export, model.visual, 32


def ijepa_case(tmp_path):
    case = ijepa("target")
    return read_backbone(case.ckpt, path=case.filename), case.reference, case.img


@pytest.mark.parametrize("build", [dinov2_case, clip_case, ijepa_case], ids=["dinov2-reg4", "clip", "ijepa"])
def test_linear_probe_classifier_features_equal_the_exports_timm_model(tmp_path, build):
    export, authors, img = build(tmp_path)
    model, report = classifier(export, "token", img)
    ref = timm_model(export, tmp_path / "timm")
    x = torch.randn(2, 3, img, img)
    with torch.no_grad():
        ours = model.forward_head(model.forward_features(x), pre_logits=True)
        theirs = ref.forward_head(ref.forward_features(x), pre_logits=True)
        authors_out = authors_features(authors, x) if isinstance(authors, AuthorsCLIPViT) \
            else authors.forward_head(authors.forward_features(x), pre_logits=True)
    assert ours.shape == (2, export.shape["embed_dim"])
    assert torch.allclose(ours, theirs, atol=1e-5), (ours - theirs).abs().max()
    assert torch.allclose(ours, authors_out, atol=1e-5), (ours - authors_out).abs().max()
    # Every tensor of the export went in; none is reported unexpected or missing (the head is the probe's own).
    assert report.converted == len(export.state_dict) and all(k.startswith("head.") for k in report.missing_by_design)


@pytest.mark.parametrize("build", [dinov2_case, clip_case], ids=["dinov2-reg4", "clip"])
def test_finetuning_classifier_keeps_the_blocks_and_decays_by_layer(tmp_path, build):
    """Average pooling: the blocks' tokens equal timm's model's (its final norm left out, as fine-tuning does), and
    layer-wise lr decay ranks the registers, CLIP's norm before the blocks and LayerScale by their layer."""
    from transfer.classification.vit import param_groups_layer_decay

    export, _, img = build(tmp_path)
    model, report = classifier(export, "avg", img)
    ref = timm_model(export, tmp_path / "timm")
    ref.norm = nn.Identity()
    x = torch.randn(2, 3, img, img)
    with torch.no_grad():
        assert torch.allclose(model.forward_features(x), ref.forward_features(x), atol=1e-5)
    assert sorted(k for k in report.dropped if k.startswith("norm.")) == ["norm.bias", "norm.weight"]  # by design

    groups = param_groups_layer_decay(model, weight_decay=0.05, layer_decay=0.75)
    layer = {name: (g["layer_id"], g["weight_decay"]) for g in groups for name in g["param_names"]}
    assert sorted(layer) == sorted(n for n, _ in model.named_parameters())  # every parameter in one group
    depth = len(model.blocks)
    for name, (layer_id, decay) in layer.items():
        if name.startswith("blocks."):
            assert layer_id == int(name.split(".")[1]) + 1, name
        elif name.startswith(("head.", "fc_norm.")):
            assert layer_id == depth + 1, name
        else:  # the embeddings: patch, position, class, registers, CLIP's ln_pre
            assert layer_id == 0, name
        if name in ("reg_token", "cls_token", "pos_embed") or name.endswith((".bias", "gamma")):
            assert decay == 0.0, name
    if export.label == "dinov2":
        assert layer["reg_token"][0] == 0 and layer["blocks.1.ls2.gamma"][0] == 2
    else:
        assert layer["norm_pre.weight"][0] == 0 and model.norm_pre.eps == 1e-5


def test_a_beit_file_is_refused_by_the_classifier_with_the_reason():
    from test_formats import BEIT_CASES

    from pretrain.checkpoint import CheckpointFormatError
    from transfer.classification.protocols import protocol

    case = next(iter(BEIT_CASES.values()))()
    export = read_backbone(case.ckpt, path=case.filename)

    class Cfg:
        class model:
            checkpoint = case.filename

    with pytest.raises(CheckpointFormatError, match="BEiT ViT .*frozen-backbone rungs"):
        protocol("mae_linear").check_pretrained(Cfg, export)


# ------------------------------------------------------------------ normalisation and variants in train_cls
def train_cls(protocol_name: str, out: Path, *extra):
    from transfer.classification.config import load_cls_config
    from transfer.classification.engine import ClassificationTrainer

    args = ["data.synthetic=true", "data.synthetic_per_class=8", "data.img_size=32", "data.num_workers=0",
            "train.batch_size=8", "train.epochs=1", "train.device=cpu", "train.progress=false",
            "train.tensorboard=false", f"train.output_dir={out}", "optim.warmup_epochs=0", *extra]
    trainer = ClassificationTrainer(load_cls_config(None, args, protocol=protocol_name))
    trainer.fit()
    return trainer, json.loads((out / "results.json").read_text())


def test_a_clip_checkpoints_linear_probe_normalises_with_clips_mean_and_std(tmp_path):
    path = pico_clip_file(tmp_path)
    trainer, res = train_cls("mae_linear", tmp_path / "run", f"model.checkpoint={path}")
    assert res["pretrain"] == "clip" and res["backbone"] == "vit_pico_patch8"
    assert (tuple(res["recipe"]["mean"]), tuple(res["recipe"]["std"])) == (CLIP_MEAN, CLIP_STD)
    # Observed in the transforms the run's batches went through: white pixels come out as (1 - mean) / std.
    white = torch.full((1, 3, 4, 4), 255, dtype=torch.uint8)
    expected = ((1 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)).view(1, 3, 1, 1).expand(1, 3, 4, 4)
    assert torch.allclose(trainer.val_set.device_transform(white.clone(), torch.device("cpu")), expected, atol=1e-6)
    train = trainer.device_transform.normalize  # then random erasing (off in the linear protocol)
    assert torch.allclose(train(white.clone(), torch.device("cpu")), expected, atol=1e-6)
    assert CLIP_MEAN != IMAGENET_MEAN


def test_dinov2_reg_finetunes_with_layer_decay_and_imagenet_normalisation(tmp_path):
    path = pico_dinov2_reg_file(tmp_path)
    trainer, res = train_cls("mae_finetune", tmp_path / "run", f"model.checkpoint={path}", "model.layer_decay=0.75",
                             "data.mixup=0", "data.cutmix=0", "data.auto_augment=null", "data.reprob=0")
    assert res["pretrain"] == "dinov2" and res["task"] == "imagenet_finetune"
    assert tuple(res["recipe"]["mean"]) == IMAGENET_MEAN and res["recipe"]["layer_decay"] == 0.75
    assert trainer.model.reg_token.shape == (1, 4, 96) and trainer.model.blocks[0].ls1.gamma.requires_grad
    scales = {g["layer_id"]: g["lr_scale"] for g in trainer.optimizer.param_groups}
    assert scales[0] == pytest.approx(0.75 ** 5) and scales[5] == 1.0


def test_variant_picks_the_network_in_the_classifier_and_the_frozen_backbone(tmp_path):
    from transfer.backbone import load_frozen_backbone
    from transfer.classification.config import load_cls_config
    from transfer.classification.protocols import protocol

    path, nets = pico_dino_training_file(tmp_path)
    x = torch.randn(2, 3, 32, 32)
    for variant in ("teacher", "student"):
        ref = nets[variant]
        with torch.no_grad():
            expected = ref.forward_head(ref.forward_features(x), pre_logits=True)
        frozen = load_frozen_backbone(path, variant=variant)
        assert torch.allclose(frozen.global_features(x), expected, atol=1e-5), variant
        cfg = load_cls_config(None, [f"model.checkpoint={path}", f"model.variant={variant}", "data.img_size=32",
                                     "data.synthetic=true"], protocol="mae_linear")
        p = protocol("mae_linear")
        model, _ = p.build_model(cfg, 3)
        p.load_pretrained(model, cfg, read_backbone(path, variant=variant))
        with torch.no_grad():
            assert torch.allclose(model.eval().forward_head(model.forward_features(x), pre_logits=True), expected,
                                  atol=1e-5), variant
        # The frozen check re-reads the same network.
        assert torch.equal(p.backbone_state(model, cfg)["cls_token"], ref.cls_token)


def test_knn_eval_feeds_a_clip_backbone_clips_normalisation(tmp_path):
    """The pixels the backbone sees are (x - CLIP mean) / CLIP std of the images' uint8 values: undoing CLIP's
    normalisation gives back multiples of 1/255, undoing ImageNet's does not."""
    import argparse
    import importlib.util

    from transfer.backbone import load_frozen_backbone
    from transfer.classification.data import write_synthetic_folder

    data = write_synthetic_folder(tmp_path / "cls", per_class=2, size=32)
    backbone = load_frozen_backbone(pico_clip_file(tmp_path))
    seen = []
    features = backbone._global_features
    backbone._global_features = lambda x: (seen.append(x.clone()), features(x))[1]
    args = argparse.Namespace(train=str(data / "train"), val=str(data / "val"), out=str(tmp_path / "knn"), k=3,
                              temperature=0.07, img_size=32, batch=8, seed=0, device="cpu", precision="fp32",
                              compile=False, num_workers=0, pretrain=None, checkpoint="clip_vit_b16.pth",
                              variant=None)
    spec = importlib.util.spec_from_file_location("knn_eval_tool", Path(__file__).parents[1] / "tools/knn_eval.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    tool.knn_eval(args, backbone)
    x = torch.cat(seen)

    def pixels(mean, std):
        return (x * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)) * 255

    clip = pixels(CLIP_MEAN, CLIP_STD)
    assert torch.allclose(clip, clip.round(), atol=1e-3) and clip.min() > -1e-3 and clip.max() < 255 + 1e-3
    imagenet = pixels(IMAGENET_MEAN, IMAGENET_STD)
    assert not torch.allclose(imagenet, imagenet.round(), atol=1e-3)
    record = json.loads((tmp_path / "knn" / "results.json").read_text())
    assert (tuple(record["recipe"]["mean"]), tuple(record["recipe"]["std"])) == (CLIP_MEAN, CLIP_STD)


def test_knn_eval_evaluates_and_records_the_variant(tmp_path):
    from transfer.classification.data import write_synthetic_folder

    path, _ = pico_dino_training_file(tmp_path)
    data = write_synthetic_folder(tmp_path / "cls", per_class=2, size=32)
    out = tmp_path / "knn"
    run_tool("tools/knn_eval.py", path, "--variant", "student", "--train", data / "train", "--val", data / "val",
             "--out", out, "--img-size", "32", "--num-workers", "0", "--k", "3", "--device", "cpu")
    record = json.loads((out / "results.json").read_text())
    assert record["pretrain"] == "dino" and record["recipe"]["variant"] == "student"


def test_the_ladder_passes_the_variant_and_keeps_its_results_apart(tmp_path):
    from pretrain.synthetic import write_segmentation_dataset
    from transfer import ladder
    from transfer.classification.data import write_synthetic_folder

    path, _ = pico_dino_training_file(tmp_path)
    write_synthetic_folder(tmp_path / "cls", per_class=2, size=32)
    write_segmentation_dataset(tmp_path / "seg", "train", 2, size=(32, 32))
    write_segmentation_dataset(tmp_path / "seg", "val", 2, size=(32, 32), seed=1)
    data = {"imagenet": str(tmp_path / "cls"), "ade20k": str(tmp_path / "seg")}
    rungs = ["knn", "linear", "dense_probe", "finetune"]
    default = ladder.plan(path, tmp_path / "out", rungs, data, 1, "random")
    student = ladder.plan(path, tmp_path / "out", rungs, data, 1, "random", variant="student")
    assert Path(student.folder).name.startswith("checkpoint-student-") and student.folder != default.folder
    assert {j.rung for j in student.jobs} == set(rungs)
    for job in student.jobs:
        has = "--variant" in job.command
        assert has == (job.subject.role == "pretrained"), job.command  # the random baseline has no variant
        if has:
            assert job.command[job.command.index("--variant") + 1] == "student"
    assert not any("--variant" in j.command for j in default.jobs)
    # A rung whose tool takes no --variant is skipped with the reason, not run on the default network.
    seg = ladder.plan(path, tmp_path / "out", ["knn", "segmentation"], data, 1, "random", variant="student")
    assert {j.rung for j in seg.jobs} == {"knn"}
    assert seg.skipped == ["segmentation: tools/train_seg.py takes no --variant (it would evaluate the default network)"]
    assert "segmentation" in {j.rung for j in ladder.plan(path, tmp_path / "out", ["segmentation"], data, 1,
                                                           "random").jobs}  # it runs without a variant


# ------------------------------------------------------------------ done when
@pytest.mark.slow
def test_dinov2_reg_and_clip_files_run_the_quick_suite_end_to_end(tmp_path):
    from pretrain.synthetic import write_segmentation_dataset
    from transfer.classification.data import write_synthetic_folder
    from transfer.results import read_results

    files = {"dinov2": pico_dinov2_reg_file(tmp_path), "clip": pico_clip_file(tmp_path)}
    write_synthetic_folder(tmp_path / "cls", per_class=8, size=32)
    write_segmentation_dataset(tmp_path / "seg", "train", 8, size=(32, 32))
    write_segmentation_dataset(tmp_path / "seg", "val", 4, size=(32, 32), seed=1)
    out = tmp_path / "ladder"
    train = ("train.progress=false train.tensorboard=false data.num_workers=0 data.img_size=32 "
             "train.epochs=1 train.batch_size=16")
    run_tool("tools/evaluate.py", *files.values(), "--suite", "quick", "--baseline", "random", "--seeds", "1",
             "--out", out, "--data", f"imagenet={tmp_path / 'cls'}", f"ade20k={tmp_path / 'seg'}",
             "--rung-args", f"linear={train}", "knn=--img-size 32 --num-workers 0",
             "dense_probe=--iters 10 --crop 32 --batch 4 --num-workers 0", timeout=600)
    for label, path in files.items():
        folder = next(out.glob(f"{path.name.split('.')[0]}-*"))
        plan = json.loads((folder / "plan.json").read_text())
        assert (plan["checkpoint"]["pretrain"], plan["checkpoint"]["backbone"]) == (label, "vit_pico_patch8")
        done = {}
        for job in plan["jobs"]:
            rec = read_results(Path(job["folder"]) / "results.json")  # every job ran and wrote its results
            role = job["subject"]["role"]
            assert rec["pretrain"] == (label if role == "pretrained" else "random"), job["key"]
            done[(job["rung"], role)] = rec
        assert set(done) == {(r, s) for r in ("knn", "linear", "dense_probe") for s in ("pretrained", "baseline")}
        linear = done[("linear", "pretrained")]["recipe"]
        expected = (CLIP_MEAN, CLIP_STD) if label == "clip" else (IMAGENET_MEAN, IMAGENET_STD)
        assert (tuple(linear["mean"]), tuple(linear["std"])) == expected
        knn = done[("knn", "pretrained")]["recipe"]
        assert (tuple(knn["mean"]), tuple(knn["std"])) == expected
        assert (folder / "report" / "report.md").is_file()
