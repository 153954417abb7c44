"""The results file every evaluation tool writes, and the report reads.

Each finished evaluation leaves ``<output_dir>/results.json``:

    {
      "task": "imagenet_linear",          # see TASKS
      "backbone": "vit_base_patch16",     # architecture, e.g. resnet50, vit_large_patch16
      "pretrain": "mae",                  # mae | moco_v1 | moco_v2 | supervised | random | ...
      "checkpoint": "/path/to/weights",   # what was evaluated (or null for random init)
      "metrics": {"top1": 68.1, "top5": 88.0},
      "recipe": {"epochs": 90, "batch": 16384, "img_size": 224, ...},
      "tool": "tools/eval_linear.py", "config": "...", "created": "2026-11-28T12:00:00",
      "launch": {"recipe_gpus": 32, "gpus": 8, "nodes": 1,   # only when launched on other GPUs than the
                 "rule": "batch kept by ... train.accum_iter=4"}  # recipe's (the ladder, LAUNCH_ENV)
    }

so that runs of different tools share one schema and runs with unlike recipes
can be told apart. ``write_results`` validates before writing (atomically);
``read_results`` rejects malformed files with the file's name and the reason.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
from pathlib import Path
from typing import Any, Dict, List, Optional

from pretrain.errors import UserError


def pretrain_label(given: Optional[str], from_checkpoint: Optional[str], has_checkpoint: bool,
                   recipe_default: Optional[str] = None) -> str:
    """The ``pretrain`` a results file records, one rule for every task: ``random`` when the backbone starts
    from no pretrained weights; else the label given (command line, config; ``auto`` is none), else what the
    checkpoint's backbone export says (``pretrain.backbones.Provenance.label``) unless it does not know,
    else the recipe's default, else ``unknown``."""
    if not has_checkpoint:
        return "random"
    if given and given != "auto":
        return given
    if from_checkpoint and from_checkpoint != "unknown":
        return from_checkpoint
    return recipe_default or "unknown"


# task -> the metrics it reports (all in percent, higher is better)
TASKS: Dict[str, List[str]] = {
    # top1 / top5: the final epoch's; top1_best: the best epoch's (what the MAE and MoCo authors report)
    "imagenet_linear": ["top1", "top5", "top1_best"],
    "imagenet_finetune": ["top1", "top5", "top1_best"],
    # MAE's Table 6 transfer: fine-tuning on iNaturalist and Places (tools/train_cls.py, data.task)
    "inat2017_finetune": ["top1", "top5", "top1_best"],
    "inat2018_finetune": ["top1", "top5", "top1_best"],
    "inat2019_finetune": ["top1", "top5", "top1_best"],
    "places205_finetune": ["top1", "top5", "top1_best"],
    "places365_finetune": ["top1", "top5", "top1_best"],
    "knn": ["top1", "top5"],  # weighted k-NN on frozen features of a labelled folder (the ladder's first rung)
    "coco_det": ["box_AP", "box_AP50", "box_AP75"],
    "coco_instance_seg": ["box_AP", "mask_AP", "box_AP50", "box_AP75", "mask_AP50", "mask_AP75"],
    # LVIS's federated AP (v0.5: MoCo's Table 6; v1: ViTDet's), APr / APc / APf: rare, common, frequent categories
    "lvis_v0.5_instance_seg": ["mask_AP", "mask_AP50", "mask_AP75", "box_AP", "mask_APr", "mask_APc", "mask_APf"],
    "lvis_v1_instance_seg": ["box_AP", "mask_AP", "mask_AP50", "mask_AP75", "mask_APr", "mask_APc", "mask_APf"],
    "cityscapes_instance_seg": ["mask_AP", "mask_AP50"],  # cityscapesscripts' instance-level AP on val
    # Keypoint R-CNN on COCO person keypoints: OKS AP (MoCo's Table 6), and its person boxes
    "coco_keypoints": ["keypoint_AP", "keypoint_AP50", "keypoint_AP75", "box_AP"],
    # Cascade Mask R-CNN (ViTDet's Cascade rows): not comparable with Mask R-CNN's, a table of its own
    "coco_instance_seg_cascade": ["box_AP", "mask_AP", "box_AP50", "box_AP75", "mask_AP50", "mask_AP75"],
    "voc_det": ["AP50", "AP", "AP75"],
    "ade20k_seg": ["mIoU", "mAcc", "aAcc"],
    "semantic_seg": ["mIoU", "mAcc", "aAcc"],  # any other folder of images + label PNGs
    # MoCo's Table 6 FCN: PASCAL VOC 2012 (21 classes) and Cityscapes (19 classes), each dataset's own classes
    "voc_seg": ["mIoU", "mAcc", "aAcc"],
    "cityscapes_seg": ["mIoU", "mAcc", "aAcc"],
    # The frozen dense probe (BN + 1x1 conv on frozen patch features): not UperNet's numbers, its own tables.
    "ade20k_dense_probe": ["mIoU", "mAcc", "aAcc"],
    "dense_probe": ["mIoU", "mAcc", "aAcc"],
    # A fine-tuned classifier on ImageNet-A / -R (top-1 over their 200 classes), -Sketch and -C (in_c_mce: the mean
    # corruption error, AlexNet = 100, LOWER is better; in_c_top1: the mean top-1 of its 75 sets): transfer.robustness
    "imagenet_robustness": ["in_a_top1", "in_r_top1", "sketch_top1", "in_c_mce", "in_c_top1"],
}
RESULTS_FILE = "results.json"
# An evaluation-only run in a folder that holds a training run's results.json records itself here instead,
# so that the training run's record (best epoch, recipe) is never replaced by a re-evaluation.
EVAL_RESULTS_FILE = "results_eval.json"
# Set by the ladder (transfer.ladder.run_job) for a job it starts on other GPUs than its recipe's: the JSON of
# its ``launch`` record (recipe's GPUs, GPUs used, the rule that kept the batch), which every results file it
# writes carries, so that the report marks the row.
LAUNCH_ENV = "SSLKIT_LAUNCH"


class ResultsError(UserError, ValueError):
    pass


def validate(record: Dict[str, Any], source: str = "results") -> Dict[str, Any]:
    """Check a results record; raises ResultsError naming ``source`` and the problem."""
    def fail(msg):
        raise ResultsError(f"{source}: {msg}")

    if not isinstance(record, dict):
        fail(f"expected a JSON object, found {type(record).__name__}")
    for key in ("task", "backbone", "pretrain", "metrics", "recipe"):
        if key not in record:
            fail(f"missing required key {key!r}")
    if record["task"] not in TASKS:
        fail(f"unknown task {record['task']!r}; expected one of {sorted(TASKS)}")
    metrics = record["metrics"]
    if not isinstance(metrics, dict) or not metrics:
        fail("'metrics' must be a non-empty object")
    for name, value in metrics.items():
        if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool)
                                  or not math.isfinite(value)):
            fail(f"metric {name!r} must be a finite number or null, found {value!r}")
    if not isinstance(record["recipe"], dict):
        fail("'recipe' must be an object")
    for key in ("backbone", "pretrain"):
        if not isinstance(record[key], str) or not record[key]:
            fail(f"{key!r} must be a non-empty string")
    return record


def write_results(output_dir, task: str, backbone: str, pretrain: str, metrics: Dict[str, float],
                  recipe: Dict[str, Any], checkpoint: Optional[str] = None, file_name: str = RESULTS_FILE,
                  **extra) -> Path:
    """Validate and write ``<output_dir>/<file_name>`` (results.json) atomically; returns its path."""
    record = {
        "task": task, "backbone": backbone, "pretrain": pretrain,
        "checkpoint": str(checkpoint) if checkpoint else None,
        "metrics": {k: (None if v is None else float(v)) for k, v in metrics.items()},
        "recipe": dict(recipe),
        "created": _dt.datetime.now().isoformat(timespec="seconds"),
        **extra,
    }
    if os.environ.get(LAUNCH_ENV):
        record["launch"] = json.loads(os.environ[LAUNCH_ENV])
    validate(record, f"results for {output_dir}")
    from pretrain.checkpoint import save_atomic

    return save_atomic(record, Path(output_dir) / file_name)


def read_results(path) -> Dict[str, Any]:
    """Read a results.json (or the one in a folder), validated."""
    path = Path(path)
    if path.is_dir():
        path = path / RESULTS_FILE
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise ResultsError(f"{path}: no such results file") from None
    except json.JSONDecodeError as e:
        raise ResultsError(f"{path}: not valid JSON ({e})") from None
    except UnicodeDecodeError:  # a binary file named results.json (a checkpoint, an archive)
        raise ResultsError(f"{path}: not a text file; expected the JSON record an evaluation tool writes") from None
    record = validate(record, str(path))
    record["source"] = str(path)
    return record


def holds_training_record(folder) -> bool:
    """Whether ``folder/results.json`` is a training run's record (anything but an evaluation-only one,
    an unreadable file included): an evaluation-only run writes ``EVAL_RESULTS_FILE`` beside it instead."""
    path = Path(folder) / RESULTS_FILE
    if not path.is_file():
        return False
    try:
        return not (json.loads(path.read_text()).get("recipe") or {}).get("eval_only")
    except (ValueError, AttributeError):
        return True


def find_results(root) -> List[Path]:
    """Every results.json under ``root`` (sorted)."""
    return sorted(Path(root).rglob(RESULTS_FILE))
