"""Every tool's user errors: one ``error:`` line on stderr, exit status 2, no traceback, nothing changed.

``CASES`` is the table of bad inputs, a section per tool: each row runs the tool's entry point in this
process (as ``pretrain.cli.run_tool`` runs it from the command line) inside a folder of good and bad
inputs (``world``), and asserts the exit status, the single error line and a piece of its text, and
that no file in that folder was added, removed or changed. ``test_every_tool_*`` runs each tool's first
row as a real command, so the tool's ``__main__`` is wired to ``run_tool``.
"""
from __future__ import annotations

import hashlib
import importlib.util
import logging
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Tuple

import pytest

from pretrain import cli
from pretrain.errors import ConfigError, DiskFull

REPO = Path(__file__).resolve().parents[1]
TOOLS = sorted(p.stem for p in (REPO / "tools").glob("*.py"))
# argparse's own refusals ("train_cls.py: error: argument --max-iters: ...") are the same convention.
ERROR_LINE = re.compile(r"^(error: |\S+: error: )")  # argparse: "<prog>: error: ..."


@dataclass(frozen=True)
class Bad:
    """``tools/<tool>.py argv`` must fail with one error line containing ``says``. In ``argv``, ``{w}``
    is the world folder (see ``world``); the tool runs with ``{w}/cwd`` as its working directory."""
    id: str
    tool: str
    argv: Tuple[str, ...]
    says: str


CASES: List[Bad] = []
WORLD_PARTS: List[Callable[[Path], None]] = []  # each section's extra inputs, built into the world


def world_part(build: Callable[[Path], None]) -> Callable[[Path], None]:
    """A section's inputs: ``build(world)`` adds files under the world folder (its own sub-folder)."""
    WORLD_PARTS.append(build)
    return build


# ---------------------------------------------------------------- every tool: its command line
CASES += [
    Bad("max-iters-zero", "pretrain_net", ("--max-iters", "0"), "expected a positive integer, got 0"),
    Bad("max-iters-not-a-number", "train_cls", ("{w}/configs/cls.yaml", "--max-iters", "ten"),
        "expected a positive integer, got 'ten'"),
    Bad("unknown-flag", "collect_env", ("--verbose",), "unrecognized arguments: --verbose"),
]

# ---------------------------------------------------------------- pretrain_net
PRETRAIN = ("--method", "mae", "model.arch=mae_vit_pico_patch8", "data.img_size=32", "data.num_workers=0",
            "train.device=cpu", "train.batch_size=2", "train.progress=false", "--output-dir", "{w}/out/pretrain")
CASES += [
    Bad("pretrain-config-missing", "pretrain_net", ("{w}/configs/nope.yaml",), "nope.yaml"),
    Bad("pretrain-data-empty", "pretrain_net", (*PRETRAIN, "data.path={w}/data/empty"), "no images in"),
    Bad("pretrain-data-missing", "pretrain_net", (*PRETRAIN, "data.path={w}/data/nope"), "image folder not found"),
    Bad("pretrain-data-unreadable", "pretrain_net", (*PRETRAIN, "data.path={w}/data/unreadable/train"),
        "no readable image in"),
    Bad("pretrain-fewer-images-than-a-batch", "pretrain_net",
        (*PRETRAIN, "data.path={w}/data/cls/train", "train.batch_size=8"), "fewer than one step"),
    Bad("pretrain-resume-not-a-checkpoint", "pretrain_net",
        (*PRETRAIN, "data.path={w}/data/cls/train", "--resume", "{w}/ckpt/not_a_checkpoint.pth"),
        "not_a_checkpoint.pth"),
    Bad("pretrain-resume-missing", "pretrain_net",
        (*PRETRAIN, "data.path={w}/data/cls/train", "--resume", "{w}/ckpt/nope.pth"), "checkpoint not found"),
    Bad("pretrain-knn-classes-differ", "pretrain_net",
        (*PRETRAIN, "data.path={w}/data/cls/train", "train.knn_every_epochs=1", "data.knn_train={w}/data/cls/train",
         "data.knn_val={w}/tools_data/other_classes"), "class folders differ"),
    Bad("pretrain-override-unknown-key", "pretrain_net", (*PRETRAIN, "train.nope=1"), "nope"),
    Bad("pretrain-override-bad-value", "pretrain_net", (*PRETRAIN, "train.epochs=ten"), "ten"),
]


@world_part
def other_classes(world: Path) -> None:
    """tools_data/other_classes/{c,d}/*.jpg: a labelled folder whose classes are not data/cls's (a, b)."""
    for c, cls in enumerate("cd"):
        write_jpegs(world / "tools_data" / "other_classes" / cls, 3, seed=30 + c)


# ---------------------------------------------------------------- train_cls
CLS = ("{w}/configs/cls.yaml", "--protocol", "moco_linear", "train.progress=false")  # cls.yaml's resnet18
CASES += [
    Bad("cls-data-empty", "train_cls", (*CLS, "data.path={w}/data/empty"), "train not found"),
    Bad("cls-no-val-split", "train_cls", (*CLS, "data.path={w}/data/no_val"), "no_val/val not found"),
    Bad("cls-data-unreadable", "train_cls", (*CLS, "data.path={w}/data/unreadable"), "no readable image in"),
    Bad("cls-num-classes-not-the-folders", "train_cls", (*CLS, "model.num_classes=5"),
        "model.num_classes=5 but the data has 2 class folders"),
    Bad("cls-fewer-images-than-a-batch", "train_cls", (*CLS, "train.batch_size=8"), "fewer than one step"),
    Bad("cls-classes-differ", "train_cls",
        (*CLS, "data.train={w}/data/cls/train", "data.val={w}/tools_data/other_classes"), "class folders differ"),
    Bad("cls-checkpoint-not-a-checkpoint", "train_cls", (*CLS, "--checkpoint", "{w}/ckpt/not_a_checkpoint.pth"),
        "not_a_checkpoint.pth"),
    Bad("cls-checkpoint-missing", "train_cls", (*CLS, "--checkpoint", "{w}/ckpt/nope.pth"),
        "model.checkpoint not found"),
    Bad("cls-checkpoint-of-the-wrong-kind", "train_cls",
        ("{w}/configs/cls.yaml", "--protocol", "mae_linear", "model.arch=auto", "--checkpoint",
         "{w}/ckpt/moco_r18.pth.tar"), "mae_linear trains a ViT"),
    Bad("cls-resume-missing", "train_cls", (*CLS, "--eval-only", "--resume", "{w}/ckpt/nope.pth"),
        "checkpoint not found"),
    Bad("cls-eval-only-without-a-classifier", "train_cls", (*CLS, "--eval-only"),
        "--eval-only needs a trained classifier"),
    Bad("cls-config-missing", "train_cls", ("{w}/configs/nope.yaml",), "nope.yaml"),
    Bad("cls-override-bad-value", "train_cls", (*CLS, "train.epochs=ten"), "ten"),
    Bad("cls-override-unknown-key", "train_cls", (*CLS, "model.nope=1"), "nope"),
    Bad("cls-variant-the-file-lacks", "train_cls",
        ("{w}/configs/cls.yaml", "--protocol", "mae_linear", "model.arch=auto", "--checkpoint",
         "{w}/ckpt/dino_checkpoint.pth", "--variant", "context"), "has no variant 'context'"),
    Bad("cls-variant-of-a-file-without-variants", "train_cls",
        (*CLS, "--checkpoint", "{w}/ckpt/moco_r18.pth.tar", "--variant", "student"), "leave the variant out"),
    Bad("cls-variant-without-a-checkpoint", "train_cls", (*CLS, "--variant", "student"),
        "picks a network of model.checkpoint"),
]

# ---------------------------------------------------------------- knn_eval
@world_part
def variant_checkpoint(w: Path) -> None:
    """ckpt/dino_checkpoint.pth: a tiny DINO training checkpoint (teacher and student: --variant's rows)."""
    import torch
    from test_formats import dino_full

    torch.save(dino_full("teacher").ckpt, w / "ckpt" / "dino_checkpoint.pth")


KNN = ("--train", "{w}/data/cls/train", "--val", "{w}/data/cls/val", "--out", "{w}/out/knn", "--img-size", "32",
       "--num-workers", "0")
CASES += [
    Bad("knn-checkpoint-not-a-checkpoint", "knn_eval",
        ("{w}/ckpt/not_a_checkpoint.pth", "--train", "{w}/data/cls/train", "--val", "{w}/data/cls/val",
         "--out", "{w}/out/knn"), "not_a_checkpoint.pth"),
    Bad("knn-checkpoint-missing", "knn_eval", ("{w}/ckpt/nope.pth", *KNN), "checkpoint not found"),
    Bad("knn-train-empty", "knn_eval", ("--random-init", "resnet18", *KNN, "--train", "{w}/data/empty"),
        "no images in"),
    Bad("knn-unreadable", "knn_eval", ("--random-init", "resnet18", *KNN, "--train", "{w}/data/unreadable/train",
                                       "--val", "{w}/data/unreadable/val"), "no readable image in"),
    Bad("knn-classes-differ", "knn_eval",
        ("--random-init", "resnet18", *KNN, "--val", "{w}/tools_data/other_classes"), "class folders differ"),
    Bad("knn-k-zero", "knn_eval", ("--random-init", "resnet18", *KNN, "--k", "0"),
        "argument --k: expected a positive integer, got 0"),
    Bad("knn-batch-zero", "knn_eval", ("--random-init", "resnet18", *KNN, "--batch", "0"),
        "argument --batch: expected a positive integer, got 0"),
    Bad("knn-temperature-zero", "knn_eval", ("--random-init", "resnet18", *KNN, "--temperature", "0"),
        "expected a positive number, got 0.0"),
    Bad("knn-num-workers-negative", "knn_eval", ("--random-init", "resnet18", *KNN, "--num-workers", "-1"),
        "expected a non-negative integer, got -1"),
    Bad("knn-random-init-unknown", "knn_eval", ("--random-init", "resnet7", *KNN), "resnet7"),
    Bad("knn-variant-the-file-lacks", "knn_eval", ("{w}/ckpt/dino_checkpoint.pth", *KNN, "--variant", "context"),
        "has no variant 'context'"),
    Bad("knn-variant-of-a-file-without-variants", "knn_eval",
        ("{w}/ckpt/moco_r18.pth.tar", *KNN, "--variant", "student"), "leave the variant out"),
    Bad("knn-variant-without-a-checkpoint", "knn_eval", ("--random-init", "resnet18", *KNN, "--variant", "student"),
        "picks a network of a checkpoint"),
]

# ---------------------------------------------------------------- mae_visualize
CASES += [
    Bad("mae-vis-not-a-checkpoint", "mae_visualize", ("{w}/ckpt/not_a_checkpoint.pth", "--out", "{w}/out/figs"),
        "not_a_checkpoint.pth"),
    Bad("mae-vis-checkpoint-missing", "mae_visualize", ("{w}/ckpt/nope.pth", "--out", "{w}/out/figs"),
        "checkpoint not found"),
    Bad("mae-vis-not-an-mae-checkpoint", "mae_visualize", ("{w}/ckpt/moco_r18.pth.tar", "--out", "{w}/out/figs"),
        "moco_r18.pth.tar"),
    Bad("mae-vis-image-unreadable", "mae_visualize",
        ("{w}/ckpt/moco_r18.pth.tar", "{w}/data/unreadable/train/a/000.jpg", "--out", "{w}/out/figs"),
        "cannot read image"),
    Bad("mae-vis-image-missing", "mae_visualize",
        ("{w}/ckpt/moco_r18.pth.tar", "{w}/data/nope.jpg", "--out", "{w}/out/figs"), "image not found"),
    Bad("mae-vis-mask-ratio", "mae_visualize", ("{w}/ckpt/moco_r18.pth.tar", "--mask-ratio", "1.5"),
        "expected a mask ratio in (0, 1), got 1.5"),
    Bad("mae-vis-synthetic-negative", "mae_visualize", ("{w}/ckpt/moco_r18.pth.tar", "--synthetic", "-1"),
        "expected a positive integer, got -1"),
]

# ---------------------------------------------------------------- dense_probe
def probe_argv(data_root, *extra, checkpoint="{w}/ckpt/moco_r18.pth.tar"):
    return (checkpoint, "--data-root", data_root, "--out", "{w}/out/probe", "--crop", "32", "--num-workers", "0",
            *extra)


CASES += [
    Bad("probe-data-root-missing", "dense_probe", probe_argv("{w}/seg/nope"), "dataset root not found"),
    Bad("probe-not-an-ade20k-root", "dense_probe", probe_argv("{w}/data/cls"), "is not an ADE20K root"),
    Bad("probe-images-without-labels", "dense_probe", probe_argv("{w}/seg/ade_unlabelled"),
        "2 of 3 images in"),  # ... images/training have no label
    Bad("probe-empty-image-folder", "dense_probe", probe_argv("{w}/seg/ade_empty"), "no images"),
    Bad("probe-folder-without-classes", "dense_probe", probe_argv("{w}/seg/folder", "--dataset", "folder"),
        "class list"),
    Bad("probe-checkpoint-missing", "dense_probe", probe_argv("{w}/seg/ade", checkpoint="{w}/ckpt/nope.pth"),
        "checkpoint not found"),
    Bad("probe-not-a-checkpoint", "dense_probe",
        probe_argv("{w}/seg/ade", checkpoint="{w}/ckpt/not_a_checkpoint.pth"), "not_a_checkpoint.pth"),
    Bad("probe-iters-zero", "dense_probe", probe_argv("{w}/seg/ade", "--iters", "0"),
        "expected a positive integer, got 0"),
    Bad("probe-eval-every-negative", "dense_probe", probe_argv("{w}/seg/ade", "--eval-every", "-1"),
        "expected a non-negative integer, got -1"),
    Bad("probe-lr-zero", "dense_probe", probe_argv("{w}/seg/ade", "--lr", "0"), "expected a positive number"),
    Bad("probe-variant-the-file-lacks", "dense_probe",
        probe_argv("{w}/seg/ade", "--variant", "context", checkpoint="{w}/ckpt/dino_checkpoint.pth"),
        "has no variant 'context'"),
    Bad("probe-variant-of-a-file-without-variants", "dense_probe", probe_argv("{w}/seg/ade", "--variant", "student"),
        "leave the variant out"),
]

# ---------------------------------------------------------------- train_seg (mmseg)
@world_part
def segmentation_folders(w: Path) -> None:
    """seg/ade: an ADE20K-layout root (3 images, labelled); seg/ade_unlabelled: 2 of its 3 images without
    a label map; seg/ade_no_annotations: no annotations/ folder; seg/ade_empty: empty image folders;
    seg/folder: images/ + labels/ without classes.txt."""
    import numpy as np
    from PIL import Image

    for name, labelled in (("ade", 3), ("ade_unlabelled", 1), ("ade_no_annotations", None), ("ade_empty", 0)):
        for split in ("training", "validation"):
            images = w / "seg" / name / "images" / split
            write_jpegs(images, 3 if labelled != 0 else 0, size=40)
            if labelled is not None:
                (w / "seg" / name / "annotations" / split).mkdir(parents=True)
            for i in range(labelled or 0):
                label = np.random.default_rng(i).integers(0, 4, (40, 40), dtype=np.uint8)
                Image.fromarray(label).save(w / "seg" / name / "annotations" / split / f"{i:03d}.png")
    write_jpegs(w / "seg" / "folder" / "images", 2, size=40)
    (w / "seg" / "folder" / "labels").mkdir()
    for i in range(2):
        Image.fromarray(np.zeros((40, 40), np.uint8)).save(w / "seg" / "folder" / "labels" / f"{i:03d}.png")


SEG_ADE = str(REPO / "configs/mmseg/tiny/upernet_r18_ade20k-64x64.py")
SEG_FOLDER = str(REPO / "configs/mmseg/tiny/upernet_r18_folder-64x64.py")
SEG_MAE = str(REPO / "configs/mmseg/upernet_mae-vit-b_8xb2-amp-160k_ade20k-512x512.py")


def seg_argv(config, data_root, *extra):
    return (config, "--data-root", data_root, "--output-dir", "{w}/out/seg", *extra)


CASES += [
    Bad("seg-data-root-missing", "train_seg", seg_argv(SEG_ADE, "{w}/seg/nope"), "dataset root not found"),
    Bad("seg-no-annotation-folder", "train_seg", seg_argv(SEG_ADE, "{w}/seg/ade_no_annotations"),
        "ade_no_annotations/annotations/training not found"),
    Bad("seg-images-without-labels", "train_seg", seg_argv(SEG_ADE, "{w}/seg/ade_unlabelled"),
        "2 of 3 images of the train split's ADE20KDataset have no label map"),
    Bad("seg-empty-image-folder", "train_seg", seg_argv(SEG_ADE, "{w}/seg/ade_empty"), "no images (*.jpg)"),
    Bad("seg-folder-without-classes", "train_seg", seg_argv(SEG_FOLDER, "{w}/seg/folder"), "class list"),
    Bad("seg-folder-without-images", "train_seg", seg_argv(SEG_FOLDER, "{w}/data/empty", "--classes", "a,b"),
        "no image folder"),
    Bad("seg-checkpoint-missing", "train_seg", seg_argv(SEG_ADE, "{w}/seg/ade", "--checkpoint", "{w}/ckpt/nope.pth"),
        "checkpoint not found"),
    Bad("seg-not-a-checkpoint", "train_seg",
        seg_argv(SEG_ADE, "{w}/seg/ade", "--checkpoint", "{w}/ckpt/not_a_checkpoint.pth"), "not_a_checkpoint.pth"),
    Bad("seg-recipe-checkpoint-missing", "train_seg", seg_argv(SEG_MAE, "{w}/seg/ade"),
        "checkpoint not found: pretrained/mae_pretrain_vit_base.pth"),
    Bad("seg-resume-missing", "train_seg", seg_argv(SEG_ADE, "{w}/seg/ade", "--resume", "{w}/ckpt/nope.pth"),
        "checkpoint not found"),
    Bad("seg-eval-only-without-segmentor", "train_seg", seg_argv(SEG_ADE, "{w}/seg/ade", "--eval-only"),
        "--eval-only needs a trained segmentor"),
    Bad("seg-config-missing", "train_seg", seg_argv("{w}/configs/nope.py", "{w}/seg/ade"), "config not found"),
    Bad("seg-config-not-mmseg", "train_seg", seg_argv("{w}/configs/cls.yaml", "{w}/seg/ade"),
        "not an mmseg training config"),
    Bad("seg-cfg-options-not-key-value", "train_seg", seg_argv(SEG_ADE, "{w}/seg/ade", "--cfg-options", "lr"),
        "expected key=value"),
    Bad("seg-cfg-options-not-fitting", "train_seg",
        seg_argv(SEG_ADE, "{w}/seg/ade", "--cfg-options", "train_cfg.max_iters.x=1"), "does not fit the config"),
    Bad("seg-ignore-label-out-of-range", "train_seg", seg_argv(SEG_FOLDER, "{w}/seg/folder", "--ignore-label", "300"),
        "expected a label value 0..255, got 300"),
    Bad("seg-timm-vit-without-checkpoint", "train_seg",
        seg_argv(str(REPO / "configs/mmseg/tiny/upernet_timm-vit_ade20k-64x64.py"), "{w}/seg/ade", "--random-init"),
        "builds the network of its backbone checkpoint (MAETimmViT): give --checkpoint PATH"),
    Bad("seg-timm-vit-resnet-file", "train_seg",
        seg_argv(str(REPO / "configs/mmseg/tiny/upernet_timm-vit_ade20k-64x64.py"), "{w}/seg/ade", "--checkpoint",
                 "{w}/ckpt/moco_r18.pth.tar"), "not a ViT: MAETimmViT builds ViTs; the ResNet configs"),
    Bad("seg-variant-without-checkpoint", "train_seg",
        seg_argv(SEG_ADE, "{w}/seg/ade", "--random-init", "--variant", "student"), "but there is none"),
    Bad("seg-variant-the-file-lacks", "train_seg",
        seg_argv(str(REPO / "configs/mmseg/tiny/upernet_timm-vit_ade20k-64x64.py"), "{w}/seg/ade", "--checkpoint",
                 "{w}/ckpt/dino_checkpoint.pth", "--variant", "context"), "has no variant 'context'"),
]

# ---------------------------------------------------------------- train_net (detectron2)
DET_CONFIG = str(REPO / "configs" / "detectron2" / "tiny" / "mask_rcnn_R_18_C4.py")  # its sets: coco_2017_train / val
DET_TRAIN, DET_VAL = "{w}/det/annotations/instances_train.json", "{w}/det/annotations/instances_val.json"
DET = ("--config-file", DET_CONFIG, "--output-dir", "{w}/out/det")
DET_DATA = (*DET, "--train-json", DET_TRAIN, "--test-json", DET_VAL)


@world_part
def detection_sets(w: Path) -> None:
    """det/: a COCO-format set of two images a split (annotations/instances_{train,val}.json, train/, val/),
    annotations/val_fewer_classes.json (val/ with its last category left out), and not_coco.json (JSON, but no
    COCO file)."""
    import json

    from pretrain.synthetic import write_coco_dataset

    for split, seed in (("train", 0), ("val", 1)):
        write_coco_dataset(w / "det", split, 2, size=(64, 64), seed=seed)
    val = json.loads((w / "det" / "annotations" / "instances_val.json").read_text())
    last = val["categories"].pop()["id"]
    val["annotations"] = [a for a in val["annotations"] if a["category_id"] != last]
    (w / "det" / "annotations" / "val_fewer_classes.json").write_text(json.dumps(val))
    (w / "det" / "not_coco.json").write_text('{"images": []}\n')


CASES += [
    # The recipe's own dataset, registered by detectron2 under ./datasets/coco, which is not there.
    Bad("det-default-dataset-absent", "train_net", DET, "dataset 'coco_2017_train'"),
    Bad("det-eval-only-default-test-dataset-absent", "train_net", (*DET, "--eval-only", "--train-json", DET_TRAIN),
        "dataset 'coco_2017_val'"),
    Bad("det-config-missing", "train_net", ("--config-file", "{w}/configs/nope.py"), "nope.py"),
    Bad("det-override-under-a-value", "train_net", (*DET_DATA, "train.max_iter.x=1"), "train.max_iter.x=1"),
    Bad("det-dataset-name-unknown", "train_net", (*DET, "dataloader.train.dataset.names=nope_train"), "nope_train"),
    Bad("det-train-json-not-coco", "train_net",
        (*DET, "--train-json", "{w}/det/not_coco.json", "--train-images", "{w}/det/train", "--test-json", DET_VAL),
        "not_coco.json is not a COCO-format annotation file"),
    Bad("det-train-images-empty", "train_net",
        (*DET, "--train-json", DET_TRAIN, "--train-images", "{w}/data/empty", "--test-json", DET_VAL), "is empty"),
    Bad("det-train-images-elsewhere", "train_net",
        (*DET, "--train-json", DET_TRAIN, "--train-images", "{w}/data/cls/train", "--test-json", DET_VAL),
        "the images of"),
    Bad("det-test-set-of-other-classes", "train_net",
        (*DET, "--train-json", DET_TRAIN, "--test-json", "{w}/det/annotations/val_fewer_classes.json",
         "--test-images", "{w}/det/val"), "classes, the test sets"),
    Bad("det-checkpoint-missing", "train_net", (*DET_DATA, "--checkpoint", "{w}/ckpt/nope.pth"), "nope.pth"),
    Bad("det-checkpoint-not-a-checkpoint", "train_net", (*DET_DATA, "--checkpoint", "{w}/ckpt/not_a_checkpoint.pth"),
        "not_a_checkpoint.pth"),
    Bad("det-resume-not-a-checkpoint", "train_net", (*DET_DATA, "--resume", "{w}/ckpt/not_a_checkpoint.pth"),
        "not_a_checkpoint.pth"),
    Bad("det-num-gpus-zero", "train_net", (*DET_DATA, "--num-gpus", "0"), "expected a positive integer, got 0"),
    Bad("det-num-machines-zero", "train_net", (*DET_DATA, "--num-machines", "0"), "expected a positive integer, got 0"),
    Bad("det-machine-rank-out-of-range", "train_net",
        (*DET_DATA, "--num-machines", "2", "--machine-rank", "2", "--dist-url", "tcp://127.0.0.1:29999"),
        "--machine-rank 2"),
    Bad("det-several-machines-without-dist-url", "train_net", (*DET_DATA, "--num-machines", "2"), "--dist-url"),
    Bad("det-reference-world-size-negative", "train_net", (*DET_DATA, "--reference-world-size", "-1"),
        "expected an integer >= 0, got -1"),
    # A config whose ViT is the checkpoint's would evaluate its placeholder ViT
    Bad("det-eval-only-from-checkpoint-config-without-checkpoint", "train_net",
        ("--config-file", DET_CONFIG.replace("mask_rcnn_R_18_C4", "mask_rcnn_vitdet_pico_from_checkpoint"),
         "--output-dir", "{w}/out/det", "--eval-only", "--test-json", DET_VAL), "has none to build it from"),
    # Datasets in their own formats (transfer.detection.formats): LVIS jsons, Cityscapes folders
    Bad("det-train-dataset-and-json", "train_net",
        (*DET_DATA, "--train-dataset", "lvis:{w}/det/annotations/instances_train.json"),
        "--train-dataset and --train-json"),
    Bad("det-lvis-json-missing", "train_net",
        (*DET, "--train-dataset", "lvis:{w}/det/nope.json", "--test-json", DET_VAL), "LVIS annotation file not found"),
    Bad("det-lvis-not-lvis", "train_net",
        (*DET, "--train-dataset", "lvis:{w}/det/not_coco.json:{w}/det", "--test-json", DET_VAL),
        "not_coco.json is not an LVIS annotation file"),
    Bad("det-cityscapes-folder-missing", "train_net", (*DET, "--train-dataset", "cityscapes:{w}/nope:train",
                                                      "--test-json", DET_VAL), "Cityscapes folder not found"),
    # --variant: a network of a pretraining checkpoint that holds several (read_backbone's refusals, surfaced)
    Bad("det-variant-the-file-lacks", "train_net",
        (*DET_DATA, "--checkpoint", "{w}/ckpt/dino_checkpoint.pth", "--variant", "context"), "has no variant 'context'"),
    Bad("det-variant-of-a-file-without-variants", "train_net",
        (*DET_DATA, "--checkpoint", "{w}/ckpt/moco_r18.pth.tar", "--variant", "student"), "leave the variant out"),
    Bad("det-variant-of-a-detectron2-file", "train_net",
        (*DET_DATA, "--checkpoint", "{w}/det/model_final.pth", "--variant", "student"),
        "a detectron2 file holds one network"),
    Bad("det-variant-without-a-checkpoint", "train_net", (*DET_DATA, "--random-init", "--variant", "student"),
        "picks a network of the initial checkpoint, and there is none"),
]


@world_part
def detectron2_file(w: Path) -> None:
    """det/model_final.pth: a detectron2 file (its own names; one network: --variant's row)."""
    import torch

    torch.save({"model": {"backbone.res2.0.conv1.weight": torch.zeros(4, 4, 1, 1)}, "iteration": 0},
               w / "det" / "model_final.pth")

# ---------------------------------------------------------------- convert_checkpoint
CASES += [
    Bad("convert-checkpoint-missing", "convert_checkpoint",
        ("{w}/ckpt/nope.pth", "{w}/out/converted.pkl", "--to", "detectron2"), "nope.pth"),
    Bad("convert-not-a-checkpoint", "convert_checkpoint",
        ("{w}/ckpt/not_a_checkpoint.pth", "{w}/out/converted.pth", "--to", "torchvision"), "not_a_checkpoint.pth"),
    Bad("convert-wrong-family", "convert_checkpoint",
        ("{w}/ckpt/moco_r18.pth.tar", "{w}/out/converted.pth", "--to", "timm"), "--to timm converts ViTs"),
    Bad("convert-patch-size-zero", "convert_checkpoint",
        ("{w}/ckpt/moco_r18.pth.tar", "{w}/out/converted.pkl", "--to", "detectron2", "--patch-size", "0"),
        "expected a positive integer, got 0"),
    Bad("convert-patch-size-elsewhere", "convert_checkpoint",
        ("{w}/ckpt/moco_r18.pth.tar", "{w}/out/converted.pth", "--to", "torchvision", "--patch-size", "16"),
        "--patch-size applies to --to detectron2"),
    Bad("convert-patch-size-of-a-resnet", "convert_checkpoint",
        ("{w}/ckpt/moco_r18.pth.tar", "{w}/out/converted.pkl", "--to", "detectron2", "--patch-size", "16"),
        "--patch-size applies to ViTs"),
    Bad("convert-patch-resize-alone", "convert_checkpoint",
        ("{w}/ckpt/moco_r18.pth.tar", "{w}/out/converted.pkl", "--to", "detectron2", "--patch-resize", "pinv"),
        "--patch-resize goes with --patch-size"),
    Bad("convert-detectron2-suffix", "convert_checkpoint",
        ("{w}/ckpt/moco_r18.pth.tar", "{w}/out/converted.safetensors", "--to", "detectron2"), "a .pkl or .pth file"),
]

# ---------------------------------------------------------------- evaluate (the ladder)
@world_part
def ladder_inputs(w: Path) -> None:
    """ladder/: data files (bad YAML, a list), an empty weights folder, a ResNet the ladder has no recipes for,
    and runs/, a ladder folder of ckpt/moco_r18.pth.tar whose finished knn job's results.json is malformed."""
    import torch
    import torchvision

    from transfer.ladder import checkpoint_folder, inspect_checkpoint

    root = w / "ladder"
    (root / "weights").mkdir(parents=True)
    (root / "bad.yaml").write_text("imagenet: [\n")
    (root / "list.yaml").write_text("- /data/imagenet\n")
    # A ResNet-34: every ViT takes the recipes of its nearest width (Rung.recipe_for), a ResNet only its own. The
    # planner reads the keys only: one-element tensors in torchvision's names.
    names = torchvision.models.resnet34().state_dict()
    torch.save({k: torch.zeros(1) for k in names}, root / "resnet34.pth")
    job = checkpoint_folder(root / "runs", inspect_checkpoint(w / "ckpt" / "moco_r18.pth.tar")) / "knn/pretrained/seed0"
    job.mkdir(parents=True)
    (job / "results.json").write_text('{"task": "knn", "metrics": {"top1": 5')  # cut short


def ladder_args(*extra, checkpoint="{w}/ckpt/moco_r18.pth.tar"):
    """tools/evaluate.py on the world's checkpoint and class folder (a random baseline, one seed), plus ``extra``."""
    return (checkpoint, "--rungs", "knn", "--baseline", "random", "--seeds", "1", "--data",
            "imagenet={w}/data/cls", *extra)


CASES += [
    Bad("evaluate-checkpoint-missing", "evaluate", ladder_args(checkpoint="{w}/ckpt/nope.pth"),
        "checkpoint not found"),
    Bad("evaluate-not-a-checkpoint", "evaluate", ladder_args(checkpoint="{w}/ckpt/not_a_checkpoint.pth"),
        "not_a_checkpoint.pth"),
    Bad("evaluate-no-recipes-for-the-backbone", "evaluate", ladder_args(checkpoint="{w}/ladder/resnet34.pth"),
        "which the ladder has no recipes for"),
    Bad("evaluate-unknown-rung", "evaluate", ladder_args("--rungs", "knn,lineer"), "unknown rung(s) 'lineer'"),
    Bad("evaluate-unknown-rung-seeds", "evaluate", ladder_args("--rung-seeds", "detecton=1"),
        "--rung-seeds: unknown rung(s) 'detecton'"),
    Bad("evaluate-rung-seeds-zero", "evaluate", ladder_args("--rung-seeds", "knn=0"),
        "expected a positive integer, got 0"),
    Bad("evaluate-seeds-zero", "evaluate", ladder_args("--seeds", "0"), "expected a positive integer, got 0"),
    Bad("evaluate-unknown-data-key", "evaluate", ladder_args("--data", "imagnet={w}/data/cls"),
        "unknown dataset key(s) 'imagnet'"),
    Bad("evaluate-data-not-key-value", "evaluate", ladder_args("--data", "{w}/data/cls"), "--data takes KEY=PATH"),
    Bad("evaluate-data-file-missing", "evaluate", ladder_args("--data-file", "{w}/ladder/nope.yaml"),
        "nope.yaml: no such file"),
    Bad("evaluate-data-file-not-yaml", "evaluate", ladder_args("--data-file", "{w}/ladder/bad.yaml"),
        "bad.yaml: not valid YAML"),
    Bad("evaluate-data-file-a-list", "evaluate", ladder_args("--data-file", "{w}/ladder/list.yaml"),
        "expected a mapping"),
    Bad("evaluate-baseline-missing", "evaluate", ladder_args("--baseline", "{w}/ckpt/nope_baseline.pth"),
        "baseline checkpoint not found"),
    Bad("evaluate-supervised-twin-missing", "evaluate",
        ladder_args("--baseline", "supervised", "--weights", "{w}/ladder/weights"), "resnet18-f37072fd.pth"),
    Bad("evaluate-malformed-finished-record", "evaluate", ladder_args("--out", "{w}/ladder/runs"),
        "not valid JSON"),
    Bad("evaluate-variant-the-file-lacks", "evaluate",
        ladder_args("--variant", "context", checkpoint="{w}/ckpt/dino_checkpoint.pth"), "has no variant 'context'"),
    Bad("evaluate-variant-of-a-file-without-variants", "evaluate", ladder_args("--variant", "student"),
        "leave the variant out"),
]

# ---------------------------------------------------------------- report
@world_part
def report_inputs(w: Path) -> None:
    """report/: good/ (a valid results.json), malformed/ (cut short), binary/ (a results.json that is not text)."""
    from transfer.results import write_results

    root = w / "report"
    write_results(root / "good", "knn", "resnet18", "moco_v2", {"top1": 50.0, "top5": 90.0}, {"k": 20})
    (root / "malformed").mkdir(parents=True)
    (root / "malformed" / "results.json").write_text('{"task": "knn", ')
    (root / "binary").mkdir()
    (root / "binary" / "results.json").write_bytes(bytes(range(128, 256)))


CASES += [
    Bad("report-runs-missing", "report", ("{w}/report/nope", "--out", "{w}/out/report"), "no such file or folder"),
    Bad("report-malformed-results", "report", ("{w}/report/malformed", "--out", "{w}/out/report"),
        "not valid JSON"),
    Bad("report-binary-results", "report", ("{w}/report/binary", "--out", "{w}/out/report"), "not a text file"),
    Bad("report-no-results", "report", ("{w}/data/empty", "--out", "{w}/out/report"), "no results.json under"),
    Bad("report-out-is-a-file", "report", ("{w}/report/good", "--out", "{w}/report/good/results.json"),
        "a file, not a folder"),
]

# ---------------------------------------------------------------- submit_slurm
@world_part
def slurm_inputs(w: Path) -> None:
    """slurm/: a pretraining config whose output folder is under out/, and a YAML list instead of a config."""
    (w / "slurm").mkdir()
    (w / "slurm" / "mae.yaml").write_text(f"method: mae\ndata: {{synthetic: true}}\n"
                                          f"train: {{output_dir: {w}/out/slurm}}\n")
    (w / "slurm" / "list.yaml").write_text("- method: mae\n")


CASES += [
    Bad("slurm-config-missing", "submit_slurm", ("{w}/configs/nope.yaml", "--dry-run"), "config file not found"),
    Bad("slurm-config-a-list", "submit_slurm", ("{w}/slurm/list.yaml", "--dry-run"), "expected a mapping"),
    Bad("slurm-override-not-yaml", "submit_slurm", ("{w}/slurm/mae.yaml", "train.epochs=[", "--dry-run"),
        "its value is not valid YAML"),
    Bad("slurm-nodes-zero", "submit_slurm", ("{w}/slurm/mae.yaml", "--nodes", "0", "--dry-run"),
        "expected a positive integer, got 0"),
    Bad("slurm-gpus-negative", "submit_slurm", ("{w}/slurm/mae.yaml", "--gpus-per-node", "-1", "--dry-run"),
        "expected a positive integer, got -1"),
    Bad("slurm-port-out-of-range", "submit_slurm", ("{w}/slurm/mae.yaml", "--port", "70000", "--dry-run"),
        "expected a port in 1024-65535"),
    Bad("slurm-time-unreadable", "submit_slurm", ("{w}/slurm/mae.yaml", "--time", "3days", "--dry-run"),
        "expected a SLURM time limit"),
]

# ---------------------------------------------------------------- demo
@world_part
def demo_inputs(w: Path) -> None:
    """demo/: foreign/ (a folder of someone's files), other_size/ (a demo folder of another size)."""
    (w / "demo" / "foreign").mkdir(parents=True)
    (w / "demo" / "foreign" / "notes.txt").write_text("my notes\n")
    (w / "demo" / "other_size").mkdir()
    (w / "demo" / "other_size" / ".size").write_text("Size(pretrain_images=1)")


CASES += [
    Bad("demo-foreign-out", "demo", ("--out", "{w}/demo/foreign", "--quick"), "not a demo's"),
    Bad("demo-foreign-out-fresh", "demo", ("--out", "{w}/demo/foreign", "--quick", "--fresh"), "not a demo's"),
    Bad("demo-out-is-a-file", "demo", ("--out", "{w}/demo/foreign/notes.txt"), "a file, not a folder"),
    Bad("demo-other-size", "demo", ("--out", "{w}/demo/other_size", "--quick"), "a demo of another size"),
]

# ---------------------------------------------------------------- gpu_check_wheels
CASES += [
    Bad("wheels-glibc-too-old", "gpu_check_wheels", ("--glibc", "2.5", "--out", "{w}/out/wheels"),
        "give 2.17 or later"),
    Bad("wheels-glibc-unreadable", "gpu_check_wheels", ("--glibc", "rhel8", "--out", "{w}/out/wheels"),
        "expected a version like 2.28"),
    Bad("wheels-python-unreadable", "gpu_check_wheels", ("--python", "3", "--out", "{w}/out/wheels"),
        "expected a Python version like 3.10"),
    Bad("wheels-out-is-a-file", "gpu_check_wheels", ("--out", "{w}/ckpt/not_a_checkpoint.pth"),
        "a file, not a folder"),
]


# ---------------------------------------------------------------- study
@world_part
def studies(w: Path) -> None:
    folder = w / "studies"
    folder.mkdir()
    base = "base: configs/pretrain/mae_vit_tiny_cpu.yaml\n"
    (folder / "typo.yaml").write_text(base + "sweep: {model.mask_ratio: [0.5]}\nrung: [knn]\n")
    (folder / "bad_rung.yaml").write_text(base + "sweep: {model.mask_ratio: [0.5]}\nrungs: [knn, dance]\n")
    (folder / "bad_key.yaml").write_text(base + "sweep: {model.mask_ratoi: [0.5, 0.75]}\n")
    (folder / "needs_data.yaml").write_text(base + "pretrain_data: imagenet\nsweep: {model.mask_ratio: [0.5]}\n")
    (folder / "tiny.yaml").write_text(base + "sweep: {model.mask_ratio: [0.5]}\nrungs: [knn]\n")


CASES += [
    Bad("study-missing", "study", ("{w}/studies/nope.yaml",), "study not found"),
    Bad("study-unknown-key", "study", ("{w}/studies/typo.yaml",), "unknown study keys ['rung']"),
    Bad("study-unknown-rung", "study", ("{w}/studies/bad_rung.yaml",), "unknown rungs ['dance']"),
    Bad("study-swept-key-unknown", "study", ("{w}/studies/bad_key.yaml", "--out", "{w}/out/study"), "mask_ratoi"),
    Bad("study-pretrain-data-not-given", "study", ("{w}/studies/needs_data.yaml", "--out", "{w}/out/study"),
        "--data imagenet=PATH"),
    Bad("study-slurm-without-sbatch", "study", ("{w}/studies/tiny.yaml", "--launcher", "slurm", "--out", "{w}/out/study"),
        "sbatch not found on PATH"),
    Bad("study-report-before-any-run", "study", ("{w}/studies/tiny.yaml", "--report-only", "--out", "{w}/out/study"),
        "no study run here to report on"),
]

# ---------------------------------------------------------------- robustness_eval
@world_part
def robustness_inputs(w: Path) -> None:
    """robustness/: a 2-class ViT-pico classifier (the MAE authors' layout: weights only) and variant folders."""
    import torch

    from transfer.classification.vit import build_vit_classifier, vit_arch

    folder, wnids = w / "robustness", ["n01440764", "n01443537", "n01484850"]
    model = build_vit_classifier(vit_arch("vit_pico_patch8"), 2, 32, global_pool="avg")
    folder.mkdir()
    torch.save({"model": model.state_dict()}, folder / "classifier.pth")
    for name, sketch, extra in (("good", 2, ()), ("three_classes", 3, ()), ("a_only", 0, ("imagenet-a/n01440764",)),
                                ("c_partial", 2, ("imagenet-c/fog/1/n01440764",)),
                                ("unknown_wnid", 2, ("imagenet-a/n09999999",))):
        for wnid in wnids[:sketch]:
            write_jpegs(folder / name / "imagenet-sketch" / wnid, 1)
        for sub in extra:
            write_jpegs(folder / name / sub, 1)


def robustness_argv(data, *extra, checkpoint="{w}/robustness/classifier.pth"):
    return (checkpoint, "--data-root", f"{{w}}/robustness/{data}", "--out", "{w}/out/robustness", "--num-workers",
            "0", *extra)


CASES += [
    Bad("robustness-classifier-missing", "robustness_eval",
        robustness_argv("good", checkpoint="{w}/robustness/finetune/seed0/checkpoint-last.pth"),
        "classifier not found: "),
    Bad("robustness-not-a-checkpoint", "robustness_eval",
        robustness_argv("good", checkpoint="{w}/ckpt/not_a_checkpoint.pth"), "not_a_checkpoint.pth"),
    Bad("robustness-a-pretraining-checkpoint", "robustness_eval",
        robustness_argv("good", checkpoint="{w}/ckpt/moco_r18.pth.tar"), "no classifier head in it"),
    Bad("robustness-data-root-missing", "robustness_eval", robustness_argv("nope"), "--data-root"),
    Bad("robustness-no-variant", "robustness_eval", robustness_argv("../data/cls"), "no ImageNet variant in it"),
    Bad("robustness-no-class-list", "robustness_eval", robustness_argv("a_only"), "no class list"),
    Bad("robustness-classes-missing", "robustness_eval", robustness_argv("a_only", "--classes", "{w}/nope.txt"),
        "nope.txt: no such file or folder"),
    Bad("robustness-outputs-not-the-classes", "robustness_eval", robustness_argv("three_classes"),
        "has 2 outputs but"),
    Bad("robustness-imagenet-c-incomplete", "robustness_eval", robustness_argv("c_partial"),
        "ImageNet-C's mCE needs all 15 corruptions x 5 severities"),
    Bad("robustness-unknown-wnid", "robustness_eval", robustness_argv("unknown_wnid"),
        "n09999999 are not among the classifier's 2"),
    Bad("robustness-batch-zero", "robustness_eval", robustness_argv("good", "--batch", "0"),
        "argument --batch: expected a positive integer, got 0"),
]


def write_jpegs(folder: Path, n: int, size: int = 32, seed: int = 0) -> None:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{i:03d}.jpg")


@pytest.fixture(scope="module")
def world(tmp_path_factory, moco_r18) -> Path:
    """Good and bad inputs side by side; the tools must leave every file of it as it was.

    ckpt/      moco_r18.pth.tar (a real MoCo v2 R-18 checkpoint), not_a_checkpoint.pth (text)
    data/      cls/{train,val}/{a,b}/*.jpg (3 a class), empty/, unreadable/{train,val}/{a,b}/*.jpg (text),
               no_val/train/{a,b}/*.jpg
    configs/   cls.yaml (a tiny classification config on data/cls)
    cwd/       the working directory (empty)
    and what each section's ``world_part`` adds.
    """
    w = tmp_path_factory.mktemp("world")
    (w / "ckpt").mkdir()
    shutil.copy(moco_r18, w / "ckpt" / "moco_r18.pth.tar")
    (w / "ckpt" / "not_a_checkpoint.pth").write_text("not a checkpoint\n")
    for split, seed in (("train", 0), ("val", 1)):
        for c, cls in enumerate("ab"):
            write_jpegs(w / "data" / "cls" / split / cls, 3, seed=10 * seed + c)
            unreadable = w / "data" / "unreadable" / split / cls
            unreadable.mkdir(parents=True)
            for i in range(3):
                (unreadable / f"{i:03d}.jpg").write_text("not an image")
    for c, cls in enumerate("ab"):
        write_jpegs(w / "data" / "no_val" / "train" / cls, 3, seed=20 + c)
    (w / "data" / "empty").mkdir()
    (w / "configs").mkdir()
    (w / "configs" / "cls.yaml").write_text(
        f"protocol: moco_linear\nmodel: {{arch: resnet18, num_classes: 2}}\n"
        f"data: {{path: {w}/data/cls, img_size: 32, num_workers: 0}}\n"
        f"train: {{batch_size: 2, epochs: 1, device: cpu, output_dir: {w}/out/cls}}\n")
    (w / "cwd").mkdir()
    for build in WORLD_PARTS:
        build(w)
    return w


def snapshot(root: Path) -> dict:
    """Every file and folder under ``root``: its kind, size and content hash."""
    state = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        state[rel] = "dir" if p.is_dir() else (p.stat().st_size, hashlib.sha1(p.read_bytes()).hexdigest())
    return state


def tool_module(tool: str):
    spec = importlib.util.spec_from_file_location(f"tools_{tool}", REPO / "tools" / f"{tool}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # as an import does (dataclasses look their module up there)
    spec.loader.exec_module(module)
    return module


def entry_point(tool: str):
    """The function the tool's ``__main__`` hands to ``run_tool`` (``cli`` where ``main`` is the per-process
    worker that a launcher starts, as in train_net)."""
    module = tool_module(tool)
    return getattr(module, "cli", None) or module.main


def error_lines(stderr: str):
    return [line for line in stderr.splitlines() if ERROR_LINE.match(line)]


def argv_of(case: Bad, world: Path):
    return [a.format(w=world) for a in case.argv]


def all_loggers():
    return [logging.getLogger()] + [x for x in logging.Logger.manager.loggerDict.values()
                                    if isinstance(x, logging.Logger)]


@pytest.fixture
def isolated_logging(monkeypatch):
    """In-process runs of several tools in one process: the log handlers a tool adds (detectron2's
    setup_logger holds the stream of the test it ran in) are removed after its row, and a handler left
    by an earlier test, whose captured stream is closed now, stays quiet instead of printing a traceback
    of the logging module into this row's stderr."""
    monkeypatch.setattr(logging, "raiseExceptions", False)
    before = {id(x): list(x.handlers) for x in all_loggers()}
    yield
    for x in all_loggers():
        for handler in [h for h in x.handlers if h not in before.get(id(x), [])]:
            x.removeHandler(handler)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.tool}:{c.id}")
def test_user_error_is_one_line_and_changes_nothing(case, world, capsys, monkeypatch, isolated_logging):
    monkeypatch.chdir(world / "cwd")
    before = snapshot(world)
    with pytest.raises(SystemExit) as ended:
        cli.run_tool(entry_point(case.tool), argv_of(case, world))
    err = capsys.readouterr().err
    assert ended.value.code == cli.USER_ERROR_EXIT, err
    assert "Traceback" not in err, err
    lines = error_lines(err)
    assert len(lines) == 1 and case.says in lines[0], err
    assert snapshot(world) == before, "the failed run changed the folder"


def test_every_tool_has_bad_inputs():
    """A new tool comes with its rows: the table covers every tools/*.py."""
    covered = {c.tool for c in CASES}
    assert sorted(set(TOOLS) - covered) == [], "tools without a row in CASES"


@pytest.mark.slow
@pytest.mark.parametrize("tool", TOOLS)
def test_every_tool_reports_user_errors_from_the_command_line(tool, world):
    """The tool's first row, run as a user runs it: its ``__main__`` goes through ``run_tool``."""
    case = next((c for c in CASES if c.tool == tool), None)
    if case is None:
        pytest.fail(f"no row for tools/{tool}.py in CASES")
    before = snapshot(world)
    proc = subprocess.run([sys.executable, str(REPO / "tools" / f"{tool}.py"), *argv_of(case, world)],
                          cwd=world / "cwd", capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"})
    assert proc.returncode == cli.USER_ERROR_EXIT, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and case.says in lines[0], proc.stderr[-3000:]
    assert snapshot(world) == before


def test_a_bug_keeps_its_traceback():
    def buggy(argv):
        return 1 / 0

    with pytest.raises(ZeroDivisionError):
        cli.run_tool(buggy, [])


@pytest.mark.parametrize("error, line", [
    (ConfigError("train.epochs must be > 0, got -1\n(see configs/)"),
     "error: train.epochs must be > 0, got -1 (see configs/)"),
    (DiskFull(28, "disk full writing out/config.yaml (the file there before is unchanged)"),
     "error: [Errno 28] disk full writing out/config.yaml (the file there before is unchanged)"),
])
def test_user_errors_end_in_one_line(error, line, capsys):
    def failing(argv):
        raise error

    with pytest.raises(SystemExit) as ended:
        cli.run_tool(failing, [])
    assert ended.value.code == cli.USER_ERROR_EXIT
    assert capsys.readouterr().err.splitlines() == [line]
