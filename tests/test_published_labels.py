"""Every shipped transfer recipe's run finds its published row in the report, or is declared unpublished.

A run's label (task, backbone, pretraining) comes from the tool's own code: the checkpoint the
recipe names, in its authors' key layout (built on the meta device, no weights), converted and
labelled as the tool does. A label that matches no published row would leave the report silently
without a reference number, as ViTDet-H's ``vit_huge_patch16`` did against ``vit_huge_patch14``.
"""
from pathlib import Path

import pytest
import torch

from conftest import REPO
from transfer.published import NOT_PUBLISHED, PUBLISHED, published_for
from transfer.report import EVAL_RECIPE_KEYS, recipe_differences

CPU_SIZED = ("tiny", "_cpu", "demo")  # demos and smoke configs: no published number is meant


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
    from transfer.segmentation.runner import load_seg_config, results_recipe, trained_record

    cfg = load_seg_config(REPO / config)
    trained = trained_record(cfg, world_size=gpus(config), inspect_checkpoint=False)
    info = cfg.get("sslkit_results") or {}
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
