"""Labelled image folders, the protocols' augmentations (timm's), mixup and the loss.

Transforms come from timm's factory, as in the authors' code: RandomResizedCrop +
flip for the linear protocols; for fine-tuning also RandAugment and random erasing;
evaluation resizes to ``img_size / crop_pct`` and centre-crops ``img_size``. They run
on uint8 (``TimmTrainTransform``, ``pretrain.transforms.ResizeCenterCrop``): crops,
flips and RandAugment in the loader; ToTensor + Normalize and random erasing on the
device, in the batch's ``device_transform``. timm's augmentations draw from Python's
and NumPy's global generators, so each sample's transform runs with both seeded from
the per-sample torch seed that ``pretrain.data.ImageFolderDataset`` sets: a resumed
run sees the same crops.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import random
from pathlib import Path
from typing import Callable, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn
from PIL import Image, ImageOps
from timm.data import Mixup, create_transform
from timm.data.auto_augment import RandAugment
from timm.data.random_erasing import RandomErasing
from timm.data.transforms import MaybeToTensor, RandomResizedCropAndInterpolation, interp_mode_to_str
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from torchvision import transforms as T

from pretrain.data import ImageFolderDataset
from pretrain.errors import ConfigError, DataError, InputNotFound
from pretrain.synthetic import CLASSES, render_scene, scene_rng
from pretrain.transforms import (
    IMAGENET_MEAN, IMAGENET_STD, ResizeCenterCrop, SampleTransform, ToFloatNormalized, ViewPlan, shape_only,
)

__all__ = [
    "SeedGlobalRandom", "TimmTrainTransform", "input_normalization", "RandomErasingOnDevice", "train_transform", "eval_transform", "resolve_splits", "build_datasets",
    "write_synthetic_folder", "build_mixup", "build_criterion", "uses_files",
]
log = logging.getLogger(__name__)


class SeedGlobalRandom(SampleTransform):
    """Runs a transform with ``random`` and ``numpy.random`` seeded from torch's generator,
    restoring both afterwards (timm's RandAugment, crops and erasing use them). ``plan`` alone draws
    what the whole transform draws first (the crop and flip), for a GPU decoder."""

    def __init__(self, transform: SampleTransform):
        self.transform = transform

    @property
    def device_transform(self):
        return self.transform.device_transform

    @property
    def host_work(self):
        return self.transform.host_work

    @contextlib.contextmanager
    def global_generators(self):
        seed = int(torch.randint(0, 2**31 - 1, ()).item())
        py_state, np_state = random.getstate(), np.random.get_state()
        random.seed(seed)
        np.random.seed(seed)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)

    def plan(self, hw):
        with self.global_generators():
            return self.transform.plan(hw)

    def assemble(self, views, params):
        if self.host_work is not None:
            raise RuntimeError(f"{self.host_work} draw after the plan: run the whole transform")
        return self.transform.assemble(views, params)

    def __call__(self, img):
        with self.global_generators():
            return self.transform(img)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.transform!r})"


def input_normalization(d, pretrained: Optional[Tuple[Tuple[float, ...], Tuple[float, ...]]] = None
                        ) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """(mean, std) of the inputs: ``data.mean`` / ``data.std`` when set, else ``pretrained`` (the normalisation
    the pretrained backbone was trained with: ``BackboneExport.mean`` / ``std``), else ImageNet's."""
    if d.mean is not None:
        return tuple(map(float, d.mean)), tuple(map(float, d.std))
    if pretrained is not None:
        return tuple(map(float, pretrained[0])), tuple(map(float, pretrained[1]))
    return IMAGENET_MEAN, IMAGENET_STD


def train_transform(d, norm: Optional[Tuple[Tuple[float, ...], Tuple[float, ...]]] = None) -> Callable:
    """The protocol's training augmentation from the data config: timm's factory's, run on uint8 (``norm``:
    the pretrained backbone's normalisation, ``input_normalization``)."""
    mean, std = input_normalization(d, norm)
    tf = create_transform(
        d.img_size, is_training=True, scale=(d.crop_min_scale, 1.0), hflip=0.5, color_jitter=None,
        auto_augment=d.auto_augment or None, interpolation=d.interpolation, re_prob=d.reprob, re_mode=d.remode,
        re_count=d.recount, mean=mean, std=std,
    )
    for t in getattr(tf, "transforms", []):
        if isinstance(t, RandAugment):
            for op in t.ops:
                if op.name.startswith("Posterize"):
                    op.aug_fn = posterize
    return SeedGlobalRandom(TimmTrainTransform(tf))


class TimmTrainTransform(SampleTransform):
    """timm's training pipeline (``create_transform``'s, listed in ``transforms``) on uint8: its crop and
    flip, and RandAugment on the PIL image of the crop, in the loader; ToTensor + Normalize and random
    erasing on the device. Its random numbers are timm's, drawn in its order."""

    RUNS = (RandomResizedCropAndInterpolation, T.RandomHorizontalFlip, RandAugment, MaybeToTensor, T.Normalize,
            RandomErasing)

    def __init__(self, timm_transform):
        self.transforms = list(timm_transform.transforms)
        unknown = [t for t in self.transforms if not isinstance(t, self.RUNS)]
        if unknown:
            raise ValueError(f"no uint8 version of {unknown}: the protocols' transforms are {self.RUNS}")
        crop = self._find(RandomResizedCropAndInterpolation)
        self.size, self.scale, self.ratio = crop.size, crop.scale, crop.ratio
        self.interpolation = interp_mode_to_str(crop.interpolation)
        flip = self._find(T.RandomHorizontalFlip)
        self.flip_p = None if flip is None else flip.p
        self.randaugment = self._find(RandAugment)
        normalize = self._find(T.Normalize)
        erasing = self._find(RandomErasing)
        self.erasing = None if erasing is None else RandomErasingOnDevice(erasing)
        self.device_transform = ErasedNormalized(ToFloatNormalized(tuple(map(float, normalize.mean)),
                                                                   tuple(map(float, normalize.std))), self.erasing)

    def _find(self, kind):
        return next((t for t in self.transforms if isinstance(t, kind)), None)

    @property
    def host_work(self):
        work = [name for name, on in (("RandAugment (PIL)", self.randaugment is not None),
                                      ("random erasing's boxes", self.erasing is not None)) if on]
        return " and ".join(work) or None

    def plan(self, hw):
        box = RandomResizedCropAndInterpolation.get_params(shape_only(*hw), self.scale, self.ratio)
        flip = self.flip_p is not None and bool(torch.rand(1) < self.flip_p)
        return [ViewPlan(box, self.size, self.interpolation, flip)], None

    def assemble(self, views, params):
        x = views[0]
        if self.randaugment is not None:
            pil = Image.fromarray(np.ascontiguousarray(x.permute(1, 2, 0).numpy()))
            x = torch.from_numpy(np.array(self.randaugment(pil))).permute(2, 0, 1)
        if self.erasing is None:
            return x
        return x, self.erasing.draw(x.shape[-2:])


class RandomErasingOnDevice:
    """timm's RandomErasing (of the normalised image) in two halves: the boxes drawn per sample in the loader,
    by timm's rules and draws (Python's generator), with a seed for the fill; the fill on the device
    (``const``: zeros; ``rand``: a normal colour per box; ``pixel``: normal noise per pixel), drawn from a
    generator seeded per sample, so that a sample's erasing depends on its seed only."""

    def __init__(self, erasing: RandomErasing):
        self.erasing = erasing
        self.max_count = erasing.max_count

    def draw(self, hw) -> torch.Tensor:
        """int64 [1 + 4 * max_count]: the fill's seed, then (top, left, height, width) per box (height 0: none)."""
        e, (img_h, img_w) = self.erasing, hw
        boxes = torch.zeros(self.max_count, 4, dtype=torch.int64)
        if random.random() <= e.probability:  # as timm's _erase
            area = img_h * img_w
            count = e.min_count if e.min_count == e.max_count else random.randint(e.min_count, e.max_count)
            for k in range(count):
                for _ in range(10):
                    target_area = random.uniform(e.min_area, e.max_area) * area / count
                    aspect_ratio = math.exp(random.uniform(*e.log_aspect_ratio))
                    h = int(round(math.sqrt(target_area * aspect_ratio)))
                    w = int(round(math.sqrt(target_area / aspect_ratio)))
                    if w < img_w and h < img_h:
                        top, left = random.randint(0, img_h - h), random.randint(0, img_w - w)
                        boxes[k] = torch.tensor([top, left, h, w])
                        break
        seed = torch.randint(0, 2**62, (1,))
        return torch.cat([seed, boxes.flatten()])

    def __call__(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """Erase [N, C, H, W] (normalised, on its device) in place; ``params`` [N, 1 + 4 * max_count] (CPU)."""
        e, gen = self.erasing, torch.Generator(device=x.device)
        for i, row in enumerate(params.tolist()):
            boxes = [row[1 + 4 * k: 5 + 4 * k] for k in range(self.max_count) if row[3 + 4 * k] > 0]
            if boxes:
                gen.manual_seed(row[0])
            for top, left, h, w in boxes:
                if e.per_pixel:
                    fill = torch.randn((x.shape[1], h, w), generator=gen, device=x.device)
                elif e.rand_color:
                    fill = torch.randn((x.shape[1], 1, 1), generator=gen, device=x.device)
                else:
                    fill = torch.zeros((x.shape[1], 1, 1), device=x.device)
                x[i, :, top:top + h, left:left + w] = fill
        return x


class ErasedNormalized:
    """The device half of the protocols' training transform: normalise, then erase (when the recipe erases)."""

    def __init__(self, normalize: ToFloatNormalized, erasing: Optional[RandomErasingOnDevice]):
        self.normalize, self.erasing = normalize, erasing

    def __call__(self, inputs, device):
        if self.erasing is None:
            return self.normalize(inputs, device)
        pixels, params = inputs
        return self.erasing(self.normalize(pixels, device), params)


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


def eval_transform(d, norm: Optional[Tuple[Tuple[float, ...], Tuple[float, ...]]] = None) -> Callable:
    """Resize the short side to floor(img_size / crop_pct), centre-crop img_size (timm's evaluation transform),
    normalised as ``input_normalization``."""
    transform = ResizeCenterCrop(d.img_size, d.crop_pct, d.interpolation)
    transform.device_transform = ToFloatNormalized(*input_normalization(d, norm))
    return transform


# ------------------------------------------------------------------ folders
def uses_files(d) -> bool:
    """Whether the data config names folders (else: the synthetic folder, written under the output folder)."""
    return bool(d.train or d.val or d.path)


def resolve_splits(d, output_dir) -> Tuple[Path, Path]:
    """(train folder, val folder): data.train / data.val, else data.path/{train,val}, else (data.synthetic) the
    synthetic folder, written under output_dir."""
    if d.train or d.val:
        if not (d.train and d.val):
            raise ConfigError("set both data.train and data.val (labelled folders <dir>/<class>/*), or data.path")
        return Path(d.train), Path(d.val)
    if d.path:
        root = Path(d.path)
        train, val = root / "train", root / "val"
        for split in (train, val):
            if not split.is_dir():
                raise InputNotFound(
                    f"{split} not found: data.path must hold train/<class>/* and val/<class>/* (ImageNet layout); "
                    f"or set data.train and data.val"
                )
        return train, val
    if not d.synthetic:
        raise ConfigError("no dataset: set data.path (train/ and val/), or data.train and data.val, "
                          "or data.synthetic=true")
    root = Path(output_dir) / "synthetic_data"
    write_synthetic_folder(root, d.synthetic_per_class, max(64, d.img_size))
    return root / "train", root / "val"


def build_datasets(d, output_dir, eval_only: bool = False, norm: Optional[Tuple[Tuple[float, ...], Tuple[float, ...]]] = None):
    """(train dataset or None, val dataset, class names); train and val must have the same classes; ``norm``:
    the pretrained backbone's input normalisation (``input_normalization``)."""
    train_dir, val_dir = resolve_splits(d, output_dir)
    bad_list = str(Path(output_dir) / "unreadable_images.txt")
    val = ImageFolderDataset(val_dir, eval_transform(d, norm), bad_list=bad_list)
    if not val.classes:
        raise DataError(f"{val_dir} has no class folders: evaluation needs labelled <dir>/<class>/* images")
    if eval_only:
        return None, val, val.classes
    train = ImageFolderDataset(train_dir, train_transform(d, norm), bad_list=bad_list)
    if train.classes != val.classes:
        only_train = sorted(set(train.classes) - set(val.classes))[:5]
        only_val = sorted(set(val.classes) - set(train.classes))[:5]
        raise DataError(f"class folders differ between {train_dir} and {val_dir}: "
                        f"only in train {only_train}, only in val {only_val}; both need the same classes")
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
