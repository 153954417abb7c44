"""A fine-tuned ImageNet classifier on ImageNet-A, -R, -Sketch and -C (MAE's Table 3), scored as their authors do.

* ImageNet-A (Hendrycks et al., natural adversarial examples: 7,500 images) and ImageNet-R (renditions: 30,000):
  200 of the 1000 classes each. Top-1 over those 200: the classifier's logits restricted to the classes present
  (the authors' ``indices_in_1k``), so that a class outside the subset is never predicted.
* ImageNet-Sketch (Wang et al.: 50,000 sketches, all 1000 classes): plain top-1.
* ImageNet-C (Hendrycks & Dietterich: the 50,000 validation images under 15 corruptions x 5 severities): the mean
  corruption error. Per corruption c, CE_c = sum over severities s of the top-1 error E_{s,c}, divided by AlexNet's
  sum (``ALEXNET_ERRORS``); mCE = the mean of CE_c over the 15 corruptions, in percent (lower is better).

On disk, under one root (each variant optional: the ones present are evaluated)::

    imagenet-a/<wnid>/*.jpg
    imagenet-r/<wnid>/*.jpg
    imagenet-sketch/<wnid>/*.JPEG                    (the release's sketch/ folder)
    imagenet-c/<corruption>/<1..5>/<wnid>/*.JPEG     (the 15 corruptions of noise/blur/weather/digital.tar;
                                                      extra.tar's 4 are not part of mCE and not read)

The classifier's output k is the k-th of the sorted class folders it was fine-tuned on
(``pretrain.data.ImageFolderDataset``'s order): a wnid's index is its rank in that list. ``class_list`` takes it
from ``--classes`` (a file of wnids, one a line in the classifier's order, a first word per line, so ImageNet's
LOC_synset_mapping.txt works; or a folder of class folders, e.g. ImageNet's train/), else from ImageNet-Sketch's
folders (one per ImageNet class), else from an ImageNet-C set's.

Every image goes through the classifier's own evaluation transform (its config's ``img_size`` / ``crop_pct`` /
``interpolation``: resize, centre crop), as its ImageNet top-1 was measured.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from pretrain.errors import ConfigError, DataError, InputNotFound

log = logging.getLogger(__name__)

TASK = "imagenet_robustness"
# Variant folder -> the metric its top-1 is written as (ImageNet-C's are in_c_mce and in_c_top1).
TOP1 = {"imagenet-a": "in_a_top1", "imagenet-r": "in_r_top1", "imagenet-sketch": "sketch_top1"}
SUBSETS = ("imagenet-a", "imagenet-r")  # 200-class subsets: the logits restricted to their classes
IMAGENET_C = "imagenet-c"
VARIANTS = (*TOP1, IMAGENET_C)

CORRUPTIONS = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
               "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate",
               "jpeg_compression")
SEVERITIES = (1, 2, 3, 4, 5)
# AlexNet's top-1 error (fraction) on each ImageNet-C corruption at severities 1-5: the benchmark's normaliser,
# published with it by Hendrycks & Dietterich (github.com/hendrycks/robustness). The values as timm carries them
# (timm/utils ``imagenetc_alexnet_error_rates_list``, a timm branch's); their means per corruption are the
# per-corruption errors of google-research/augmix imagenet.py's ``ALEXNET_ERR`` ("Raw AlexNet errors taken from
# https://github.com/hendrycks/robustness"), which tests/test_robustness.py holds them to.
ALEXNET_ERRORS: Dict[str, Tuple[float, ...]] = {
    "gaussian_noise": (0.69528, 0.82542, 0.93554, 0.98138, 0.99452),
    "shot_noise": (0.71224, 0.85108, 0.93574, 0.98182, 0.99146),
    "impulse_noise": (0.78374, 0.89808, 0.9487, 0.9872, 0.99548),
    "defocus_blur": (0.65624, 0.73202, 0.85036, 0.91364, 0.94714),
    "glass_blur": (0.64308, 0.75054, 0.88806, 0.91622, 0.93344),
    "motion_blur": (0.5843, 0.70048, 0.82108, 0.8975, 0.92638),
    "zoom_blur": (0.70008, 0.76992, 0.80784, 0.84198, 0.87198),
    "snow": (0.71726, 0.88392, 0.86468, 0.9187, 0.94952),
    "frost": (0.6139, 0.79734, 0.8879, 0.89942, 0.9343),
    "fog": (0.67474, 0.7605, 0.84378, 0.8726, 0.945),
    "brightness": (0.4514, 0.48502, 0.54048, 0.62166, 0.7244),
    "contrast": (0.64548, 0.7615, 0.88874, 0.9776, 0.9927),
    "elastic_transform": (0.52596, 0.70116, 0.55686, 0.64076, 0.80554),
    "pixelate": (0.52218, 0.5462, 0.73728, 0.87092, 0.91262),
    "jpeg_compression": (0.51002, 0.54718, 0.57294, 0.65458, 0.74778),
}
LAYOUT = ("imagenet-a/<wnid>/*.jpg, imagenet-r/<wnid>/, imagenet-sketch/<wnid>/, "
          "imagenet-c/<corruption>/<1..5>/<wnid>/")


# ------------------------------------------------------------------ the scores
def corruption_errors(errors: Mapping[str, Sequence[float]]) -> Dict[str, float]:
    """CE_c (%) of each corruption in ``errors`` (its top-1 errors, fractions, at severities 1-5): their sum over
    AlexNet's."""
    for c, errs in errors.items():
        if c not in ALEXNET_ERRORS or len(errs) != len(SEVERITIES):
            raise ValueError(f"{c}: expected one of ImageNet-C's 15 corruptions with {len(SEVERITIES)} severities")
    return {c: 100.0 * sum(errs) / sum(ALEXNET_ERRORS[c]) for c, errs in errors.items()}


def mean_corruption_error(errors: Mapping[str, Sequence[float]]) -> float:
    """mCE (%): the mean CE over the 15 corruptions (all of them: the benchmark's number is over the 15)."""
    missing = [c for c in CORRUPTIONS if c not in errors]
    if missing:
        raise ValueError(f"mCE is over all 15 corruptions; missing {', '.join(missing)}")
    ce = corruption_errors(errors)
    return sum(ce[c] for c in CORRUPTIONS) / len(CORRUPTIONS)


def hits(logits, target, indices, restrict: bool):
    """Whether each image's prediction is its class. ``target`` indexes the dataset's classes, ``indices`` maps them
    to the classifier's outputs; ``restrict``: the argmax over those outputs only (ImageNet-A / -R's subsets)."""
    if restrict:
        return logits[:, indices].argmax(dim=1) == target
    return logits.argmax(dim=1) == indices[target]


# ------------------------------------------------------------------ the data
def variants_present(root: Path) -> List[str]:
    """The variants under ``root``; a DataError when there is none."""
    present = [v for v in VARIANTS if (root / v).is_dir()]
    if not present:
        raise DataError(f"{root}: no ImageNet variant in it; expected some of {LAYOUT}")
    return present


def imagenet_c_sets(root: Path) -> Dict[Tuple[str, int], Path]:
    """(corruption, severity) -> folder, for all 15 x 5; a DataError naming what is missing."""
    sets = {(c, s): root / IMAGENET_C / c / str(s) for c in CORRUPTIONS for s in SEVERITIES}
    missing = [f"{c}/{s}" for (c, s), folder in sets.items() if not folder.is_dir()]
    if missing:
        raise DataError(f"{root / IMAGENET_C}: ImageNet-C's mCE needs all 15 corruptions x 5 severities; missing "
                        f"{', '.join(missing[:6])}{f' (+{len(missing) - 6} more)' if len(missing) > 6 else ''} "
                        "(expected <corruption>/<1..5>/<wnid>/*.JPEG: extract noise, blur, weather and digital.tar "
                        "there)")
    return sets


def class_folders(folder: Path) -> List[str]:
    return sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


def class_list(root: Path, classes: Optional[str] = None) -> Tuple[List[str], str]:
    """(the wnids in the classifier's output order, where they came from): ``classes`` (a file or a folder),
    else ImageNet-Sketch's class folders, else an ImageNet-C set's."""
    if classes:
        path = Path(classes)
        if path.is_dir():
            wnids, source = class_folders(path), f"--classes {path} (its class folders)"
        elif path.is_file():
            wnids = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
            source = f"--classes {path}"
        else:
            raise InputNotFound(f"--classes {path}: no such file or folder (expected a file of wnids, one a line in "
                                "the classifier's class order, or a folder of class folders such as ImageNet's train/)")
    elif (root / "imagenet-sketch").is_dir():
        wnids, source = class_folders(root / "imagenet-sketch"), f"{root / 'imagenet-sketch'}'s class folders"
    elif (root / IMAGENET_C / CORRUPTIONS[0] / "1").is_dir():
        folder = root / IMAGENET_C / CORRUPTIONS[0] / "1"
        wnids, source = class_folders(folder), f"{folder}'s class folders"
    else:
        raise ConfigError(f"{root}: no class list for the classifier's outputs (ImageNet-A and -R hold 200 classes "
                          "each): give --classes with ImageNet's train/ folder or a file of its wnids in order, or "
                          "put imagenet-sketch/ under the data root")
    if not wnids:
        raise DataError(f"{source}: no classes in it (expected the classifier's wnids, e.g. n01440764)")
    if len(set(wnids)) != len(wnids):
        raise DataError(f"{source}: a class appears twice; expected each of the classifier's wnids once")
    return wnids, source


@dataclass
class EvalSet:
    """One folder to score: its name in the results, its dataset, its classes as the classifier's outputs."""
    name: str  # imagenet-a, imagenet-sketch, imagenet-c/fog/3, ...
    dataset: object  # pretrain.data.ImageFolderDataset
    indices: List[int]
    restrict: bool


def eval_sets(root: Path, wnids: Sequence[str], source: str, transform, bad_list: Optional[str] = None
              ) -> List[EvalSet]:
    """Every set of the variants under ``root``, read and checked: images, a readable first one, classes the
    classifier has (a DataError, else)."""
    from pretrain.data import ImageFolderDataset

    present = variants_present(root)
    folders: List[Tuple[str, Path, bool]] = [(v, root / v, v in SUBSETS) for v in present if v != IMAGENET_C]
    if IMAGENET_C in present:
        folders += [(f"{IMAGENET_C}/{c}/{s}", f, False) for (c, s), f in imagenet_c_sets(root).items()]
    index = {w: i for i, w in enumerate(wnids)}
    sets = []
    for name, folder, restrict in folders:
        dataset = ImageFolderDataset(folder, transform, bad_list=bad_list)
        if not dataset.classes:
            raise DataError(f"{folder}: images without class folders; expected <wnid>/*.jpg ({LAYOUT})")
        unknown = [c for c in dataset.classes if c not in index]
        if unknown:
            raise DataError(f"{folder}: classes {', '.join(unknown[:5])} are not among the classifier's {len(wnids)} "
                            f"({source}): give the classifier's class list with --classes")
        dataset.check_readable()
        sets.append(EvalSet(name, dataset, [index[c] for c in dataset.classes], restrict))
    return sets


# ------------------------------------------------------------------ the classifier
@dataclass
class Classifier:
    model: object  # torch.nn.Module, in eval mode
    cfg: object  # its classification config (the recorded one, or the protocol's defaults)
    backbone: str
    pretrain: str
    num_classes: int
    pretrained_checkpoint: Optional[str] = None
    pretrain_epochs: Optional[int] = None
    finetune_epochs: Optional[int] = None  # None: not recorded (a file of another tool)


def classifier_config(record: Mapping, path: str, export, state_dict: Mapping):
    """The classification config a ``tools/train_cls.py`` checkpoint records; for a file without one (the MAE
    authors' fine-tuned weights, timm / DeiT, torchvision), the protocol's defaults for its family, with the pooling
    its tensors say. The model's shape is ``export``'s (``pretrain.backbones.read_backbone`` of the classifier)."""
    from omegaconf import OmegaConf

    from transfer.classification.config import PROTOCOL_SCHEMAS

    text = record.get("config")
    model = {"arch": "auto", "checkpoint": None, "drop_path": 0.0}  # the shape from the classifier's own tensors
    if not isinstance(text, str):
        data = {}
        if export.family == "vit":  # MAE's fine-tuned files pool the patch tokens (fc_norm); DeiT's the cls token
            model["global_pool"] = "avg" if "fc_norm.weight" in state_dict else "token"
            data["img_size"] = export.shape["img_size"]  # the resolution its position table was trained at
        cfg = OmegaConf.structured(PROTOCOL_SCHEMAS["mae_finetune" if export.family == "vit" else "moco_linear"])
        return OmegaConf.merge(cfg, {"model": model, "data": data})
    raw = OmegaConf.create(text)
    if raw.get("protocol") not in PROTOCOL_SCHEMAS:
        what = f"a {raw.get('method')} pretraining checkpoint" if raw.get("method") else "no classifier's config"
        raise ConfigError(f"{path}: {what}, not a fine-tuned classifier; fine-tune it first (tools/train_cls.py "
                          "configs/classification/mae_vit_base_finetune.yaml --checkpoint ...) and give its "
                          "checkpoint-last.pth")
    return OmegaConf.merge(OmegaConf.structured(PROTOCOL_SCHEMAS[raw.protocol]), raw, {"model": model})


def head_classes(state_dict: Mapping) -> Optional[int]:
    """The classifier's outputs: its head's rows (the linear probe's BN + linear head, a ResNet's fc)."""
    for key in ("head.weight", "head.1.weight", "fc.weight"):
        if key in state_dict:
            return int(state_dict[key].shape[0])
    return None


def read_classifier(path, allow_pickle: bool = False):
    """(the checkpoint's state dict, its record): a fine-tuned classifier's file, read without building a model."""
    from pretrain.checkpoint import CheckpointFormatError, load_file, unwrap_state_dict

    if not Path(path).is_file():
        raise InputNotFound(f"classifier not found: {path}: give a fine-tuned classifier (tools/train_cls.py's "
                            "checkpoint-last.pth, or the MAE authors' fine-tuned file); in the ladder, the robustness "
                            "rung reads the finetune rung's of the same subject and seed: run --rungs finetune too")
    ckpt = load_file(path, allow_pickle)
    try:
        sd = unwrap_state_dict(ckpt)
    except CheckpointFormatError as e:
        raise CheckpointFormatError(f"{path}: {e}") from None
    if head_classes(sd) is None:
        raise CheckpointFormatError(f"{path}: no classifier head in it (head.weight, fc.weight): give a fine-tuned "
                                    "classifier, not a pretrained backbone (fine-tune it first: tools/train_cls.py)")
    return sd, (ckpt if isinstance(ckpt, Mapping) else {})


def build_classifier(path, state_dict: Mapping, record: Mapping, export, cfg) -> Classifier:
    """The classifier of ``state_dict`` as the project's protocol builds it (``transfer.classification``), of
    ``export``'s shape and ``cfg`` (``classifier_config``'s), its weights loaded exactly."""
    from pretrain.checkpoint import CheckpointFormatError
    from transfer.classification.protocols import protocol

    num_classes = head_classes(state_dict)
    model, backbone = protocol(cfg.protocol).build_model(cfg, num_classes, export)
    try:
        result = model.load_state_dict(dict(state_dict), strict=False)
    except RuntimeError as e:  # a tensor of another shape
        raise CheckpointFormatError(f"{path} does not fit a {cfg.protocol} classifier of {backbone} at "
                                    f"{cfg.data.img_size} px: {' '.join(str(e).split())[:300]}") from None
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointFormatError(f"{path} does not hold a {cfg.protocol} classifier of this shape ({backbone}, "
                                    f"{num_classes} classes): missing {result.missing_keys[:8]}, unexpected "
                                    f"{result.unexpected_keys[:8]}")
    model.eval()
    trained = "trainer" in record  # this tool's record of a training run (its config's epochs are the run's)
    return Classifier(model, cfg, record.get("backbone") or backbone, record.get("pretrain") or "unknown", num_classes,
                      record.get("pretrained_checkpoint"), record.get("pretrain_epochs"),
                      int(cfg.train.epochs) if trained else None)


# ------------------------------------------------------------------ evaluation
def count_correct(model, s: EvalSet, device, batch: int, num_workers: int, amp_dtype=None) -> Tuple[int, int]:
    """(correct, images) of ``model`` on the set ``s``."""
    import torch
    from torch.utils.data import DataLoader

    from pretrain.data import worker_init

    loader = DataLoader(s.dataset, batch_size=batch, shuffle=False, num_workers=num_workers,
                        pin_memory=device.type == "cuda", worker_init_fn=worker_init)
    indices = torch.as_tensor(s.indices, device=device)
    correct = n = 0
    with torch.no_grad():
        for inputs, target in loader:
            imgs = s.dataset.device_transform(inputs, device)
            target = torch.as_tensor(target).to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                logits = model(imgs)
            correct += int(hits(logits.float(), target, indices, s.restrict).sum())
            n += int(target.shape[0])
    return correct, n


def evaluate(model, sets: Sequence[EvalSet], device, batch: int, num_workers: int, amp_dtype=None
             ) -> Tuple[Dict[str, Optional[float]], Dict[str, Dict]]:
    """(the task's metrics, per set: top-1 and images; ImageNet-C per corruption: its errors and CE)."""
    top1: Dict[str, float] = {}
    details: Dict[str, Dict] = {}
    for s in sets:
        correct, n = count_correct(model, s, device, batch, num_workers, amp_dtype)
        top1[s.name] = 100.0 * correct / n
        details[s.name] = {"top1": top1[s.name], "images": n, "classes": len(s.indices)}
        log.info("%s: top-1 %.2f%% (%d images, %d classes%s)", s.name, top1[s.name], n, len(s.indices),
                 ", logits restricted to them" if s.restrict else "")
    metrics: Dict[str, Optional[float]] = {m: top1.get(v) for v, m in TOP1.items()}
    metrics.update(in_c_mce=None, in_c_top1=None)
    if any(name.startswith(IMAGENET_C + "/") for name in top1):
        errors = {c: [1.0 - top1[f"{IMAGENET_C}/{c}/{s}"] / 100.0 for s in SEVERITIES] for c in CORRUPTIONS}
        ce = corruption_errors(errors)
        for c in CORRUPTIONS:
            details[f"{IMAGENET_C}/{c}"] = {"errors": errors[c], "ce": ce[c]}
        metrics["in_c_mce"] = mean_corruption_error(errors)
        metrics["in_c_top1"] = sum(top1[f"{IMAGENET_C}/{c}/{s}"] for c in CORRUPTIONS for s in SEVERITIES) / (
            len(CORRUPTIONS) * len(SEVERITIES))
        log.info("ImageNet-C: mCE %.2f%% (AlexNet = 100), mean top-1 %.2f%%", metrics["in_c_mce"],
                 metrics["in_c_top1"])
    return metrics, details
