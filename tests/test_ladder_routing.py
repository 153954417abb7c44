"""The ladder for backbones no preset name builds (issue 25, part 2: routing and the random baseline).

* ``BackboneExport.preset``: the architecture name that builds the network alone, or None (LayerScale,
  registers, CLIP's norms, BEiT, a shape of no preset).
* ``Rung.recipe_for``: a preset's own recipe; any other ViT the recipe of the nearest width among the rung's
  ``checkpoint_recipes`` (the frameworks' configs that build the file's network), its cost scaled by FLOPs.
* ``--baseline random`` of such a backbone: a twin file of the same network with timm's random initialisation
  (``transfer.backbone.random_twin``, ``BackboneExport.save_file``), one per network, shared by checkpoints of
  that network, which every tool reads like any checkpoint.
"""
from __future__ import annotations

import pytest
import torch

from pretrain.backbones import read_backbone
from test_formats import randomize
from test_published_backbones_transfer import pico_clip_file, pico_dinov2_reg_file, pico_vit
from transfer import ladder
from transfer.backbone import random_twin
from transfer.ladder.compare import share_baselines
from transfer.ladder.rung import DetectionRung, FrozenFeatureRung, Recipe

pytestmark = pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")


def plain_pico_file(folder):
    path = folder / "vit_pico.pth"
    torch.save(pico_vit(3).state_dict(), path)  # a bare timm encoder: the plain preset
    return path


# ------------------------------------------------------------------ presets
def test_preset_names_only_networks_the_name_builds(tmp_path):
    from timm.models.vision_transformer import VisionTransformer

    assert read_backbone(plain_pico_file(tmp_path)).preset == "vit_pico_patch8"
    assert read_backbone(pico_dinov2_reg_file(tmp_path)).preset is None  # LayerScale, registers
    assert read_backbone(pico_clip_file(tmp_path)).preset is None  # ln_pre, QuickGELU, eps 1e-5
    # The preset's shape with other heads is another network (the heads are not in the tensors' shapes).
    export = read_backbone(plain_pico_file(tmp_path))
    export.shape["num_heads"] = 6
    assert export.preset is None
    # A ViT-S/14 (DINOv2's shape, no options) is now a preset by name.
    vit = randomize(VisionTransformer(img_size=28, patch_size=14, embed_dim=384, depth=12, num_heads=6,
                                      num_classes=0), 0)
    torch.save(vit.state_dict(), tmp_path / "s14.pth")
    assert read_backbone(tmp_path / "s14.pth").preset == "vit_small_patch14"


# ------------------------------------------------------------------ the twin
def test_random_twin_is_the_same_network_with_fresh_weights_and_reads_back_from_one_file(tmp_path):
    export = read_backbone(pico_dinov2_reg_file(tmp_path))
    twin = random_twin(export, seed=0)
    assert twin.label == "random" and twin.shape == export.shape and twin.dropped == []
    assert {k: v.shape for k, v in twin.state_dict.items()} == {k: v.shape for k, v in export.state_dict.items()}
    assert not torch.equal(twin.state_dict["blocks.0.attn.qkv.weight"], export.state_dict["blocks.0.attn.qkv.weight"])
    # timm's LayerScale starts at its init value, not at the file's trained gammas.
    assert torch.equal(twin.state_dict["blocks.0.ls1.gamma"], torch.full((96,), 1e-5))
    assert torch.equal(random_twin(export, seed=0).state_dict["pos_embed"], twin.state_dict["pos_embed"])
    assert not torch.equal(random_twin(export, seed=1).state_dict["pos_embed"], twin.state_dict["pos_embed"])

    path = twin.save_file(tmp_path / "twin.pth")
    back = read_backbone(path)
    assert back.label == "random" and back.shape == export.shape and (back.mean, back.std) == (export.mean, export.std)
    assert all(torch.equal(back.state_dict[k], v) for k, v in twin.state_dict.items())
    assert back.vit_options() == export.vit_options()
    with pytest.raises(Exception, match="holds one network"):
        read_backbone(path, variant="student")


def test_random_twin_of_a_clip_file_keeps_clips_options_and_normalisation(tmp_path):
    export = read_backbone(pico_clip_file(tmp_path))
    back = read_backbone(random_twin(export).save_file(tmp_path / "twin.pth"))
    assert back.vit_options()["act_layer"] == export.vit_options()["act_layer"] == "quick_gelu"
    assert back.vit_options()["pre_norm"] and back.vit_options()["norm_eps"] == 1e-5
    assert (back.mean, back.std) == (export.mean, export.std)


def test_random_twin_of_a_beit_file_is_timms_beit_with_its_tables(tmp_path):
    from test_formats import BEIT_CASES
    from transfer.beit import beit_network

    case = BEIT_CASES["beit-pt22k"]()
    torch.save(case.ckpt, tmp_path / case.filename)
    export = read_backbone(tmp_path / case.filename)
    back = read_backbone(random_twin(export, seed=2).save_file(tmp_path / "twin.pth"))
    assert back.shape == export.shape and back.label == "random" and (back.mean, back.std) == (export.mean, export.std)
    beit = beit_network(back.shape)
    beit.load_state_dict(back.state_dict, strict=True)  # every tensor of the network, BEiT's tables included
    table = "blocks.0.attn.relative_position_bias_table"
    assert not torch.equal(back.state_dict[table], export.state_dict[table])


# ------------------------------------------------------------------ routing
class _Frameworks(DetectionRung):  # not registered: a rung of the frameworks' kind, its recipes the test's
    name, order, data, metrics = "frameworks", 99, "coco", {"coco_instance_seg": "mask_AP"}
    recipes = {"vit_base_patch16": Recipe("mae_b.py", 64, 1000), "vit_large_patch16": Recipe("mae_l.py", 64, 3000),
               "vit_pico_patch8": Recipe("mae_pico.py"), "resnet50": Recipe("r50.py", 8, 200)}
    checkpoint_recipes = {"vit_base_patch16": Recipe("ckpt_b.py", 64, 1000),
                          "vit_large_patch16": Recipe("ckpt_l.py", 64, 3000), "vit_pico_patch8": Recipe("ckpt_pico.py")}


class _Frozen(FrozenFeatureRung):  # the tool builds every file's network: its recipes serve every ViT
    name, order, tool, data, metrics = "frozen", 99, "tools/knn_eval.py", "imagenet", {"knn": "top1"}
    recipes = {"vit_base_patch16": Recipe(gpus=1, gpu_hours=0.2), "vit_pico_patch8": Recipe()}


def info(backbone, family="vit", needs_checkpoint=False, size=()):
    return ladder.CheckpointInfo("/c.pth", "0" * 64, family, backbone, f"mae_{backbone}", "x",
                                 needs_checkpoint=needs_checkpoint, vit_size=size)


def test_recipe_for_routes_by_what_builds_the_network_and_scales_the_cost():
    rung = _Frameworks()
    assert rung.recipe_for(info("vit_base_patch16")).config == "mae_b.py"  # MAE's, DINO's plain ViT-B
    assert rung.recipe_for(info("resnet50", "resnet")).config == "r50.py"
    assert rung.recipe_for(info("resnet18", "resnet")) is None
    # CLIP ViT-B/16: its own width, the config that builds the file's network, the same cost.
    clip_b = rung.recipe_for(info("vit_base_patch16", needs_checkpoint=True, size=(768, 12, 16)))
    assert (clip_b.config, clip_b.gpu_hours) == ("ckpt_b.py", 1000)
    # DINOv2 ViT-S/14 (and a plain DINO ViT-S/16, which no MAE config holds): ViT-B's recipe, priced by FLOPs.
    s14 = rung.recipe_for(info("vit_small_patch14", needs_checkpoint=True, size=(384, 12, 14)))
    assert s14.config == "ckpt_b.py" and s14.gpu_hours == pytest.approx(1000 * 0.25 * (16 / 14) ** 2, abs=0.1)
    assert "vit_base_patch16's recipe" in s14.basis
    assert rung.recipe_for(info("vit_small_patch16", size=(384, 12, 16))).config == "ckpt_b.py"
    # ViT-H/14 (I-JEPA): the largest recipe, ViT-L's, x (1280^2 x 32 / 14^2) / (1024^2 x 24 / 16^2).
    h14 = rung.recipe_for(info("vit_huge_patch14", needs_checkpoint=True, size=(1280, 32, 14)))
    assert h14.config == "ckpt_l.py" and h14.gpu_hours == pytest.approx(3000 * 1.5625 * 32 / 24 * (16 / 14) ** 2,
                                                                       abs=0.1)
    # The tests' pico files (96 wide) take the CPU recipe; no published ViT does (ViT-Ti is 192 wide).
    assert rung.recipe_for(info("vit_pico_patch8", needs_checkpoint=True, size=(96, 4, 8))).config == "ckpt_pico.py"
    assert rung.recipe_for(info("vit_tiny_patch16", size=(192, 12, 16))).config == "ckpt_b.py"
    # A tool that builds the file's network itself: its recipes serve every ViT.
    assert _Frozen().recipe_for(info("vit_small_patch14", needs_checkpoint=True, size=(384, 12, 14))).gpu_hours \
        == pytest.approx(0.2 * 0.25 * (16 / 14) ** 2, abs=0.1)


def test_every_registered_framework_rung_routes_a_dinov2_vit_s14_to_a_checkpoint_config():
    """The shipped rungs: a ViT with options gets no MAE config (whose ViT would refuse it); where a rung has
    configs that build the file's network, it gets one."""
    s14 = info("vit_small_patch14", needs_checkpoint=True, size=(384, 12, 14))
    for rung in ladder.all_rungs().values():
        recipe = rung.recipe_for(s14)
        if rung.checkpoint_recipes is not None:
            assert recipe is None or recipe.config in {r.config for r in rung.checkpoint_recipes.values()}, rung
        elif any(b.startswith("vit") for b in rung.recipes):
            assert recipe is not None, rung


# ------------------------------------------------------------------ the plan
def test_random_baseline_of_an_optioned_vit_is_a_shared_twin_file(tmp_path):
    data = tmp_path / "imagenet"
    for split in ("train", "val"):
        (data / split / "a").mkdir(parents=True)
    (tmp_path / "b").mkdir()
    files = [pico_dinov2_reg_file(tmp_path), pico_dinov2_reg_file(tmp_path / "b")]  # one network, two files
    torch.save({**torch.load(files[1]), "cls_token": torch.randn(1, 1, 96)}, files[1])  # other weights
    out = tmp_path / "runs"
    plans = [ladder.plan(f, out, ["knn", "linear"], {"imagenet": str(data)}, seeds=2, baseline="random")
             for f in files]
    twins = sorted(plans[0].twins)  # one a seed: each seed another draw, as --random-init under --seed
    assert sorted(plans[1].twins) == twins and len(twins) == 2
    assert all(t.startswith(str(out / "random-twins")) for t in twins)
    assert [plans[0].twins[t]["seed"] for t in twins] == [0, 1]
    for p in plans:
        base = [j for j in p.jobs if j.subject.role == "baseline"]
        assert len(base) == 4 and all(j.subject.checkpoint == twins[j.seed] and j.subject.label == "random"
                                      and twins[j.seed] in j.command for j in base)
        assert all("--random-init" not in j.command and "model.pretrain=random" not in j.command for j in base)
    assert share_baselines(plans) == 4  # the kNN and linear baselines of both seeds run once for both files
    assert not (out / "random-twins").exists()  # planning writes nothing
    twin = twins[0]

    ladder.write_random_twins(plans[0])
    export, back = read_backbone(files[0]), read_backbone(twin)
    assert back.label == "random" and back.shape == export.shape
    seed1 = read_backbone(twins[1]).state_dict["pos_embed"]
    assert not torch.equal(seed1, back.state_dict["pos_embed"])
    before = torch.load(twin, weights_only=True)["state_dict"]["pos_embed"]
    ladder.write_random_twins(plans[1])  # there already: kept
    assert torch.equal(torch.load(twin, weights_only=True)["state_dict"]["pos_embed"], before)

    plain = ladder.plan(plain_pico_file(tmp_path), out, ["knn"], {"imagenet": str(data)}, seeds=1, baseline="random")
    assert plain.twins == {} and "--random-init" in next(j for j in plain.jobs if j.subject.role == "baseline").command


def test_frameworks_read_the_twin_file(tmp_path):
    """detectron2's conversion and mmseg's timm host take the twin like the file it is the twin of."""
    pytest.importorskip("detectron2")
    from transfer.detection.checkpoint import read_checkpoint

    export = read_backbone(pico_dinov2_reg_file(tmp_path))
    twin = random_twin(export).save_file(tmp_path / "twin.pth")
    net = read_checkpoint(str(twin))["sslkit"]["net"]
    original = read_checkpoint(str(tmp_path / "dinov2_vits14_reg4_pretrain.pth"))["sslkit"]["net"]
    assert net == original and net["reg_tokens"] == 4


def test_the_frameworks_rungs_plan_a_dinov2_file_on_their_from_checkpoint_configs(tmp_path):
    """tools/evaluate.py's plan for a DINOv2-with-registers file through every detectron2 / mmseg rung: the configs
    that build the file's network (the MAE ones would refuse it), the baseline the twin file, and the rungs with no
    such config (keypoints: ViTDet-pico only; the ResNet-only ones) skipped with the reason."""
    coco, ade = tmp_path / "coco", tmp_path / "ade"
    for folder in ("annotations", "train2017", "val2017"):
        (coco / folder).mkdir(parents=True)
    for name in ("instances", "person_keypoints"):
        for split in ("train2017", "val2017"):
            (coco / "annotations" / f"{name}_{split}.json").write_text("{}")
    for name in ("lvis_v1_train.json", "lvis_v1_val.json"):
        (coco / name).write_text("{}")
    for folder in ("images/validation", "annotations"):
        (ade / folder).mkdir(parents=True)
    path = pico_dinov2_reg_file(tmp_path)
    rungs = [name for name, rung in ladder.all_rungs().items() if rung.tool in ("tools/train_net.py",
                                                                               "tools/train_seg.py")]
    p = ladder.plan(path, tmp_path / "out", rungs, {"coco": str(coco), "lvis": str(coco), "ade20k": str(ade)},
                    seeds=1, baseline="random")
    planned = {j.rung for j in p.jobs}
    assert {"detection", "cascade", "lvis", "segmentation"} <= planned
    for job in p.jobs:
        rung = ladder.get_rung(job.rung)
        config = rung.recipe_for(p.checkpoint).config
        assert config in job.command and config in {r.config for r in rung.checkpoint_recipes.values()}
        assert "from_checkpoint" in config or "timm-vit" in config, config
        if job.subject.role == "baseline":
            assert job.subject.checkpoint in p.twins and "--random-init" not in job.command
    assert all(line.split(":")[0] not in planned for line in p.skipped)
    assert any(line.startswith("keypoints: no shipped recipe for vit_pico_patch8_reg4") for line in p.skipped)
