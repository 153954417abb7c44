"""The voc_seg and cityscapes_seg rungs (MoCo's Table 6 FCN) end to end through the ladder on a CPU: data
generated in each dataset's own on-disk layout, a MoCo R-18 checkpoint, a few iterations, mmseg's own dataset
classes and evaluation."""
import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, SHARED_DATA, run_tool

pytestmark = [pytest.mark.skipif(importlib.util.find_spec("mmseg") is None,
                                 reason="mmsegmentation is not installed (tools/setup_env.sh installs it)")]

VOC_CLASSES = 21
CITYSCAPES_CLASSES = 19
# CamVid's classes (../shared/data/camvid_val: 0..10, 11 void) as Cityscapes train ids: sky, building, pole,
# road, sidewalk, vegetation, traffic sign, fence, car, person, rider; void -> 255 (ignored).
CAMVID_TO_TRAIN_ID = np.array([10, 2, 5, 0, 1, 8, 7, 4, 13, 11, 12, 255], np.uint8)


def scenes(n, size, seed):
    """``n`` synthetic scenes (image, semantic map: 0 background, 1..5 objects) of ``size`` (h, w)."""
    from pretrain.synthetic import render_scene, scene_rng

    return [render_scene(scene_rng(seed, i), size) for i in range(n)]


def voc_palette():
    """VOC's colour map (the palette of its SegmentationClass PNGs: index i -> the bits of i spread over RGB)."""
    palette = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette += [r, g, b]
    return palette


def write_voc(root: Path, n_train=6, n_val=3, size=(60, 80)) -> Path:
    """VOCdevkit/VOC2012 with SBD's augmented labels: JPEGImages/*.jpg; the training images' labels only in
    SegmentationClassAug/ (grayscale PNGs, as the train_aug distribution has them) and the val images' only in
    SegmentationClass/ (palette PNGs, as VOC has them, with a void border of 255), so that a run reading the
    wrong folder for either split fails; ImageSets/Segmentation/{train,trainaug,val}.txt."""
    from PIL import Image

    voc = root / "VOCdevkit" / "VOC2012"
    for d in ("JPEGImages", "SegmentationClass", "SegmentationClassAug", "ImageSets/Segmentation"):
        (voc / d).mkdir(parents=True)
    lists = {"train": [], "val": []}
    palette = voc_palette()
    for split, n, seed in (("train", n_train, 0), ("val", n_val, 1)):
        for i, scene in enumerate(scenes(n, size, seed)):
            name = f"2008_{seed:02d}{i:04d}"
            Image.fromarray(scene.image).save(voc / "JPEGImages" / f"{name}.jpg", quality=95)
            label = (scene.semantic * 4).astype(np.uint8)  # objects spread over VOC's 20 classes (4, 8, .., 20)
            if split == "train":
                Image.fromarray(label).save(voc / "SegmentationClassAug" / f"{name}.png")
            else:
                label[0, :] = label[-1, :] = label[:, 0] = label[:, -1] = 255  # VOC's void boundary
                png = Image.fromarray(label)
                png.putpalette(palette)  # an L image with a palette: a P (palette) PNG
                png.save(voc / "SegmentationClass" / f"{name}.png")
            lists[split].append(name)
    sets = voc / "ImageSets" / "Segmentation"
    (sets / "trainaug.txt").write_text("\n".join(lists["train"]) + "\n")
    (sets / "train.txt").write_text("\n".join(lists["train"][:2]) + "\n")  # VOC's own train: not read
    (sets / "val.txt").write_text("\n".join(lists["val"]) + "\n")
    return voc


def write_cityscapes(root: Path, n_train=6, n_val=3, size=(64, 128)) -> Path:
    """Cityscapes: leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png and gtFine/<split>/<city>/
    ..._gtFine_labelTrainIds.png (the 19 train ids, 255 ignored), two cities in train. The street scenes of
    ../shared/data/camvid_val (CamVid's classes mapped to train ids) where present, else synthetic scenes."""
    from PIL import Image

    camvid = SHARED_DATA / "camvid_val"
    h, w = size
    if camvid.is_dir():
        names = sorted((camvid / "images").glob("*.png"))[: n_train + n_val]
        pairs = []
        for path in names:  # 480x360 -> 128x96, centre rows cut to Cityscapes' 2:1
            image = Image.open(path).convert("RGB").resize((w, w * 3 // 4), Image.BILINEAR)
            label = Image.open(camvid / "labels" / path.name).resize((w, w * 3 // 4), Image.NEAREST)
            top = (w * 3 // 4 - h) // 2
            pairs.append((np.asarray(image)[top:top + h], CAMVID_TO_TRAIN_ID[np.asarray(label)[top:top + h]]))
    else:
        pairs = [(s.image, (s.semantic * 3).astype(np.uint8)) for s in scenes(n_train + n_val, size, 0)]
    city_root = root / "cityscapes"
    for i, (image, label) in enumerate(pairs):
        split, city = (("train", ("aachen", "bochum")[i % 2]) if i < n_train else ("val", "frankfurt"))
        stem = f"{city}_{i:06d}_000019"
        for folder, suffix, array in (("leftImg8bit", "leftImg8bit", image), ("gtFine", "gtFine_labelTrainIds", label)):
            out = city_root / folder / split / city
            out.mkdir(parents=True, exist_ok=True)
            Image.fromarray(array).save(out / f"{stem}_{suffix}.png")
    return city_root


@pytest.fixture(scope="module")
def moco_r18(tmp_path_factory):
    """A MoCo R-18 from the project's trainer (one epoch of four steps at 32 px)."""
    from pretrain.config import load_config
    from pretrain.trainer import Trainer

    root = tmp_path_factory.mktemp("moco")
    Trainer(load_config(None, [
        "model.arch=resnet18", "model.queue_size=64", "model.mlp=true", "model.bn_splits=2", "data.img_size=32",
        "data.synthetic=true", "data.synthetic_images=32", "data.num_workers=0", "train.batch_size=8",
        "train.epochs=1", "train.device=cpu", "train.progress=false", "train.tensorboard=false",
        f"train.output_dir={root}"], method="moco")).fit()
    return root / "checkpoint_last.pth.tar"


def run_ladder(checkpoint, rung, data_key, data, out):
    return run_tool("tools/evaluate.py", checkpoint, "--rungs", rung, "--baseline", "random", "--seeds", "1",
                    "--out", out, "--data", f"{data_key}={data}", "--rung-args", f"{rung}=--max-iters 2",
                    timeout=600)


def evaluated(folder: Path):
    """(the dataset class the run's dumped config names for each split, the rows (class, IoU) of its per-class
    IoU table): what mmseg built and evaluated, from mmengine's own records in the work dir."""
    from mmengine.config import Config

    dumped = [p for p in folder.glob("*.py")]
    assert len(dumped) == 1, dumped  # mmengine dumps the final config as <work_dir>/<config name>.py
    cfg = Config.fromfile(str(dumped[0]), import_custom_modules=False)
    types = {split: cfg[f"{split}_dataloader"].dataset.type for split in ("train", "val", "test")}
    log = next(folder.glob("2*/2*.log")).read_text()
    table = log[log.rindex("per class results:"):]
    rows = [[cell.strip() for cell in line.split("|")[1:3]] for line in table.splitlines()
            if line.startswith("|") and "Class" not in line]
    return types, [(name, float(iou)) for name, iou in rows]


def check_jobs(out: Path, rung: str, task: str, dataset: str, classes: int, first: str, last: str):
    from transfer.results import read_results

    folder = next(out.iterdir())
    plan = json.loads((folder / "plan.json").read_text())
    assert [(j["rung"], j["subject"]["role"]) for j in plan["jobs"]] == [(rung, "pretrained"), (rung, "baseline")]
    for job in plan["jobs"]:
        job_dir = Path(job["folder"])
        rec = read_results(job_dir / "results.json")
        assert rec["task"] == task and rec["backbone"] == "resnet18"
        assert rec["pretrain"] == ("random" if job["subject"]["role"] == "baseline" else "moco_v2")
        assert rec["recipe"]["iterations"] == 2 and rec["recipe"]["crop_size"] == 64
        assert 0.0 <= rec["metrics"]["mIoU"] <= 100.0 and 0.0 < rec["metrics"]["aAcc"] <= 100.0
        types, rows = evaluated(job_dir)
        assert types == {"train": dataset, "val": dataset, "test": dataset}
        assert len(rows) == classes and (rows[0][0], rows[-1][0]) == (first, last)  # the dataset's own classes
        # results.json's mIoU is that table's: the mean IoU over the classes present (absent ones: nan)
        assert rec["metrics"]["mIoU"] == pytest.approx(np.nanmean([iou for _, iou in rows]), abs=0.01)
        assert sum(not np.isnan(iou) for _, iou in rows) >= 2  # background and objects were evaluated
    return plan


@pytest.mark.slow
def test_voc_seg_rung_end_to_end(moco_r18, tmp_path):
    """The augmented training set's labels train, VOC's val labels (palette PNGs, void 255) evaluate, over
    PascalVOCDataset's 21 classes."""
    voc = write_voc(tmp_path)
    run_ladder(moco_r18, "voc_seg", "voc", voc, tmp_path / "out")
    plan = check_jobs(tmp_path / "out", "voc_seg", "voc_seg", "PascalVOCDataset", VOC_CLASSES,
                      "background", "tvmonitor")
    assert plan["jobs"][0]["command"][1] == "configs/mmseg/tiny/fcn_r18_voc12aug-64x64.py"


@pytest.mark.slow
def test_cityscapes_seg_rung_end_to_end(moco_r18, tmp_path):
    """gtFine's labelTrainIds train and evaluate over CityscapesDataset's 19 classes."""
    city = write_cityscapes(tmp_path)
    run_ladder(moco_r18, "cityscapes_seg", "cityscapes", city, tmp_path / "out")
    plan = check_jobs(tmp_path / "out", "cityscapes_seg", "cityscapes_seg", "CityscapesDataset",
                      CITYSCAPES_CLASSES, "road", "bicycle")
    assert plan["jobs"][0]["command"][1] == "configs/mmseg/tiny/fcn_r18_cityscapes-64x64.py"


def test_voc_data_check_names_the_augmented_set(tmp_path):
    """A VOC2012 folder without SBD's augmented labels: the rung's data check names them and says how to make
    them, before any job."""
    from pretrain.errors import DataError
    from transfer.ladder.rung import get_rung

    voc = write_voc(tmp_path, n_train=1, n_val=1)
    get_rung("voc_seg").check_data(voc)
    shutil.rmtree(voc / "SegmentationClassAug")
    (voc / "ImageSets" / "Segmentation" / "trainaug.txt").unlink()
    with pytest.raises(DataError, match=r"SegmentationClassAug/, ImageSets/Segmentation/trainaug.txt.*voc_aug.py"):
        get_rung("voc_seg").check_data(voc)


def test_recipes_are_mocos_fcn(tmp_path):
    """The R-50 configs build MoCo's appendix recipe: conv5 dilated (stride 16), FCNHead with two 3x3 convs of
    256 channels at dilation 6, no auxiliary head; each dataset's lr, crop, iterations and steps at 70% / 90%;
    the supervised twin differs in its checkpoint only."""
    from mmengine.config import Config

    M = REPO / "configs" / "mmseg"
    expect = {"voc12aug-513x513": ("30k", 0.003, 513, 30000, "PascalVOCDataset", 21),
              "cityscapes-769x769": ("90k", 0.01, 769, 90000, "CityscapesDataset", 19)}
    for data, (k, lr, crop, iters, dataset, classes) in expect.items():
        moco = Config.fromfile(str(M / f"fcn_r50-d16-moco_4xb4-{k}_{data}.py"), import_custom_modules=False)
        sup = Config.fromfile(str(M / f"fcn_r50-d16-supervised_4xb4-{k}_{data}.py"), import_custom_modules=False)
        backbone, head = moco.model.backbone, moco.model.decode_head
        assert backbone.type == "ResNetEncoder" and backbone.depth == 50
        assert tuple(backbone.strides) == (1, 2, 2, 1) and tuple(backbone.dilations) == (1, 1, 1, 2)
        assert (head.type, head.num_convs, head.channels, head.dilation, head.concat_input) == (
            "FCNHead", 2, 256, 6, False)
        assert head.num_classes == classes and "auxiliary_head" not in moco.model
        assert moco.optim_wrapper.optimizer.lr == lr and moco.optim_wrapper.optimizer.weight_decay == 1e-4
        assert tuple(moco.model.data_preprocessor.size) == (crop, crop)
        assert moco.train_cfg.max_iters == iters and moco.train_dataloader.batch_size * 4 == 16
        (sched,) = moco.param_scheduler
        assert sched.type == "MultiStepLR" and sched.milestones == [int(0.7 * iters), int(0.9 * iters)]
        assert moco.train_dataloader.dataset.type == moco.test_dataloader.dataset.type == dataset
        assert sup.model.backbone.init_cfg.checkpoint.endswith("resnet50-0676ba61.pth")
        sup.model.backbone.init_cfg.checkpoint = moco.model.backbone.init_cfg.checkpoint
        sup.sslkit_results.pretrain = moco.sslkit_results.pretrain
        assert sup.to_dict() == moco.to_dict()
    voc = Config.fromfile(str(M / "fcn_r50-d16-moco_4xb4-30k_voc12aug-513x513.py"), import_custom_modules=False)
    assert voc.train_dataloader.dataset.ann_file == "ImageSets/Segmentation/trainaug.txt"
    assert voc.train_dataloader.dataset.data_prefix.seg_map_path == "SegmentationClassAug"
    assert voc.test_dataloader.dataset.data_prefix.seg_map_path == "SegmentationClass"


def test_max_iters_scales_the_step_schedule():
    """--max-iters keeps MoCo's steps at 70% and 90% of training (set_iterations scales MultiStepLR's milestones)."""
    from mmengine.config import Config

    from transfer.segmentation.runner import set_iterations

    cfg = Config.fromfile(str(REPO / "configs/mmseg/fcn_r50-d16-moco_4xb4-30k_voc12aug-513x513.py"),
                          import_custom_modules=False)
    set_iterations(cfg, 1000)
    (sched,) = cfg.param_scheduler
    assert (sched.begin, sched.end, sched.milestones) == (0, 1000, [700, 900])


FCN_CONFIGS = sorted((REPO / "configs" / "mmseg").glob("fcn_*.py")) + sorted(
    (REPO / "configs" / "mmseg" / "tiny").glob("fcn_*.py"))


@pytest.mark.parametrize("path", FCN_CONFIGS, ids=lambda p: p.stem)
def test_fcn_config_builds_on_cpu(path):
    """Model, optimizer and schedule as the Runner builds them on a CPU; the head predicts the dataset's classes
    at stride 16 (conv5 dilated, not strided)."""
    import torch

    from test_mmseg_configs import build, load

    cfg = load(path)
    model, wrapper, schedulers = build(cfg)
    classes = {"voc_seg": VOC_CLASSES, "cityscapes_seg": CITYSCAPES_CLASSES}[cfg.sslkit_results.task]
    assert type(model.backbone).__name__ == "ResNetEncoder" and model.decode_head.num_classes == classes
    assert not model.with_auxiliary_head
    n_params = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for g in wrapper.optimizer.param_groups for p in g["params"]) == n_params
    assert schedulers[-1].end == cfg.train_cfg.max_iters
    tiny = path.parent.name == "tiny"
    assert (cfg.model.backbone.init_cfg is None) == tiny  # the full recipes start from their checkpoint
    model.eval()
    with torch.no_grad():
        features = model.extract_feat(torch.randn(1, 3, 64, 64))
        out = model(torch.randn(1, 3, 64, 64), mode="tensor")
    assert features[-1].shape[-2:] == (4, 4)  # 64 / 16
    assert out.shape[:2] == (1, classes)
