"""The ladder's keypoints and cascade rungs (detectron2): COCO person keypoints registered by path with
detectron2's keypoint metadata and scored by OKS AP into their own results task, Cascade Mask R-CNN's results a
task of their own; each rung end to end through tools/evaluate.py on real COCO images (../shared/data), from a
MoCo R-18 and an MAE ViT-pico checkpoint.

Skipped without detectron2 (pip install --no-build-isolation 'git+https://github.com/facebookresearch/detectron2.git').
"""
import json
from pathlib import Path

import pytest

from conftest import ONE_THREAD, REPO, run_tool, shared_data

pytestmark = pytest.mark.detectron2
CONFIGS = REPO / "configs" / "detectron2"


def coco_subset(root: Path, out: Path, prefix: str, val_images: int) -> Path:
    """A COCO folder ``out`` of ``root``'s real data: its training json and image folders as they are, its
    validation json cut to the first ``val_images`` images (with their annotations), so that an end-to-end run's
    evaluation stays CPU-sized."""
    (out / "annotations").mkdir(parents=True)
    for split in ("train2017", "val2017"):
        (out / split).symlink_to(root / split)
    (out / "annotations" / f"{prefix}_train2017.json").symlink_to(root / "annotations" / f"{prefix}_train2017.json")
    val = json.loads((root / "annotations" / f"{prefix}_val2017.json").read_text())
    val["images"] = val["images"][:val_images]
    kept = {image["id"] for image in val["images"]}
    val["annotations"] = [a for a in val["annotations"] if a["image_id"] in kept]
    (out / "annotations" / f"{prefix}_val2017.json").write_text(json.dumps(val))
    return out


def ladder_job(out: Path):
    """(job, results record) of the one pretrained job of a ladder run in ``out``."""
    from transfer.results import read_results

    plan = json.loads(next(out.glob("*/plan.json")).read_text())
    jobs = {job["subject"]["role"]: job for job in plan["jobs"]}
    return plan, {role: (job, read_results(Path(job["folder"]) / "results.json")) for role, job in jobs.items()}


# ------------------------------------------------------------------ keypoints: registration and records
def test_a_person_keypoint_json_registers_with_cocos_keypoint_metadata(tmp_path):
    """``person_keypoints_<split>.json`` finds ``root/<split>/`` and gets detectron2's COCO keypoint names and flip
    map, as its builtin keypoints_coco_2017_* sets; a json with other keypoints is refused by name."""
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets.builtin_meta import COCO_PERSON_KEYPOINT_FLIP_MAP, COCO_PERSON_KEYPOINT_NAMES

    from pretrain.errors import DataError
    from transfer.detection.data import find_image_root, resolve_dataset

    root = shared_data("coco_mini_keypoints")
    json_file = root / "annotations" / "person_keypoints_val2017.json"
    assert find_image_root(json_file) == root / "val2017"
    assert find_image_root(root / "annotations" / "instances_val2017.json") == root / "val2017"
    name = resolve_dataset(str(json_file))
    dicts = DatasetCatalog.get(name)
    meta = MetadataCatalog.get(name)
    assert tuple(meta.keypoint_names) == COCO_PERSON_KEYPOINT_NAMES and len(meta.keypoint_names) == 17
    assert tuple(meta.keypoint_flip_map) == COCO_PERSON_KEYPOINT_FLIP_MAP
    assert meta.thing_classes == ["person"]
    visible = sum(v > 0 for d in dicts for a in d["annotations"] for v in a.get("keypoints", [])[2::3])
    assert visible > 100  # the keypoints themselves were read (x, y, visibility per keypoint)

    # Five keypoints per person: not the recipes' 17, refused when the json is read.
    data = json.loads(json_file.read_text())
    for ann in data["annotations"]:
        ann["keypoints"] = ann["keypoints"][:15]
    other = tmp_path / "annotations" / "person_keypoints_val2017.json"
    other.parent.mkdir()
    other.write_text(json.dumps(data))
    (tmp_path / "val2017").symlink_to(root / "val2017")
    with pytest.raises(DataError, match=r"has \[5\] keypoints per object.*COCO's 17 person keypoints"):
        DatasetCatalog.get(resolve_dataset(str(other)))


def test_keypoint_and_cascade_evaluations_are_their_own_tasks():
    """COCO results with keypoints are ``coco_keypoints`` with OKS AP as ``keypoint_*``; a Cascade R-CNN's boxes and
    masks ``coco_instance_seg_cascade``; the recipes say the same before they run."""
    from detectron2.evaluation import COCOEvaluator

    from transfer.detection.engine import Recipe, results_record
    from transfer.ladder.rung import primary_metric
    from transfer.results import TASKS

    box = {"AP": 40.0, "AP50": 60.0, "AP75": 43.0, "APs": 20.0, "APm": 44.0, "APl": 52.0}
    keypoints = {"AP": 65.0, "AP50": 86.0, "AP75": 71.0, "APm": 60.0, "APl": 72.0}
    evaluator = COCOEvaluator.__new__(COCOEvaluator)  # results_record reads the evaluator's kind only
    task, metrics = results_record(evaluator, {"bbox": box, "keypoints": keypoints})
    assert task == "coco_keypoints" and metrics["keypoint_AP"] == 65.0 and metrics["keypoint_AP75"] == 71.0
    assert metrics["box_AP"] == 40.0 and "keypoint_APs" not in metrics  # COCO keypoints have no small-object AP
    assert primary_metric(task) == "keypoint_AP" and set(TASKS[task]) <= set(metrics)
    task, metrics = results_record(evaluator, {"bbox": box, "segm": box}, cascade=True)
    assert task == "coco_instance_seg_cascade" and primary_metric(task) == "mask_AP"
    assert results_record(evaluator, {"bbox": box, "segm": box})[0] == "coco_instance_seg"

    root = shared_data("coco_mini_keypoints") / "annotations"
    kp = Recipe.load(CONFIGS / "COCO/keypoint_rcnn_R_50_FPN_2x_moco.py", device="cpu",
                     train_datasets=[str(root / "person_keypoints_train2017.json")],
                     test_datasets=[str(root / "person_keypoints_val2017.json")])
    assert (kp.task, kp.coco_tasks, kp.cascade, kp.detector) == ("coco_keypoints", ("bbox", "keypoints"), False, "FPN")
    assert kp.max_iter == 180000 and kp.cfg.dataloader.train.total_batch_size == 16  # the paper's 2x
    assert kp.cfg.model.backbone.norm == "SyncBN" and kp.cfg.model.roi_heads.box_head.conv_norm == "SyncBN"
    assert kp.cfg.dataloader.train.dataset.min_keypoints == 1 and kp.cfg.dataloader.train.mapper.use_keypoint
    cascade = Recipe.load(CONFIGS / "COCO/cascade_mask_rcnn_vitdet_b_100ep.py", device="cpu",
                          train_datasets=[str(root / "instances_train2017.json")],
                          test_datasets=[str(root / "instances_val2017.json")])
    assert (cascade.task, cascade.cascade, cascade.detector) == ("coco_instance_seg_cascade", True, "ViTDet")
    assert [m.thresholds for m in cascade.cfg.model.roi_heads.proposal_matchers] == [[0.5], [0.6], [0.7]]


# ------------------------------------------------------------------ the configs
@pytest.mark.parametrize("cascade,mask_rcnn", [
    ("COCO/cascade_mask_rcnn_vitdet_b_100ep.py", "COCO/mask_rcnn_vitdet_b_100ep.py"),
    ("COCO/cascade_mask_rcnn_vitdet_l_100ep.py", "COCO/mask_rcnn_vitdet_l_100ep.py"),
    ("COCO/cascade_mask_rcnn_vitdet_h_75ep.py", "COCO/mask_rcnn_vitdet_h_75ep.py"),
    ("COCO/cascade_mask_rcnn_vitdet_b_100ep_supervised.py", "COCO/mask_rcnn_vitdet_b_100ep_supervised.py"),
    ("COCO/cascade_mask_rcnn_vitdet_l_100ep_supervised.py", "COCO/mask_rcnn_vitdet_l_100ep_supervised.py"),
])
def test_cascade_recipes_are_vitdets_mask_rcnn_with_three_box_stages(cascade, mask_rcnn):
    """ViTDet's Cascade recipe is its Mask R-CNN recipe (backbone, pyramid, RPN, mask head, data, optimizer,
    schedule, checkpoint) with three 4conv1fc LN box stages at IoU 0.5 / 0.6 / 0.7, box weights x2 and x3."""
    from test_detectron2_configs import load, normalised

    a, b = normalised(load(cascade)), normalised(load(mask_rcnn))
    heads, single = a["model"].pop("roi_heads"), b["model"].pop("roi_heads")
    assert a == b  # everything but the ROI heads
    assert heads["_target_"].__name__ == "CascadeROIHeads"
    assert [m["thresholds"] for m in heads["proposal_matchers"]] == [[0.5], [0.6], [0.7]]
    assert [p["box2box_transform"]["weights"] for p in heads["box_predictors"]] == [
        [10, 10, 5, 5], [20, 20, 10, 10], [30, 30, 15, 15]]
    assert all(p["cls_agnostic_bbox_reg"] and p["num_classes"] == "${...num_classes}" for p in heads["box_predictors"])
    assert all((h["conv_dims"], h["fc_dims"], h["conv_norm"]) == ([256] * 4, [1024], "LN") for h in heads["box_heads"])
    for key in ("mask_head", "mask_pooler", "box_pooler", "num_classes", "batch_size_per_image"):
        assert heads[key] == single[key], key


def test_keypoint_recipe_and_its_supervised_twin():
    """MoCo's keypoint recipe: MoCo's R50-FPN (SyncBN, 4conv1fc) with detectron2's keypoint head, the 2x schedule;
    the supervised twin differs in its checkpoint only."""
    from test_detectron2_configs import build, load, lr_steps, normalised

    moco = load("COCO/keypoint_rcnn_R_50_FPN_2x_moco.py")
    supervised = load("COCO/keypoint_rcnn_R_50_FPN_2x_supervised.py")
    assert lr_steps(moco) == (1000, (120000, 160000)) and moco.train.max_iter == 180000
    a, b = normalised(supervised), normalised(moco)
    assert a["train"].pop("init_checkpoint").endswith("resnet50-0676ba61.pth")
    assert b["train"].pop("init_checkpoint").endswith("moco_v2_800ep_pretrain.pth.tar") and a == b
    model = build(moco)
    assert type(model.roi_heads).__name__ == "StandardROIHeads" and model.roi_heads.keypoint_on
    assert not model.roi_heads.mask_on and model.roi_heads.num_classes == 1
    assert model.roi_heads.keypoint_head.score_lowres.out_channels == 17
    norms = {type(m).__name__ for part in (model.backbone, model.roi_heads.box_head) for m in part.modules()}
    assert "SyncBatchNorm" in norms and "FrozenBatchNorm2d" not in norms


@pytest.mark.parametrize("name", ["tiny/keypoint_rcnn_R_18_FPN.py", "tiny/keypoint_rcnn_vitdet_pico.py",
                                  "tiny/cascade_mask_rcnn_vitdet_pico.py"])
def test_tiny_configs_run_on_a_cpu(name):
    import torch
    from detectron2.config import instantiate

    from test_detectron2_configs import load

    cfg = load(name)
    model = instantiate(cfg.model).eval()
    assert sum(p.numel() for p in model.parameters()) < 15e6
    assert not cfg.train.amp.enabled and cfg.train.init_checkpoint == ""
    with torch.no_grad():
        out = model([{"image": (torch.rand(3, 96, 128) * 255).to(torch.uint8)}])[0]["instances"]
    if "keypoint" in name:
        assert out.pred_keypoints.shape[1:] == (17, 3) and not out.has("pred_masks")
    else:
        assert out.pred_masks.shape[-2:] == (96, 128) and len(model.roi_heads.box_predictor) == 3


# ------------------------------------------------------------------ end to end through the ladder
@pytest.mark.slow
def test_keypoints_rung_end_to_end_from_a_moco_r18(tmp_path, moco_r18):
    """``tools/evaluate.py --rungs keypoints`` on real COCO person keypoints: the tiny Keypoint R-CNN trains two
    iterations from the MoCo R-18 (and at random), and its OKS AP reaches results.json as ``coco_keypoints``."""
    root = coco_subset(shared_data("coco_mini_keypoints"), tmp_path / "coco", "person_keypoints", 10)
    out = tmp_path / "ladder"
    run_tool("tools/evaluate.py", moco_r18, "--rungs", "keypoints", "--baseline", "random", "--seeds", "1",
             "--out", out, "--data", f"coco={root}", "--rung-args", "keypoints=--max-iters 2", env=ONE_THREAD,
             timeout=600)
    plan, jobs = ladder_job(out)
    assert (plan["checkpoint"]["backbone"], plan["checkpoint"]["pretrain"]) == ("resnet18", "moco_v2")
    job, record = jobs["pretrained"]
    assert "configs/detectron2/tiny/keypoint_rcnn_R_18_FPN.py" in job["command"]
    assert (record["task"], record["backbone"], record["pretrain"]) == ("coco_keypoints", "resnet18", "moco_v2")
    assert record["recipe"]["iterations"] == 2 and record["recipe"]["detector"] == "FPN"
    for name in ("keypoint_AP", "keypoint_AP50", "keypoint_AP75", "box_AP"):
        assert isinstance(record["metrics"][name], float) and 0.0 <= record["metrics"][name] <= 100.0, name
    # The evaluation ran: 17 (x, y, score) keypoints per detected person, scored against the 10 images' people.
    predictions = json.loads((Path(job["folder"]) / "inference" / "coco_instances_results.json").read_text())
    assert predictions and all(len(p["keypoints"]) == 17 * 3 and p["category_id"] == 1 for p in predictions)
    assert {p["image_id"] for p in predictions} <= {im["id"] for im in json.loads(
        (root / "annotations" / "person_keypoints_val2017.json").read_text())["images"]}
    log = (Path(job["folder"]) / "log.txt").read_text()
    assert "Evaluation results for keypoints" in log
    assert "fewer than 1 keypoints" in log  # training skipped the images without a visible keypoint
    _, random = jobs["baseline"]
    assert (random["task"], random["pretrain"]) == ("coco_keypoints", "random")


@pytest.mark.slow
def test_cascade_rung_end_to_end_from_a_vit_pico(tmp_path):
    """``tools/evaluate.py --rungs cascade`` on coco_tiny50: the tiny Cascade Mask R-CNN (three box stages) trains
    two iterations from an MAE ViT-pico and writes ``coco_instance_seg_cascade`` with box and mask AP."""
    import torch

    from pretrain.checkpoint import save_atomic
    from pretrain.methods.mae import create_mae

    torch.manual_seed(0)
    mae = create_mae("mae_vit_pico_patch8", img_size=32, decoder_depth=1, decoder_embed_dim=32, decoder_num_heads=2)
    ckpt = save_atomic({"model": mae.state_dict(), "epoch": 4}, tmp_path / "mae" / "checkpoint-4.pth")
    root = coco_subset(shared_data("coco_tiny50"), tmp_path / "coco", "instances", 10)
    out = tmp_path / "ladder"
    run_tool("tools/evaluate.py", ckpt, "--rungs", "cascade", "--baseline", "none", "--seeds", "1", "--out", out,
             "--data", f"coco={root}", "--rung-args", "cascade=--max-iters 2", env=ONE_THREAD, timeout=600)
    plan, jobs = ladder_job(out)
    job, record = jobs["pretrained"]
    assert "configs/detectron2/tiny/cascade_mask_rcnn_vitdet_pico.py" in job["command"]
    assert (record["task"], record["backbone"], record["pretrain"]) == (
        "coco_instance_seg_cascade", "vit_pico_patch8", "mae")
    assert record["recipe"]["iterations"] == 2 and record["recipe"]["detector"] == "ViTDet"
    for name in ("box_AP", "mask_AP", "mask_AP50"):
        assert isinstance(record["metrics"][name], float) and 0.0 <= record["metrics"][name] <= 100.0, name
    # Three trained box stages in the final weights, and masks in the predictions the evaluation scored.
    weights = torch.load(Path(job["folder"]) / "model_final.pth", weights_only=True)["model"]
    assert all(f"roi_heads.box_predictor.{stage}.bbox_pred.weight" in weights for stage in range(3))
    predictions = json.loads((Path(job["folder"]) / "inference" / "coco_instances_results.json").read_text())
    assert predictions and all("segmentation" in p for p in predictions)


@pytest.mark.slow
def test_keypoint_head_on_vitdet_pico(tmp_path, tiny_mae_overrides):
    """The keypoint head on ViTDet's pyramid (no rung: no paper has a ViT keypoint recipe), from the project's MAE
    pico checkpoint through tools/train_net.py, on real COCO person keypoints."""
    from pretrain.config import load_config
    from pretrain.trainer import Trainer
    from transfer.results import read_results

    Trainer(load_config(None, tiny_mae_overrides + ["train.epochs=1"], method="mae")).fit()
    root = coco_subset(shared_data("coco_mini_keypoints"), tmp_path / "coco", "person_keypoints", 5)
    out = tmp_path / "det"
    run_tool("tools/train_net.py", "--config-file", CONFIGS / "tiny/keypoint_rcnn_vitdet_pico.py",
             "--checkpoint", tmp_path / "run" / "checkpoint-last.pth", "--output-dir", out, "--max-iters", 2,
             "--train-json", root / "annotations/person_keypoints_train2017.json",
             "--test-json", root / "annotations/person_keypoints_val2017.json", env=ONE_THREAD)
    record = read_results(out)
    assert (record["task"], record["backbone"], record["pretrain"]) == ("coco_keypoints", "vit_pico_patch8", "mae")
    assert isinstance(record["metrics"]["keypoint_AP"], float) and record["recipe"]["detector"] == "ViTDet"
    predictions = json.loads((out / "inference" / "coco_instances_results.json").read_text())
    assert predictions and all(len(p["keypoints"]) == 17 * 3 for p in predictions)
