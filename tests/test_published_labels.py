"""Every shipped transfer recipe's run finds its published row in the report, or is declared unpublished.

A run's label (task, backbone, pretraining) comes from the tool's own code: the checkpoint the
recipe names, in its authors' key layout (built on the meta device, no weights), converted and
labelled as the tool does. A label that matches no published row would leave the report silently
without a reference number, as ViTDet-H's ``vit_huge_patch16`` did against ``vit_huge_patch14``.
"""
import csv
from pathlib import Path

import pytest
import torch

from conftest import REPO
from transfer.published import NOT_PUBLISHED, PUBLISHED, published_for
from transfer.report import EVAL_RECIPE_KEYS, recipe_differences

CPU_SIZED = ("tiny", "_cpu", "demo")  # demos and smoke configs: no published number is meant
# Recipes that name no checkpoint and take the network from the one given at run time (--checkpoint): their label
# is that file's, which the published families' test below checks for each family's released layout.
RUN_TIME_CHECKPOINT = "the recipe's checkpoint is given at run time: its label is the file's (see the families' test)"


def meta_state(module_fn):
    with torch.device("meta"):
        return module_fn().state_dict()


def authors_file(reference: str):
    """(checkpoint dict, file name) in the key layout of the released file a recipe names."""
    name = Path(reference.split("?")[0]).name
    if "mae_pretrain_vit_" in name:  # the MAE authors' encoder-only files: {"model": encoder}
        from pretrain.methods.mae import DECODER_PREFIXES, create_mae

        size = name.split("mae_pretrain_vit_")[1].split(".")[0]
        arch = f"mae_vit_{size}_patch{14 if size == 'huge' else 16}"
        sd = meta_state(lambda: create_mae(arch))
        return {"model": {k: v for k, v in sd.items() if not k.startswith(DECODER_PREFIXES + ("mask_token",))}}, name
    if "moco_v2_800ep" in name:  # the MoCo authors' main_moco.py checkpoint after 800 epochs
        from pretrain.methods.moco import build_moco

        sd = meta_state(lambda: build_moco("resnet50", K=256, mlp=True))
        return {"epoch": 800, "arch": "resnet50", "state_dict": {f"module.{k}": v for k, v in sd.items()}}, name
    if name.startswith("resnet50-"):  # torchvision's IMAGENET1K_V1 classifier
        import torchvision

        return meta_state(torchvision.models.resnet50), name
    from timm.models.vision_transformer import VisionTransformer

    if name.startswith("deit_base"):
        return {"model": meta_state(lambda: VisionTransformer(embed_dim=768, depth=12, num_heads=12))}, name
    if "vit_large_patch16_224" in reference:  # timm's augreg IN-21k ViT-L (safetensors)
        return meta_state(lambda: VisionTransformer(embed_dim=1024, depth=24, num_heads=16)), name
    raise AssertionError(f"the test knows no layout for {reference}: add it")


def check_label(config, task, backbone, pretrain, recipe, keys=EVAL_RECIPE_KEYS):
    label = (task, backbone, pretrain)
    rows = published_for(*label)
    if not rows:
        assert label in NOT_PUBLISHED, f"{config}: {label} finds no published row and is not in NOT_PUBLISHED"
        return None
    assert label not in NOT_PUBLISHED, f"{label} is published; drop it from NOT_PUBLISHED"
    # The published row of the recipe's own evaluation schedule exists (iterations, batch, size, detector).
    closest = min(rows, key=lambda p: len(recipe_differences(recipe, p.recipe, keys)))
    assert recipe_differences(recipe, closest.recipe, keys) == [], (config, closest)
    return closest


def shipped(folder, pattern):
    return sorted(p for p in (REPO / "configs" / folder).rglob(pattern)
                  if not any(part in str(p.relative_to(REPO / "configs")) for part in CPU_SIZED)
                  and "_base_" not in p.parts and "common" not in p.parts)


@pytest.mark.detectron2
@pytest.mark.parametrize("config", [str(p.relative_to(REPO)) for p in shipped("detectron2", "*.py")])
def test_detectron2_recipes_find_their_published_rows(config):
    from detectron2.config import instantiate

    from transfer.detection.convert import load_converted
    from transfer.detection.engine import Recipe, backbone_label
    from transfer.detection.utils import meta_init

    recipe = Recipe.load(REPO / config, device="cpu")
    if not recipe.init_checkpoint:
        pytest.skip(RUN_TIME_CHECKPOINT)
    ckpt, name = authors_file(recipe.init_checkpoint)
    meta = load_converted(ckpt, name=name)[0]["sslkit"]  # what the checkpointer records as PretrainInfo
    with meta_init():
        model = instantiate(recipe.cfg.model)
    backbone = backbone_label(model, meta)  # what evaluate() writes
    summary = {**recipe.recipe_summary(), **({"pretrain_epochs": meta["pretrain_epochs"]}
                                             if meta.get("pretrain_epochs") else {})}
    row = check_label(config, recipe.task, backbone, meta["pretrain"], summary)
    if "vitdet_h" in config:  # the model's patch embedding is 16: the label is the pretrained ViT-H/14's
        assert backbone_label(model) == "vit_huge_patch16"
        assert backbone == "vit_huge_patch14" and row is not None
        assert row.metrics["box_AP"] == (58.7 if "cascade" in config else 56.7)  # ViTDet's Cascade / Mask R-CNN rows


@pytest.mark.parametrize("config", [str(p.relative_to(REPO)) for p in shipped("mmseg", "*.py")])
def test_mmseg_recipes_find_their_published_rows(config):
    pytest.importorskip("mmseg")
    from transfer.segmentation.runner import backbone_checkpoint, load_seg_config, results_recipe, trained_record

    cfg = load_seg_config(REPO / config)
    info = cfg.get("sslkit_results") or {}
    if backbone_checkpoint(cfg) is None and "pretrain" in info and info["pretrain"] is None:
        pytest.skip(RUN_TIME_CHECKPOINT)
    trained = trained_record(cfg, world_size=gpus(config), inspect_checkpoint=False)
    recipe = results_recipe(cfg, trained)
    check_label(config, info.get("task") or "semantic_seg", info.get("backbone") or cfg.model.backbone.type,
                trained["pretrain"], recipe)


def gpus(config: str) -> int:
    """The GPU count in an mmseg config's name (``..._8xb2-...``): the recipe's total batch needs it."""
    import re

    return int(re.search(r"_(\d+)xb\d+", config).group(1))


@pytest.mark.parametrize("config", [str(p.relative_to(REPO)) for p in shipped("classification", "*.yaml")])
def test_classification_recipes_find_their_published_rows(config):
    from transfer.classification.config import load_cls_config
    from transfer.classification.protocols import protocol
    from pretrain.backbones import read_backbone

    cfg = load_cls_config(REPO / config, ["data.path=/data/imagenet"])
    proto = protocol(cfg.protocol)
    vit = cfg.protocol.startswith("mae_")
    arch = cfg.model.arch
    size = arch.split("_")[1] if vit else None
    reference = f"mae_pretrain_vit_{size}.pth" if vit else "moco_v2_800ep_pretrain.pth.tar"
    ckpt, name = authors_file(reference)
    with torch.device("meta"):
        _, backbone = proto.build_model(cfg, 1000)
    # The label, and the evaluation's length and image size (the batch depends on the launch). A transfer dataset
    # names its task (data.task); MAE's Table 6 publishes no epochs (Sec. A.5 adjusted them per dataset): the size.
    task = cfg.data.task or proto.task
    check_label(config, task, backbone, read_backbone(ckpt, path=name).label,
                {"epochs": cfg.train.epochs, "img_size": cfg.data.img_size},
                keys=("epochs", "img_size") if task == proto.task else ("img_size",))


def test_published_rows_have_sources_and_unique_recipes():
    assert all(p.source for p in PUBLISHED)
    seen = set()
    for p in PUBLISHED:
        key = (p.task, p.backbone, p.pretrain, tuple(sorted((k, str(v)) for k, v in p.recipe.items())))
        assert key not in seen, f"two published rows for {key}"
        seen.add(key)


# ------------------------------------------------------------ the published families (pretrain.formats)
# Each family's released file in its authors' key layout, at full size on the meta device (no weights): read as the
# tools read it, its label (task, backbone, pretraining) must find the family's published row.
OWN_LABELS = ("mae", "moco_v1", "moco_v2", "moco_v3", "supervised", "random")  # the project's methods and baselines


def meta_vit(**kw):
    from timm.models.vision_transformer import VisionTransformer

    return meta_state(lambda: VisionTransformer(num_classes=0, **kw))


def meta_resnet50():
    import torchvision

    sd = meta_state(torchvision.models.resnet50)
    return {k: v for k, v in sd.items() if not k.startswith("fc.")}


def empty(*shape):
    return torch.empty(*shape, device="meta")


def dinov2_file(dim, depth, heads, reg=False, swiglu=False):
    """``dinov2_vit*14[_reg4]_pretrain.pth``: the 518 px table with the class row, LayerScale, the mask token,
    ``register_tokens``, ViT-g's fused SwiGLU ``mlp.w12`` / ``mlp.w3``."""
    from timm.layers import SwiGLUPacked

    kw = dict(mlp_layer=SwiGLUPacked, act_layer=torch.nn.SiLU, mlp_ratio=2.66667 * 2) if swiglu else {}
    sd = meta_vit(img_size=518, patch_size=14, embed_dim=dim, depth=depth, num_heads=heads, init_values=1e-5, **kw)
    sd = {k.replace(".mlp.fc1.", ".mlp.w12.").replace(".mlp.fc2.", ".mlp.w3.") if swiglu else k: v
          for k, v in sd.items()}
    return {**sd, "mask_token": empty(1, dim), **({"register_tokens": empty(1, 4, dim)} if reg else {})}


def beit_file(lm_head_out):
    """BEiT's pretraining network (shared relative position table, q / v biases, LayerScale, ``lm_head``)."""
    from timm.models.beit import Beit

    sd = meta_state(lambda: Beit(patch_size=16, embed_dim=768, depth=12, num_heads=12, num_classes=0,
                                 global_pool="token", use_abs_pos_emb=False, use_shared_rel_pos_bias=True,
                                 init_values=0.1))
    return {"model": {**sd, "mask_token": empty(1, 1, 768), "lm_head.weight": empty(lm_head_out, 768)}}


def ijepa_file():
    """``IN1K-vit.h.14-300e.pth.tar``: both encoders (no class token) and the predictor under DDP's ``module.``."""
    enc = {"module." + k: v for k, v in meta_vit(patch_size=14, embed_dim=1280, depth=32, num_heads=16,
                                                  class_token=False, global_pool="avg", fc_norm=False).items()}
    return {"encoder": enc, "target_encoder": enc, "predictor": {"module.predictor_embed.weight": empty(384, 1280)},
            "epoch": 300}


def clip_file():
    """OpenAI's ViT-B/16 (``clip.load(jit=False).state_dict()``), the text tower included."""
    from test_formats_clip import CLIP

    return meta_state(lambda: CLIP(512, 224, 12, 768, 16, 77, 49408, 512, 8, 12))


FAMILY_FILES = {  # case: (the released file, its name, task, a value of the row it must find)
    "dino_vits16": (lambda: meta_vit(patch_size=16, embed_dim=384, depth=12, num_heads=6),
                    "dino_deitsmall16_pretrain.pth", "knn", 74.5),
    "dino_vitb8": (lambda: meta_vit(patch_size=8, embed_dim=768, depth=12, num_heads=12),
                   "dino_vitbase8_pretrain.pth", "imagenet_linear", 80.1),
    "dino_resnet50": (meta_resnet50, "dino_resnet50_pretrain.pth", "knn", 67.5),
    "dinov2_vits14_reg4": (lambda: dinov2_file(384, 12, 6, reg=True), "dinov2_vits14_reg4_pretrain.pth", "knn", 79.1),
    "dinov2_vitg14": (lambda: dinov2_file(1536, 40, 24, swiglu=True), "dinov2_vitg14_pretrain.pth",
                      "imagenet_linear", 86.5),
    "ibot_vitb16": (lambda: {"state_dict": {**meta_vit(patch_size=16, embed_dim=768, depth=12, num_heads=12),
                                            "masked_embed": empty(768)}},
                    "checkpoint_teacher.pth", "imagenet_finetune", 84.0),
    "ijepa_vith14": (ijepa_file, "IN1K-vit.h.14-300e.pth.tar", "imagenet_linear", 79.3),
    "beit_base": (lambda: beit_file(8192), "beit_base_patch16_224_pt22k.pth", "imagenet_finetune", 83.7),
    "beit_v2_base": (lambda: beit_file(8192), "beitv2_base_patch16_224_pt1k.pth", "ade20k_seg", 53.1),
    "data2vec_base": (lambda: beit_file(768), "checkpoint-799.pth", "imagenet_finetune", 84.2),
    "clip_vitb16": (clip_file, "clip_vit_b16.pth", "imagenet_linear", 80.2),
    "swav": (lambda: {**{"module." + k: v for k, v in meta_resnet50().items()},
                      "module.projection_head.0.weight": empty(2048, 2048), "module.prototypes.weight": empty(3000, 128)},
             "swav_800ep_pretrain.pth.tar", "imagenet_linear", 75.3),
    "barlow_twins": (lambda: {"epoch": 1000, "model": {
        **{"module.backbone." + k: v for k, v in meta_resnet50().items()},
        "module.projector.0.weight": empty(8192, 2048), "module.bn.running_mean": empty(8192)}},
        "checkpoint.pth", "imagenet_linear", 73.3),
    "vicreg": (lambda: {"epoch": 1000, "model": {**{"module.backbone." + k: v for k, v in meta_resnet50().items()},
                                                 "module.projector.0.weight": empty(8192, 2048)}},
               "resnet50_fullckpt.pth", "imagenet_linear", 73.2),
    "simclr_v1": (lambda: {"state_dict": meta_resnet50()}, "simclr_resnet50-1x.pth", "imagenet_linear", 69.1),
    "byol": (meta_resnet50, "byol_pretrain_res50x1.pth.tar", "imagenet_linear", 74.4),
}


@pytest.mark.parametrize("case", sorted(FAMILY_FILES))
def test_each_familys_released_file_finds_its_published_row(case):
    """The label the reader gives a released file, with the name the ladder and the tools write
    (``export.arch``: ``beit_base_patch16`` for a BEiT, ``vit_giant2_patch14`` for DINOv2's g), finds the
    family's row: a row under another spelling would leave the report without a reference number."""
    from pretrain.backbones import read_backbone

    build, name, task, value = FAMILY_FILES[case]
    export = read_backbone(build(), path=name)
    rows = published_for(task, export.arch, export.label)
    assert value in [v for p in rows for v in p.metrics.values()], (case, export.arch, export.label, rows)
    if export.provenance.epochs:  # a file that says its pretraining length finds the row of that length
        recipe = {"pretrain_epochs": export.provenance.epochs}
        assert any(recipe_differences(recipe, p.recipe, ("pretrain_epochs",)) == [] for p in rows), (case, rows)


def test_every_reader_label_is_published_or_says_why_and_every_label_is_a_readers():
    """Every format's label has published rows (or NOT_PUBLISHED says why none); every published label is one a
    reader (pretrain.formats) or the project's own methods give; tasks and backbones are ones runs write."""
    from pretrain.backbones import VIT_ARCHS, is_resnet_name
    from pretrain.formats import formats
    from transfer.ladder.rung import all_rungs
    from transfer.results import TASKS

    readers = set(formats())
    assert {"dino", "dinov2", "ibot", "beit", "beit_v2", "data2vec", "ijepa", "clip", "openclip", "swav",
            "barlow_twins", "vicreg", "simclr_v1", "byol"} <= readers  # the families of issue 25
    for label in readers:
        assert any(p.pretrain == label for p in PUBLISHED) or any(k[2] == label for k in NOT_PUBLISHED), label
    assert {p.pretrain for p in PUBLISHED} - set(OWN_LABELS) <= readers
    rung_tasks = {task for rung in all_rungs().values() for task in rung.metrics}
    vits = set(VIT_ARCHS) | {"beit_" + name[len("vit_"):] for name in VIT_ARCHS}  # BEiT exports (formats.beit)
    vits |= {name + "_reg4" for name in VIT_ARCHS}  # DINOv2's releases with registers
    for p in PUBLISHED:
        assert p.task in TASKS and set(p.metrics) <= set(TASKS[p.task]), p
        assert p.task in rung_tasks or p.pretrain not in readers, p  # the families' rows: a ladder rung's task
        assert p.backbone in vits or is_resnet_name(p.backbone), p


def test_a_ladder_report_shows_a_familys_published_rows(tmp_path):
    """The ladder's report of a DINOv2 ViT-S/14 with registers (``vit_small_patch14_reg4``: another backbone name
    than the plain one's) shows the README's row with registers, with its source, and compares the run with it, not
    with the plain model's."""
    from transfer.ladder import CheckpointInfo, Job, Plan, Subject, write_ladder_report
    from transfer.results import write_results

    out = tmp_path / "ladder"
    info = CheckpointInfo("/c/dinov2_vits14_reg4_pretrain.pth", "0" * 64, "vit", "vit_small_patch14_reg4",
                          "mae_vit_small_patch14_reg4", "dinov2")
    jobs = []
    for rung, task, role, label, metrics, recipe in (
            ("knn", "knn", "pretrained", "dinov2", {"top1": 78.5, "top5": 93.0}, _KNN_RUN),
            ("knn", "knn", "baseline", "random", {"top1": 4.0, "top5": 11.0}, _KNN_RUN),
            ("linear", "imagenet_linear", "pretrained", "dinov2", {"top1": 80.0, "top5": 95.0, "top1_best": 80.2},
             {"iterations": 12500, "img_size": 224})):
        folder = out / rung / role / "seed0"
        write_results(folder, task, "vit_small_patch14_reg4", label, metrics, recipe)
        jobs.append(Job(rung, Subject(role, None if label == "random" else info.path, label), 0, str(folder), [],
                        1, 0.0, task))
    write_ladder_report(Plan(info, "random", 1, str(out), jobs))
    knn = (out / "report" / "knn.md").read_text()
    assert "79.10" in knn and "79.00" not in knn and "facebookresearch/dinov2 README.md" in knn
    assert "with registers" in knn
    rows = {(r["pretrain"], r["origin"]): r for r in csv.DictReader(open(out / "report" / "knn.csv"))}
    assert float(rows[("dinov2", "run")]["d_published_top1"]) == pytest.approx(78.5 - 79.1)
    linear = {(r["pretrain"], r["origin"]): r for r in csv.DictReader(open(out / "report" / "imagenet_linear.csv"))}
    assert float(linear[("dinov2", "run")]["d_published_top1_best"]) == pytest.approx(80.2 - 80.9)
    assert "—" not in linear[("dinov2", "run")]["notes"] and "†" not in linear[("dinov2", "run")]["notes"]


_KNN_RUN = {"k": 20, "temperature": 0.07, "img_size": 224}
