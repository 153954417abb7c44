"""Labelled image folders, the protocols' augmentations (timm's), mixup and the loss.

Transforms come from timm's factory, as in the authors' code: RandomResizedCrop +
flip for the linear protocols; for fine-tuning also RandAugment and random erasing;
evaluation resizes to ``img_size / crop_pct`` and centre-crops ``img_size``. timm's
augmentations draw from Python's and NumPy's global generators, so each sample's
transform runs with both seeded from the per-sample torch seed that
``pretrain.data.ImageFolderDataset`` sets: a resumed run sees the same crops.
"""
from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from typing import Callable, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn
from PIL import Image, ImageOps
from timm.data import Mixup, create_transform
from timm.data.auto_augment import RandAugment
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

from pretrain.data import IMAGENET_MEAN, IMAGENET_STD, ImageFolderDataset
from pretrain.synthetic import CLASSES, render_scene, scene_rng

__all__ = [
    "SeedGlobalRandom", "train_transform", "eval_transform", "resolve_splits", "build_datasets",
    "write_synthetic_folder", "build_mixup", "build_criterion",
]
log = logging.getLogger(__name__)


class SeedGlobalRandom:
    """Runs a transform with ``random`` and ``numpy.random`` seeded from torch's generator,
    restoring both afterwards (timm's RandAugment, crops and erasing use them)."""

    def __init__(self, transform: Callable):
        self.transform = transform

    def __call__(self, img):
        seed = int(torch.randint(0, 2**31 - 1, ()).item())
        py_state, np_state = random.getstate(), np.random.get_state()
        random.seed(seed)
        np.random.seed(seed)
        try:
            return self.transform(img)
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.transform!r})"


def train_transform(d) -> Callable:
    """The protocol's training augmentation from the data config (timm's factory)."""
    tf = create_transform(
        d.img_size, is_training=True, scale=(d.crop_min_scale, 1.0), hflip=0.5, color_jitter=None,
        auto_augment=d.auto_augment or None, interpolation=d.interpolation, re_prob=d.reprob, re_mode=d.remode,
        re_count=d.recount, mean=IMAGENET_MEAN, std=IMAGENET_STD,
    )
    for t in getattr(tf, "transforms", []):
        if isinstance(t, RandAugment):
            for op in t.ops:
                if op.name.startswith("Posterize"):
                    op.aug_fn = posterize
    return SeedGlobalRandom(tf)


def posterize(img: Image.Image, bits_to_keep: int, **_) -> Image.Image:
    """Keep the ``bits_to_keep`` most significant bits of each channel; 0 keeps none (black).

    RandAugment's PosterizeIncreasing asks for 0 bits at magnitude 10 (m9 + noise, mstd
    0.5, reaches it for about one sample in six). Pillow >= 12 refuses 0, which timm
    passes on and which would stop a run; this gives the black image Pillow used to.
    """
    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return img.point(lambda _: 0)
    return ImageOps.posterize(img, bits_to_keep)


def eval_transform(d) -> Callable:
    """Resize the short side to floor(img_size / crop_pct), centre-crop img_size."""
    return create_transform(d.img_size, is_training=False, crop_pct=d.crop_pct, interpolation=d.interpolation,
                            mean=IMAGENET_MEAN, std=IMAGENET_STD)


# ------------------------------------------------------------------ folders
def resolve_splits(d, output_dir) -> Tuple[Path, Path]:
    """(train folder, val folder): data.train / data.val, else data.path/{train,val}, else (data.synthetic) the
    synthetic folder, written under output_dir."""
    if d.train or d.val:
        if not (d.train and d.val):
            raise ValueError("set both data.train and data.val (labelled folders <dir>/<class>/*), or data.path")
        return Path(d.train), Path(d.val)
    if d.path:
        root = Path(d.path)
        train, val = root / "train", root / "val"
        for split in (train, val):
            if not split.is_dir():
                raise FileNotFoundError(
                    f"{split} not found: data.path must hold train/<class>/* and val/<class>/* (ImageNet layout); "
                    f"or set data.train and data.val"
                )
        return train, val
    if not d.synthetic:
        raise ValueError("no dataset: set data.path (train/ and val/), or data.train and data.val, "
                         "or data.synthetic=true")
    root = Path(output_dir) / "synthetic_data"
    write_synthetic_folder(root, d.synthetic_per_class, max(64, d.img_size))
    return root / "train", root / "val"


def build_datasets(d, output_dir, eval_only: bool = False):
    """(train dataset or None, val dataset, class names); train and val must have the same classes."""
    train_dir, val_dir = resolve_splits(d, output_dir)
    bad_list = str(Path(output_dir) / "unreadable_images.txt")
    val = ImageFolderDataset(val_dir, eval_transform(d), bad_list=bad_list)
    if not val.classes:
        raise ValueError(f"{val_dir} has no class folders: evaluation needs <dir>/<class>/* images")
    if eval_only:
        return None, val, val.classes
    train = ImageFolderDataset(train_dir, train_transform(d), bad_list=bad_list)
    if train.classes != val.classes:
        only_train = sorted(set(train.classes) - set(val.classes))[:5]
        only_val = sorted(set(val.classes) - set(train.classes))[:5]
        raise ValueError(f"class folders differ between {train_dir} and {val_dir}: "
                         f"only in train {only_train}, only in val {only_val}")
    real = d.path or d.train
    source = "files" if real else "built-in synthetic shapes (data.synthetic=true), not a real dataset"
    log.info("data: %d train images from %s, %d val images from %s (%s)", len(train), train_dir.resolve(),
             len(val), val_dir.resolve(), source)
    return train, val, train.classes


def write_synthetic_folder(root, per_class: int = 60, size: int = 64, seed: int = 0) -> Path:
    """An ImageNet-style folder of the built-in shapes, one object per image (the class is
    the shape; colour and texture are random): ``root/{train,val}/<shape>/*.png``.

    Written once; a later call with the same settings reuses it.
    """
    root = Path(root)
    stamp = {"per_class": per_class, "size": size, "seed": seed, "classes": list(CLASSES)}
    marker = root / "synthetic.json"
    if marker.is_file() and json.loads(marker.read_text()) == stamp:
        return root
    counts = {"train": per_class, "val": max(1, per_class // 4)}
    for split_id, (split, n) in enumerate(counts.items()):
        made = {c: 0 for c in range(len(CLASSES))}
        index = 0
        while min(made.values()) < n:
            scene = render_scene(scene_rng(seed * 10 + split_id, index), (size, size), max_objects=1)
            index += 1
            if not scene.instances or made[scene.instances[0].category] >= n:
                continue
            c = scene.instances[0].category
            out = root / split / CLASSES[c] / f"{split}_{made[c]:05d}.png"
            out.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(scene.image).save(out)
            made[c] += 1
    marker.write_text(json.dumps(stamp))
    return root


# ---------------------------------------------------- mixup and the loss
def build_mixup(d, num_classes: int) -> Optional[Mixup]:
    """timm's batch mixup / cutmix (with label smoothing folded into the soft targets), or None."""
    if d.mixup <= 0 and d.cutmix <= 0:
        return None
    return Mixup(mixup_alpha=d.mixup, cutmix_alpha=d.cutmix, prob=d.mixup_prob, switch_prob=d.mixup_switch_prob,
                 mode=d.mixup_mode, label_smoothing=d.smoothing, num_classes=num_classes)


def build_criterion(d, mixup: Optional[Mixup]) -> nn.Module:
    """Soft-target cross-entropy under mixup (which already smooths), else smoothed or plain CE."""
    if mixup is not None:
        return SoftTargetCrossEntropy()
    if d.smoothing > 0:
        return LabelSmoothingCrossEntropy(smoothing=d.smoothing)
    return nn.CrossEntropyLoss()
