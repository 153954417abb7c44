"""Tiny ViTDet and ResNet Mask R-CNNs train a few iterations on a CPU from the project's checkpoints, on COCO-format
sets registered by path (synthetic scenes; coco_tiny50 with its crowd regions and category-id gaps), and write the
results file with box and mask AP; resume and evaluation-only runs pick up where training left.

Skipped without detectron2 (pip install --no-build-isolation 'git+https://github.com/facebookresearch/detectron2.git').
"""
import json
from pathlib import Path

import pytest
import torch

from conftest import ONE_THREAD, REPO, run_tool, shared_data

pytestmark = [pytest.mark.detectron2, pytest.mark.slow]
CONFIGS = REPO / "configs" / "detectron2"


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    from pretrain.synthetic import write_coco_dataset

    root = tmp_path_factory.mktemp("shapes")
    train_json, _ = write_coco_dataset(root, "train", 16, size=(128, 128), seed=0)
    val_json, _ = write_coco_dataset(root, "val", 8, size=(128, 128), seed=1)
    return train_json, val_json


def read(folder):
    from transfer.results import read_results

    return read_results(folder)


def assert_box_and_mask_ap(record):
    assert record["task"] == "coco_instance_seg"
    for name in ("box_AP", "box_AP50", "mask_AP", "mask_AP50"):
        value = record["metrics"][name]
        assert isinstance(value, float) and 0.0 <= value <= 100.0, (name, value)


def test_tiny_vitdet_from_a_mocov3_checkpoint(tmp_path, synthetic, tiny_mocov3_checkpoint):
    """MoCo v3 through tools/train_net.py: its base encoder is the ViTDet backbone, labelled moco_v3."""
    train_json, val_json = synthetic
    out = tmp_path / "det"
    run_tool("tools/train_net.py", "--config-file", CONFIGS / "tiny/mask_rcnn_vitdet_pico.py", "--train-json",
             train_json, "--test-json", val_json, "--output-dir", out, "--checkpoint", tiny_mocov3_checkpoint,
             "--max-iters", 2, env=ONE_THREAD)
    record = read(out)
    assert_box_and_mask_ap(record)
    assert (record["backbone"], record["pretrain"], record["recipe"]["pretrain_epochs"]) == (
        "vit_pico_patch8", "moco_v3", 1)


def test_tiny_vitdet_from_a_project_mae_checkpoint(tmp_path, synthetic, tiny_mae_overrides):
    """tools/train_net.py as a user runs it: train, evaluate, resume, evaluate only; random-init counterpart."""
    from pretrain.config import load_config
    from pretrain.trainer import Trainer

    Trainer(load_config(None, tiny_mae_overrides + ["train.epochs=1"], method="mae")).fit()
    mae = tmp_path / "run" / "checkpoint-last.pth"
    train_json, val_json = synthetic
    out = tmp_path / "det"
    common = ["--config-file", CONFIGS / "tiny/mask_rcnn_vitdet_pico.py", "--train-json", train_json,
              "--test-json", val_json, "--output-dir", out]
    run_tool("tools/train_net.py", *common, "--checkpoint", mae, "--max-iters", 8, env=ONE_THREAD)
    first = read(out)
    assert_box_and_mask_ap(first)
    assert (first["backbone"], first["pretrain"], first["checkpoint"]) == ("vit_pico_patch8", "mae", str(mae))
    assert first["recipe"]["iterations"] == 8 and first["recipe"]["img_size"] == 128
    assert first["recipe"]["pretrain_epochs"] == 1  # the report compares it with the published rows'
    from torch.serialization import get_unsafe_globals_in_checkpoint

    assert get_unsafe_globals_in_checkpoint(out / "model_final.pth") == []  # resumable with weights_only=True
    log = (out / "log.txt").read_text()
    assert "interpolated the position table" in log  # pretrained at 32 px, the config's table is for 64 px

    # Evaluation only, from the last checkpoint: the same numbers, and it still knows its pretraining
    # (recorded beside the run's results.json, which stays).
    run_tool("tools/train_net.py", *common, "--eval-only", "--resume", env=ONE_THREAD)
    assert read(out) == first
    again = read(out / "results_eval.json")
    assert again["metrics"] == first["metrics"] and again["pretrain"] == "mae"
    assert again["recipe"]["pretrain_epochs"] == 1
    assert again["checkpoint"].endswith("model_final.pth")

    # Resume from a checkpoint given by path, into another folder: continues from iteration 8 to 12.
    resumed = tmp_path / "resumed"
    run_tool("tools/train_net.py", *common, "--output-dir", resumed, "--resume", out / "model_final.pth",
             "--max-iters", 12, env=ONE_THREAD)
    assert "Starting training from iteration 8" in (resumed / "log.txt").read_text()
    assert torch.load(resumed / "model_final.pth", weights_only=True)["iteration"] == 11
    assert read(resumed)["pretrain"] == "mae"

    # The random-initialisation counterpart under the same recipe is labelled as such.
    rnd = tmp_path / "random"
    run_tool("tools/train_net.py", "--config-file", CONFIGS / "tiny/mask_rcnn_vitdet_pico.py", "--train-json",
             train_json, "--test-json", val_json, "--test-images", Path(val_json).parents[1] / "val",
             "--output-dir", rnd, "--max-iters", 2, "--random-init", env=ONE_THREAD)
    record = read(rnd)
    assert (record["pretrain"], record["checkpoint"]) == ("random", None)
    assert "pretrain_epochs" not in record["recipe"]
    assert_box_and_mask_ap(record)


def test_tiny_r18_c4_from_yacs_with_a_moco_checkpoint(tmp_path, synthetic, moco_r18, moco_yacs, one_thread):
    """The registered extra-norm ROI head from a yacs file as the MoCo authors write theirs, initialised from
    their checkpoint layout."""
    from transfer.detection.engine import Recipe, train

    train_json, val_json = synthetic
    recipe = Recipe.load(moco_yacs / "tiny_R_18_C4_moco.yaml",
                         ["MODEL.ROI_HEADS.NUM_CLASSES", "80", "TEST.EVAL_PERIOD", "3"],  # and training goes on
                         init_checkpoint=str(moco_r18), output_dir=str(tmp_path), max_iter=6,
                         train_datasets=[train_json], test_datasets=[val_json], device="cpu")
    assert recipe.cfg.MODEL.ROI_HEADS.NUM_CLASSES == 5  # follows the data
    results = train(recipe)
    assert set(results[val_json]) == {"bbox", "segm"}
    logged = [json.loads(line) for line in (tmp_path / "metrics.json").read_text().splitlines()]
    evaluated = [m["iteration"] for m in logged if any(k.endswith("/bbox/AP") for k in m)]
    assert len(evaluated) == 2 and evaluated[0] == 2  # mid-way (after iteration 3), then at the end
    record = read(tmp_path)
    assert_box_and_mask_ap(record)
    assert (record["backbone"], record["pretrain"]) == ("resnet18", "moco_v2")
    final = torch.load(tmp_path / "model_final.pth", weights_only=True)
    assert "roi_heads.res5.norm.running_var" in final["model"]  # the extra norm after res5


@pytest.mark.parametrize("config", ["tiny/mask_rcnn_vitdet_pico.py", "tiny/mask_rcnn_R_18_FPN.py"])
def test_tiny_models_on_coco_tiny50(tmp_path, config, moco_r18, one_thread):
    """Real COCO images: crowd regions and category-id gaps go through registration, training and evaluation."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from transfer.detection.engine import Recipe, train

    root = shared_data("coco_tiny50")
    val_json = str(root / "annotations/instances_val2017.json")
    recipe = Recipe.load(CONFIGS / config, output_dir=str(tmp_path), max_iter=4, device="cpu",
                         init_checkpoint=str(moco_r18) if "R_18" in config else "",
                         train_datasets=[str(root / "annotations/instances_train2017.json")],
                         test_datasets=[val_json])
    assert recipe.cfg.model.roi_heads.num_classes == 80
    assert any(a.get("iscrowd") for d in DatasetCatalog.get(val_json) for a in d["annotations"])
    meta = MetadataCatalog.get(val_json)
    assert meta.image_root == str(root / "val2017")
    ids = json.loads((root / "annotations/instances_val2017.json").read_text())
    valid = {c["id"] for c in ids["categories"]}
    assert max(meta.thing_dataset_id_to_contiguous_id) == max(valid) == 90  # ids with gaps -> 0..79
    train(recipe)
    record = read(tmp_path)
    assert_box_and_mask_ap(record)
    predictions = json.loads((tmp_path / "inference/coco_instances_results.json").read_text())
    assert predictions and {p["category_id"] for p in predictions} <= valid  # mapped back to the json's ids


def test_voc_evaluation_writes_ap50_ap_ap75(tmp_path, moco_yacs, one_thread):
    """A Pascal VOC-format folder: the VOC evaluator's AP50 / AP / AP75 reach the results file as voc_det."""
    import xml.etree.ElementTree as ET

    import numpy as np
    from detectron2.data.datasets import register_pascal_voc
    from PIL import Image

    from pretrain.synthetic import CLASSES, render_scene, scene_rng
    from transfer.detection.engine import Recipe, evaluate

    root = tmp_path / "VOC2007"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True)
    ids = []
    for i in range(4):
        scene = render_scene(scene_rng(3, i), (128, 128))
        Image.fromarray(scene.image).save(root / "JPEGImages" / f"{i:06d}.jpg")
        ann = ET.Element("annotation")
        size = ET.SubElement(ann, "size")
        for k, v in (("width", 128), ("height", 128)):
            ET.SubElement(size, k).text = str(v)
        for inst in scene.instances:
            ys, xs = np.nonzero(inst.mask)
            obj = ET.SubElement(ann, "object")
            ET.SubElement(obj, "name").text = CLASSES[inst.category]
            for k, v in (("pose", "Unspecified"), ("truncated", "0"), ("difficult", "0")):
                ET.SubElement(obj, k).text = v
            box = ET.SubElement(obj, "bndbox")
            for k, v in zip(("xmin", "ymin", "xmax", "ymax"), (xs.min(), ys.min(), xs.max(), ys.max())):
                ET.SubElement(box, k).text = str(int(v) + 1)  # VOC pixels count from 1
        ET.ElementTree(ann).write(root / "Annotations" / f"{i:06d}.xml")
        ids.append(f"{i:06d}")
    (root / "ImageSets/Main/test.txt").write_text("\n".join(ids) + "\n")
    name = f"shapes_voc_{tmp_path.name}"
    register_pascal_voc(name, str(root), "test", 2007, class_names=list(CLASSES))

    recipe = Recipe.load(moco_yacs / "tiny_R_18_C4_moco.yaml", ["MODEL.MASK_ON", "False"],
                         output_dir=str(tmp_path / "out"), train_datasets=[name], test_datasets=[name],
                         init_checkpoint="", device="cpu")
    model = recipe.build_model()
    evaluate(recipe, model, pretrain="random")
    record = read(tmp_path / "out")
    assert record["task"] == "voc_det" and set(record["metrics"]) == {"AP50", "AP", "AP75"}
    assert all(isinstance(v, float) for v in record["metrics"].values())
