"""The published ViTs through the classification rungs and the ladder (issue 25, part 2).

The files are built as tests/test_formats.py and tests/test_formats_clip.py build them (the authors' released
layouts, random weights): DINOv2 with registers (LayerScale, four registers, a position table without the
prefix tokens' rows), CLIP (OpenAI's state dict: ``ln_pre``, QuickGELU, LayerNorm eps 1e-5, CLIP's input
normalisation), I-JEPA (no class token, average pooling), DINO training checkpoints (teacher / student).

* The linear probe's and fine-tuning's classifier (``transfer.classification.vit``) is the network the export
  describes: its backbone features equal timm's model rebuilt from the export's ``config.json`` and the
  authors' forward, to 1e-5 on CPU fp32; layer-wise lr decay finds every parameter's layer.
* BEiT v1 / v2 and data2vec files build timm's ``Beit`` in the classifiers: its features equal timm's Beit from
  ``config.json`` (the linear probe: the patch tokens' mean after the final norm; fine-tuning: mean pooling, a fresh
  fc_norm), at another size its tables are timm's ``set_input_size``'s, layer decay ranks every parameter.
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


# ------------------------------------------------------------------ BEiT v1 / v2, data2vec: timm's Beit
# tests/test_formats.py's BEiT files (the authors' layouts, random weights: 64 wide, 2 blocks, 4 heads, patch 8,
# pretrained at 32 px); the reference is timm's Beit rebuilt from the export's config.json.
def beit_export(case_name: str):
    from test_formats import BEIT_CASES

    case = BEIT_CASES[case_name]()
    return read_backbone(case.ckpt, path=case.filename), case


def beit_classifier(export, global_pool: str, img_size: int):
    from transfer.classification.vit import build_beit_classifier, load_vit_backbone

    model = build_beit_classifier(export.shape, 3, img_size, global_pool=global_pool, bn_head=global_pool == "token")
    return model.eval(), load_vit_backbone(model, export)


@pytest.mark.parametrize("case_name", ["beit-pt22k", "beit-training", "data2vec"])
def test_beit_classifier_features_equal_timm_beit_rebuilt_from_the_export(tmp_path, case_name):
    """The linear probe's features (the final norm per token, the patch tokens' mean: BEiT's probe at the final
    layer) and fine-tuning's blocks (BEiT's mean pooling: the final norm left out, a fresh fc_norm) equal timm's
    Beit from config.json and the authors' fine-tuning model, at the pretraining size; every tensor goes in."""
    from timm.models.beit import Beit

    export, case = beit_export(case_name)
    ref = timm_model(export, tmp_path / "timm")
    x = torch.randn(2, 3, 32, 32)

    probe, report = beit_classifier(export, "token", 32)
    assert isinstance(probe, Beit) and isinstance(probe.head[0], nn.BatchNorm1d)
    with torch.no_grad():
        ours = probe.forward_head(probe.forward_features(x), pre_logits=True)
        theirs = ref.forward_features(x)[:, 1:].mean(dim=1)
        authors = case.reference.forward_features(x)[:, 1:].mean(dim=1)
    assert ours.shape == (2, 64)
    assert torch.allclose(ours, theirs, atol=1e-5), (ours - theirs).abs().max()
    assert torch.allclose(ours, authors, atol=1e-5), (ours - authors).abs().max()
    assert report.converted == len(export.state_dict) and report.ok
    assert all(k.startswith("head.") for k in report.missing_by_design) and report.dropped == export.dropped
    assert any("linear probe" in n for n in report.notes)

    finetune, report = beit_classifier(export, "avg", 32)
    ref.norm = nn.Identity()
    with torch.no_grad():
        tokens = finetune.forward_features(x)
        assert torch.allclose(tokens, ref.forward_features(x), atol=1e-5)
        pooled = nn.functional.layer_norm(tokens[:, 1:].mean(dim=1), (64,), eps=1e-6)  # fc_norm: fresh
        assert torch.allclose(finetune.forward_head(tokens, pre_logits=True), pooled, atol=1e-6)
    assert sorted(report.missing_by_design) == ["fc_norm.bias", "fc_norm.weight", "head.bias", "head.weight"]
    assert sorted(set(report.dropped) - set(export.dropped)) == ["norm.bias", "norm.weight"]  # by design
    assert report.converted == len(export.state_dict) - 2


@pytest.mark.parametrize("case_name", ["beit-pt22k", "beit-training"])
def test_beit_classifier_at_another_size_resamples_the_tables_as_timm_does(tmp_path, case_name):
    """48 px (a 6x6 grid, pretrained at 4x4): the relative position tables (and BEiT's position table, in the
    training checkpoint) are timm's own set_input_size of the same model, noted in the report; the frozen check
    re-reads the same tensors."""
    from transfer.classification.vit import vit_backbone_state

    export, _ = beit_export(case_name)
    model, report = beit_classifier(export, "token", 48)
    ref = timm_model(export, tmp_path / "timm")
    ref.set_input_size(img_size=(48, 48))
    table = model.blocks[0].attn.relative_position_bias_table
    trained = export.state_dict["blocks.0.attn.relative_position_bias_table"]
    assert table.shape == ((2 * 6 - 1) ** 2 + 3, 4) != trained.shape  # the 6x6 grid's (+ the class token's 3 rows)
    assert (model.pos_embed is not None) == export.shape["abs_pos_emb"]
    if model.pos_embed is not None:
        assert model.pos_embed.shape == (1, 37, 64)
    for k, v in ref.state_dict().items():
        if not k.startswith(("head", "fc_norm")):
            assert torch.equal(model.state_dict()[k], v), k
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        ours = model.forward_features(x)
        assert torch.allclose(ours, ref.forward_features(x), atol=1e-5)
    assert any("resampled from the 32 px grid to the 48 px" in n for n in report.notes), report.notes
    state = vit_backbone_state(model, export)[0]
    assert all(torch.equal(state[k], model.state_dict()[k]) for k in state)


def test_layer_decay_ranks_every_beit_parameter():
    """Beit's blocks (q / v biases, LayerScale, relative position tables) by their block, the embeddings
    (class token, patch and position embeddings, a shared rel_pos_bias) at 0, fc_norm and the head last; no
    weight decay on the tables, biases, LayerScale and tokens."""
    from timm.models.beit import Beit

    from transfer.classification.vit import param_groups_layer_decay

    export, _ = beit_export("beit-training")
    finetune, _ = beit_classifier(export, "avg", 32)
    # A shared table is expanded by the reader; a Beit that keeps one still finds its layer.
    shared = Beit(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, init_values=0.1,
                  use_shared_rel_pos_bias=True, num_classes=3)
    layers = {}
    for model in (finetune, shared):
        groups = param_groups_layer_decay(model, weight_decay=0.05, layer_decay=0.75)
        layer = {name: (g["layer_id"], g["weight_decay"], g["lr_scale"]) for g in groups for name in g["param_names"]}
        layers[model] = layer
        assert sorted(layer) == sorted(n for n, _ in model.named_parameters())  # every parameter in one group
        for name, (layer_id, decay, scale) in layer.items():
            if name.startswith("blocks."):
                assert layer_id == int(name.split(".")[1]) + 1, name
            elif name.startswith(("head.", "fc_norm.")):
                assert layer_id == 3, name
            else:
                assert name.startswith(("cls_token", "pos_embed", "patch_embed.", "rel_pos_bias.")), name
                assert layer_id == 0 and scale == pytest.approx(0.75 ** 3), name
            if name.endswith(("relative_position_bias_table", "q_bias", "v_bias", "gamma_1", "cls_token", "pos_embed")):
                assert decay == 0.0, name
    assert layers[shared]["rel_pos_bias.relative_position_bias_table"][:2] == (0, 0.0)
    assert layers[finetune]["blocks.1.attn.relative_position_bias_table"][:2] == (2, 0.0)
    assert layers[finetune]["blocks.0.attn.q_bias"][0] == 1 and layers[finetune]["blocks.1.gamma_2"][0] == 2


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


@pytest.mark.slow
def test_a_beit_file_runs_tools_train_cls_linear_probe_and_a_finetuning_step(tmp_path):
    """BEiT v1's ImageNet-22k release layout through tools/train_cls.py's linear probe on a class folder at 48 px
    (its tables resampled; the frozen check re-reads them), normalised with the file's (0.5, 0.5, 0.5); then a
    fine-tuning epoch with layer-wise lr decay over Beit's blocks."""
    from timm.models.beit import Beit

    from test_formats import BEIT_CASES
    from transfer.classification.data import write_synthetic_folder

    case = BEIT_CASES["beit-pt22k"]()
    path = tmp_path / case.filename
    torch.save(case.ckpt, path)
    data = write_synthetic_folder(tmp_path / "cls", per_class=4, size=48)
    out = tmp_path / "linear"
    proc = run_tool("tools/train_cls.py", "--protocol", "mae_linear", "--checkpoint", path, f"data.path={data}",
                    "data.img_size=48", "data.num_workers=0", "train.batch_size=8", "train.epochs=1",
                    "train.device=cpu", "train.progress=false", "train.tensorboard=false", "optim.warmup_epochs=0",
                    f"train.output_dir={out}", env={"OMP_NUM_THREADS": "1"})
    res = json.loads((out / "results.json").read_text())
    assert res["pretrain"] == "beit" and res["task"] == "imagenet_linear" and res["backbone"] == "beit_64d2_patch8"
    assert (tuple(res["recipe"]["mean"]), tuple(res["recipe"]["std"])) == ((0.5,) * 3, (0.5,) * 3)
    assert res["recipe"]["global_pool"] == "avg" and res["val_images"] > 0
    assert "timm Beit" in proc.stderr and "resampled from the 32 px grid to the 48 px" in proc.stderr
    assert "sanity check passed" in proc.stderr  # the frozen Beit equals the file's tensors, resampled again

    trainer, res = train_cls("mae_finetune", tmp_path / "finetune", f"model.checkpoint={path}",
                             "model.layer_decay=0.75", "data.mixup=0", "data.cutmix=0", "data.auto_augment=null",
                             "data.reprob=0")
    assert isinstance(trainer.model, Beit) and res["pretrain"] == "beit" and res["task"] == "imagenet_finetune"
    scales = {g["layer_id"]: g["lr_scale"] for g in trainer.optimizer.param_groups}
    assert scales == {0: pytest.approx(0.75 ** 3), 1: pytest.approx(0.75 ** 2), 2: pytest.approx(0.75), 3: 1.0}
    pretrained = read_backbone(path).state_dict["blocks.0.attn.relative_position_bias_table"]
    assert not torch.equal(trainer.model.blocks[0].attn.relative_position_bias_table.detach(), pretrained)  # learnt


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
    seg = ladder.plan(path, tmp_path / "out", ["segmentation"], data, 1, "random", variant="student")
    assert [j.command[j.command.index("--variant") + 1] for j in seg.jobs if "--variant" in j.command] == ["student"]
    # A rung whose tool takes no --variant is skipped with the reason, not run on the default network.
    from transfer.ladder.rung import get_rung

    with pytest.MonkeyPatch.context() as m:  # every shipped rung's tool takes it now: one that would not
        m.setattr(type(get_rung("segmentation")), "takes_variant", False)
        seg = ladder.plan(path, tmp_path / "out", ["knn", "segmentation"], data, 1, "random", variant="student")
    assert {j.rung for j in seg.jobs} == {"knn"}
    assert seg.skipped == ["segmentation: tools/train_seg.py takes no --variant (it would evaluate the default "
                           "network)"]


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
        backbone = {"dinov2": "vit_pico_patch8_reg4", "clip": "vit_pico_patch8"}[label]  # registers: their own name
        assert (plan["checkpoint"]["pretrain"], plan["checkpoint"]["backbone"]) == (label, backbone)
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
        # The random baseline is the file's own network freshly drawn (a twin file: registers, CLIP's norms and
        # normalisation), not a plain ViT of the preset's shape.
        twins = plan["random_twins"]
        assert twins and all(t["checkpoint"] == str(path) for t in twins.values())
        baseline = [job for job in plan["jobs"] if job["subject"]["role"] == "baseline"]
        assert all(job["subject"]["checkpoint"] in twins for job in baseline)
        random_knn = done[("knn", "baseline")]["recipe"]
        assert (tuple(random_knn["mean"]), tuple(random_knn["std"])) == expected
        assert (folder / "report" / "report.md").is_file()
