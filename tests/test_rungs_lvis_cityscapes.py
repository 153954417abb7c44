"""The lvis and cityscapes_instance rungs end to end: from a MoCo R-18 checkpoint through the ladder
(tools/evaluate.py), a few detectron2 iterations on data written here in each dataset's own layout, evaluated by
each dataset's own protocol (LVIS's federated AP through the ``lvis`` package; cityscapesscripts' instance AP on
the instanceIds maps); and the pieces those rely on, checked against independent computations.

An LVIS json of a few categories with the federated fields (``neg_category_ids``, ``not_exhaustive_category_ids``,
``frequency``), its images where LVIS's ``coco_url`` puts them (``train2017/``, ``val2017/``); a Cityscapes tree
(``leftImg8bit/``, ``gtFine/`` with ``_polygons.json``, ``_instanceIds.png``, ``_labelIds.png``).
"""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import run_tool

# detectron2 is checked at set-up (conftest: collecting imports no framework); lvis comes with it (tools/setup_env.sh).
pytestmark = [pytest.mark.detectron2,
              pytest.mark.skipif(importlib.util.find_spec("lvis") is None, reason="lvis is not installed")]

FREQUENCY = ("f", "c", "r", "c", "f")  # one per synthetic shape class: the rare / common / frequent split
# Cityscapes labels (id) the synthetic shapes stand for: instance classes of its evaluation
CITYSCAPES = (("person", 24), ("car", 26), ("truck", 27), ("bicycle", 33), ("rider", 25))
ROAD = 7  # a non-instance label: the background pixels


def scenes(n, size, seed):
    from pretrain.synthetic import render_scene, scene_rng

    return [render_scene(scene_rng(seed, i), size, max_objects=3) for i in range(n)]


def write_lvis(root: Path, split: str, n: int, version: str = "v0.5", seed: int = 0) -> Path:
    """``root/lvis_<version>_<split>.json`` and ``root/<split>2017/*.jpg``, as LVIS's json names COCO's images.
    Each image is labelled positive for its shapes' categories, negative for one other, and one more is marked
    not exhaustively annotated (the federated fields LVIS's evaluation reads)."""
    from pretrain.synthetic import CLASSES, mask_to_polygons

    folder = root / f"{split}2017"
    folder.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i, scene in enumerate(scenes(n, (128, 128), seed)):
        image_id = 1000 * (split == "val") + i + 1
        name = f"{image_id:012d}.jpg"
        Image.fromarray(scene.image).save(folder / name, quality=95)
        positive = set()
        for inst in scene.instances:
            polys = mask_to_polygons(inst.mask)
            if not polys:
                continue
            ys, xs = np.nonzero(inst.mask)
            x0, y0 = float(xs.min()), float(ys.min())
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": inst.category + 1,
                                "segmentation": polys, "area": float(inst.mask.sum()),
                                "bbox": [x0, y0, float(xs.max()) + 1 - x0, float(ys.max()) + 1 - y0]})
            positive.add(inst.category + 1)
        others = [c for c in range(1, len(CLASSES) + 1) if c not in positive]
        images.append({"id": image_id, "height": 128, "width": 128, "file_name": name,
                       "coco_url": f"http://images.cocodataset.org/{split}2017/{name}",
                       "neg_category_ids": others[:1], "not_exhaustive_category_ids": others[1:2]})
    categories = [{"id": c + 1, "name": name, "synonyms": [name], "synset": f"{name}.n.01", "def": name,
                   "frequency": FREQUENCY[c],
                   "image_count": len({a["image_id"] for a in annotations if a["category_id"] == c + 1}),
                   "instance_count": sum(a["category_id"] == c + 1 for a in annotations)}
                  for c, name in enumerate(CLASSES)]
    path = root / f"lvis_{version}_{split}.json"
    path.write_text(json.dumps({"info": {}, "licenses": [], "images": images, "annotations": annotations,
                                "categories": categories}))
    return path


def write_cityscapes(root: Path, split: str, n: int, seed: int = 0, city: str = "tinycity") -> None:
    """``leftImg8bit/<split>/<city>/*_leftImg8bit.png`` and ``gtFine/<split>/<city>/*_gtFine_{polygons.json,
    instanceIds.png,labelIds.png}``: each shape an instance of a Cityscapes class (id * 1000 + k in instanceIds),
    the rest road."""
    from pretrain.synthetic import mask_to_polygons

    images, gt = root / "leftImg8bit" / split / city, root / "gtFine" / split / city
    images.mkdir(parents=True, exist_ok=True)
    gt.mkdir(parents=True, exist_ok=True)
    h, w = 128, 256
    for i, scene in enumerate(scenes(n, (h, w), seed)):
        stem = f"{city}_{i:06d}_000019"
        Image.fromarray(scene.image).save(images / f"{stem}_leftImg8bit.png")
        instance_ids = np.full((h, w), ROAD, np.uint16)  # 16-bit PNGs, as Cityscapes ships them
        label_ids = np.full((h, w), ROAD, np.uint8)
        objects = [{"label": "road", "polygon": [[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]]}]
        for k, inst in enumerate(scene.instances):
            polys = mask_to_polygons(inst.mask)
            if not polys:
                continue
            name, label = CITYSCAPES[inst.category]
            instance_ids[inst.mask] = label * 1000 + k
            label_ids[inst.mask] = label
            largest = max(polys, key=len)
            objects.append({"label": name, "polygon": np.asarray(largest).reshape(-1, 2).tolist()})
        Image.fromarray(instance_ids).save(gt / f"{stem}_gtFine_instanceIds.png")
        Image.fromarray(label_ids).save(gt / f"{stem}_gtFine_labelIds.png")
        (gt / f"{stem}_gtFine_polygons.json").write_text(json.dumps({"imgHeight": h, "imgWidth": w,
                                                                      "objects": objects}))


@pytest.fixture(scope="module")
def moco_r18(tmp_path_factory):
    """A MoCo v2 ResNet-18 from a few steps of the project's trainer."""
    from pretrain.config import load_config
    from pretrain.trainer import Trainer

    root = tmp_path_factory.mktemp("moco")
    Trainer(load_config(None, ["data.img_size=32", "data.synthetic=true", "data.synthetic_images=16",
                               "data.num_workers=0", "train.batch_size=8", "train.epochs=1", "train.device=cpu",
                               "train.progress=false", "train.tensorboard=false", "model.arch=resnet18",
                               "model.queue_size=64", "model.mlp=true", "model.bn_splits=2",
                               f"train.output_dir={root}"], method="moco")).fit()
    return root / "checkpoint_last.pth.tar"


def ladder_job(checkpoint, out, rung, data, iters=4):
    """``tools/evaluate.py`` on one rung against the random baseline, one seed; the jobs' results."""
    from transfer.results import read_results

    run_tool("tools/evaluate.py", checkpoint, "--rungs", rung, "--baseline", "random", "--seeds", "1", "--out", out,
             "--data", data, "--rung-args", f"{rung}=--max-iters {iters}", timeout=600,
             env={"OMP_NUM_THREADS": "1"})
    folder = next(Path(out).iterdir())
    plan = json.loads((folder / "plan.json").read_text())
    assert [j["subject"]["role"] for j in plan["jobs"]] == ["pretrained", "baseline"]
    return folder, [read_results(Path(j["folder"]) / "results.json") for j in plan["jobs"]]


# ------------------------------------------------------------------ LVIS
@pytest.mark.slow
def test_lvis_rung_end_to_end_with_the_federated_evaluation(moco_r18, tmp_path):
    root = tmp_path / "lvis"
    write_lvis(root, "train", 8)
    val = write_lvis(root, "val", 4, seed=1)
    folder, (pretrained, baseline) = ladder_job(moco_r18, tmp_path / "out", "lvis", f"lvis={root}")
    for record in (pretrained, baseline):
        assert record["task"] == "lvis_v0.5_instance_seg" and record["backbone"] == "resnet18"
        assert record["recipe"]["iterations"] == 4 and record["recipe"]["detector"] == "FPN"
        # LVIS's own metrics: the rare / common / frequent split exists only in its federated evaluation
        for name in ("mask_AP", "mask_AP50", "box_AP", "mask_APr", "mask_APc", "mask_APf"):
            value = record["metrics"][name]
            assert value is None or 0.0 <= value <= 100.0, (name, value)
        assert record["metrics"]["mask_AP"] is not None
    assert pretrained["pretrain"] == "moco_v2" and baseline["pretrain"] == "random"
    # The evaluator ran on the val json through the lvis package: detectron2's LVISEvaluator writes its results
    # file under the job's inference/ folder, with the json's category ids (1..5), 300 detections at most each.
    job = folder / "lvis" / "pretrained" / "seed0"
    detections = json.loads(next(job.rglob("lvis_instances_results.json")).read_text())
    assert detections and {d["category_id"] for d in detections} <= {1, 2, 3, 4, 5}
    per_image = np.bincount([d["image_id"] for d in detections])
    assert per_image.max() <= 300 and {d["image_id"] for d in detections} <= {i["id"] for i in
                                                                             json.loads(val.read_text())["images"]}


def test_lvis_registration_keeps_the_jsons_categories_and_federated_fields(tmp_path):
    """An LVIS json by path: its own categories are the classes, with LVIS's ids 1..K made contiguous, each
    image keeps its federated fields and its file under the coco_url's split folder; the class image counts
    (for the federated loss) are counted from the annotations."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from pretrain.synthetic import CLASSES
    from transfer.detection.data import resolve_dataset

    path = write_lvis(tmp_path, "val", 4, seed=1)
    gt = json.loads(path.read_text())
    name = resolve_dataset(f"lvis:{path}")
    dicts = DatasetCatalog.get(name)
    meta = MetadataCatalog.get(name)
    assert meta.thing_classes == list(CLASSES) and meta.evaluator_type == "lvis"
    counts = {c["id"]: c["image_count"] for c in gt["categories"]}
    assert {c["id"]: c["image_count"] for c in meta.class_image_count} == counts
    by_id = {d["image_id"]: d for d in dicts}
    for image in gt["images"]:
        record = by_id[image["id"]]
        assert record["file_name"] == str(tmp_path / "val2017" / image["file_name"])
        assert record["neg_category_ids"] == image["neg_category_ids"]
        assert record["not_exhaustive_category_ids"] == image["not_exhaustive_category_ids"]
        expected = sorted(a["category_id"] - 1 for a in gt["annotations"] if a["image_id"] == image["id"])
        assert sorted(o["category_id"] for o in record["annotations"]) == expected


def test_lvis_evaluation_is_federated(tmp_path):
    """The results record of an LVIS evaluation of the ground truth itself, plus a false positive of a category
    the image is not labelled for: that detection is ignored (federated), so AP stays 100; a COCO evaluation of
    the same detections would count it. The version in the file's name makes the task."""
    import torch
    from detectron2.structures import Boxes, Instances

    from transfer.detection.data import resolve_dataset
    from transfer.detection.engine import results_record
    from transfer.detection.formats import LVISEvaluator

    path = write_lvis(tmp_path, "val", 4, version="v1", seed=1)
    gt = json.loads(path.read_text())
    name = resolve_dataset(f"lvis:{path}")
    from detectron2.data import DatasetCatalog

    DatasetCatalog.get(name)
    evaluator = LVISEvaluator(name, tasks=("bbox",), distributed=False, output_dir=None)
    evaluator.reset()
    fooled = 0
    for image in gt["images"]:
        anns = [a for a in gt["annotations"] if a["image_id"] == image["id"]]
        unlabelled = [c for c in range(1, 6) if c not in {a["category_id"] for a in anns}
                      and c not in image["neg_category_ids"] and c not in image["not_exhaustive_category_ids"]]
        false_positive = unlabelled[:1]  # a category the image is neither positive nor negative for
        fooled += len(false_positive)
        boxes = [a["bbox"] for a in anns] + [[0.0, 0.0, 20.0, 20.0] for _ in false_positive]
        classes = [a["category_id"] - 1 for a in anns] + [c - 1 for c in false_positive]
        inst = Instances((128, 128))
        xyxy = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in boxes], dtype=torch.float32).reshape(-1, 4)
        inst.pred_boxes = Boxes(xyxy)
        inst.scores = torch.ones(len(boxes))
        inst.pred_classes = torch.tensor(classes, dtype=torch.int64)
        evaluator.process([{"image_id": image["id"]}], [{"instances": inst}])
    assert fooled  # some image has a detection that a non-federated evaluation counts as a false positive
    task, metrics = results_record(evaluator, evaluator.evaluate())
    assert task == "lvis_v1_instance_seg"
    assert metrics["box_AP"] == pytest.approx(100.0) and metrics["box_AP50"] == pytest.approx(100.0)


# ------------------------------------------------------------------ Cityscapes
@pytest.mark.slow
def test_cityscapes_instance_rung_end_to_end_with_cityscapes_evaluation(moco_r18, tmp_path):
    pytest.importorskip("cityscapesscripts")
    root = tmp_path / "cityscapes"
    write_cityscapes(root, "train", 6)
    write_cityscapes(root, "val", 3, seed=1)
    folder, (pretrained, baseline) = ladder_job(moco_r18, tmp_path / "out", "cityscapes_instance",
                                                f"cityscapes={root}")
    for record in (pretrained, baseline):
        assert record["task"] == "cityscapes_instance_seg" and record["backbone"] == "resnet18"
        assert set(record["metrics"]) == {"mask_AP", "mask_AP50"}  # what cityscapesscripts reports, and only that
        assert all(0.0 <= v <= 100.0 for v in record["metrics"].values()), record["metrics"]
        assert record["recipe"]["iterations"] == 4
    assert pretrained["pretrain"] == "moco_v2" and baseline["pretrain"] == "random"
    # cityscapesscripts evaluated the 3 val images' predictions against their instanceIds maps (its log says so)
    log = (folder / "cityscapes_instance" / "pretrained" / "seed0" / "log.txt").read_text()
    assert "Evaluating results under" in log


def test_cityscapes_evaluation_of_the_ground_truth_is_perfect(tmp_path):
    """detectron2's Cityscapes evaluator (cityscapesscripts, under the import path detectron2 0.6 asks for)
    scores the ground-truth instances as predictions at AP 100, and one of them dropped below 100: the
    evaluation really compares with the instanceIds maps; the training records come from the polygons."""
    pytest.importorskip("cityscapesscripts")
    import torch
    from detectron2.data import DatasetCatalog
    from detectron2.structures import Instances

    from transfer.detection.data import resolve_dataset
    from transfer.detection.engine import results_record
    from transfer.detection.formats import CityscapesInstanceEvaluator, cityscapes_thing_classes

    write_cityscapes(tmp_path, "val", 3, seed=1)
    name = resolve_dataset(f"cityscapes:{tmp_path}:val")
    dicts = DatasetCatalog.get(name)
    assert len(dicts) == 3 and all(d["annotations"] for d in dicts)

    def evaluate(drop_one):
        evaluator = CityscapesInstanceEvaluator(name)
        evaluator.reset()
        order = cityscapes_thing_classes()
        label_of = {label: n for n, label in CITYSCAPES}
        for d in dicts:
            stem = Path(d["file_name"]).name.replace("_leftImg8bit.png", "")
            ids = np.array(Image.open(Path(d["file_name"]).parents[3] / "gtFine" / "val" / "tinycity"
                                      / f"{stem}_gtFine_instanceIds.png"))
            found = [i for i in np.unique(ids) if i >= 1000]
            if drop_one and d is dicts[0]:
                found = found[1:]
            inst = Instances(ids.shape)
            inst.pred_masks = torch.from_numpy(np.stack([ids == i for i in found]) if found
                                               else np.zeros((0, *ids.shape), bool))
            inst.pred_classes = torch.tensor([order.index(label_of[i // 1000]) for i in found], dtype=torch.int64)
            inst.scores = torch.ones(len(found))
            evaluator.process([{"file_name": d["file_name"]}], [{"instances": inst}])
        return results_record(evaluator, evaluator.evaluate())

    task, metrics = evaluate(drop_one=False)
    assert task == "cityscapes_instance_seg"
    assert metrics["mask_AP"] == pytest.approx(100.0) and metrics["mask_AP50"] == pytest.approx(100.0)
    _, missing = evaluate(drop_one=True)
    assert missing["mask_AP50"] < 100.0


def test_data_checks_name_what_is_missing(tmp_path):
    from pretrain.errors import DataError
    from transfer.ladder.rung import get_rung

    lvis = get_rung("lvis")
    for name in ("lvis_v0.5_train.json", "lvis_v1_val.json"):  # two versions, neither whole
        (tmp_path / name).write_text("{}")
    (tmp_path / "train2017").mkdir()
    (tmp_path / "val2017").mkdir()
    with pytest.raises(DataError, match="train and val json of one LVIS version"):
        lvis.check_data(tmp_path)
    (tmp_path / "lvis_v1_train.json").write_text("{}")
    lvis.check_data(tmp_path)
    args, task = lvis.data_args(tmp_path)
    assert task == "lvis_v1_instance_seg" and args[1] == f"lvis:{tmp_path / 'lvis_v1_train.json'}:{tmp_path}"
    with pytest.raises(DataError, match="gtFine/train"):
        get_rung("cityscapes_instance").check_data(tmp_path)


@pytest.mark.slow
def test_vitdet_pico_lvis_trains_with_the_federated_loss(tmp_path):
    """The CPU-sized ViTDet LVIS recipe (sigmoid classification, federated loss weighted by the json's class image
    counts) trains and is scored on an LVIS v1 json by path."""
    from transfer.results import read_results

    write_lvis(tmp_path / "data", "train", 6, version="v1")
    write_lvis(tmp_path / "data", "val", 3, version="v1", seed=1)
    run_tool("tools/train_net.py", "--config-file", "configs/detectron2/tiny/mask_rcnn_vitdet_pico_lvis.py",
             "--random-init", "--train-dataset", f"lvis:{tmp_path / 'data' / 'lvis_v1_train.json'}",
             "--test-dataset", f"lvis:{tmp_path / 'data' / 'lvis_v1_val.json'}", "--max-iters", "2",
             "--output-dir", tmp_path / "out", env={"OMP_NUM_THREADS": "1"})
    record = read_results(tmp_path / "out")
    assert (record["task"], record["backbone"], record["recipe"]["detector"]) == (
        "lvis_v1_instance_seg", "vit_pico_patch8", "ViTDet")
    assert record["metrics"]["mask_AP"] is not None and "mask_APc" in record["metrics"]
    # The federated loss's class weights: the training json's image count per category ** 0.5, as ViTDet's
    import torch

    train = json.loads((tmp_path / "data" / "lvis_v1_train.json").read_text())
    counts = [len({a["image_id"] for a in train["annotations"] if a["category_id"] == c["id"]})
              for c in sorted(train["categories"], key=lambda c: c["id"])]
    model = torch.load(tmp_path / "out" / "model_final.pth", map_location="cpu", weights_only=True)["model"]
    weights = model["roi_heads.box_predictor.fed_loss_cls_weights"]
    assert torch.allclose(weights, torch.tensor(counts, dtype=torch.float32) ** 0.5)


def test_full_recipes_are_the_papers():
    """The shipped recipes' numbers, against the sources they follow (ViTDet's LVIS configs, detectron2's LVIS
    v0.5 and Cityscapes baselines), read without building anything."""
    from detectron2.config import LazyConfig

    from conftest import REPO

    vit = LazyConfig.load(str(REPO / "configs/detectron2/LVIS/mask_rcnn_vitdet_b_100ep.py"))
    assert vit.train.max_iter == 156250 and vit.optimizer.lr == 2e-4
    assert list(vit.lr_multiplier.scheduler.milestones) == [138889, 150463]
    predictor = vit.model.roi_heads.box_predictor
    assert (vit.model.roi_heads.num_classes, predictor.test_score_thresh, predictor.test_topk_per_image) == (
        1203, 0.02, 300)
    assert predictor.use_sigmoid_ce and predictor.use_fed_loss
    assert vit.dataloader.train.sampler.repeat_factors.repeat_thresh == 0.001
    assert vit.dataloader.evaluator.max_dets_per_image == 300
    large = LazyConfig.load(str(REPO / "configs/detectron2/LVIS/mask_rcnn_vitdet_l_100ep.py"))
    assert (large.model.backbone.net.embed_dim, large.model.backbone.net.drop_path_rate) == (1024, 0.4)
    assert large.train.max_iter == 156250

    r50 = LazyConfig.load(str(REPO / "configs/detectron2/LVIS/mask_rcnn_R_50_FPN_1x_moco.py"))
    assert (r50.train.max_iter, r50.dataloader.train.total_batch_size, r50.optimizer.lr) == (90000, 16, 0.02)
    assert (r50.model.roi_heads.num_classes, r50.model.roi_heads.box_predictor.test_score_thresh) == (1230, 0.0001)
    assert r50.dataloader.train.dataset.names == "lvis_v0.5_train"
    assert r50.model.backbone.bottom_up.stages.norm == "SyncBN"  # MoCo's FPN network

    city = LazyConfig.load(str(REPO / "configs/detectron2/Cityscapes/mask_rcnn_R_50_FPN_moco.py"))
    assert (city.train.max_iter, city.dataloader.train.total_batch_size, city.optimizer.lr) == (24000, 8, 0.01)
    assert list(city.lr_multiplier.scheduler.milestones) == [18000]
    assert city.model.roi_heads.num_classes == 8
    assert city.dataloader.test.mapper.augmentations[0].short_edge_length == 1024
    sup = LazyConfig.load(str(REPO / "configs/detectron2/Cityscapes/mask_rcnn_R_50_FPN_supervised.py"))
    assert "resnet50-0676ba61" in sup.train.init_checkpoint and sup.train.max_iter == 24000
