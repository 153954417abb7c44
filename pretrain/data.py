"""Image datasets, augmentations and a resumable sampler for pretraining.

Reproducibility and resumption: the sampler hands the dataset ``(index, seed)``
pairs, and each sample's augmentation draws from its own seeded generator. A
sample's crops depend only on (run seed, epoch, position), not on the number of
workers or on where a run was interrupted, so a resumed run sees exactly the
batches an uninterrupted one would.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Callable, List, Optional, Tuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler
from torchvision import transforms as T

from .synthetic import render_scene, scene_rng

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


# ------------------------------------------------------------------ files
def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMG_EXTENSIONS


def scan_image_folder(root) -> Tuple[List[Path], List[int], List[str]]:
    """Files and labels of ``root/<class>/*`` (or ``root/train/<class>/*``), or of a flat folder.

    A flat folder (images directly in ``root``) gets label -1 for every image.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    if (root / "train").is_dir() and not any(_is_image(p) for p in root.iterdir()):
        root = root / "train"
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    files: List[Path] = []
    labels: List[int] = []
    classes: List[str] = []
    for d in class_dirs:
        imgs = sorted(p for p in d.rglob("*") if _is_image(p))
        if imgs:
            labels += [len(classes)] * len(imgs)
            files += imgs
            classes.append(d.name)
    if not files:
        files = sorted(p for p in root.iterdir() if _is_image(p))
        labels = [-1] * len(files)
    if not files:
        raise FileNotFoundError(
            f"no images in {root}: expected <root>/<class>/*.jpg (ImageNet-style) or images directly "
            f"in the folder, with extensions {', '.join(IMG_EXTENSIONS)}"
        )
    return files, labels, classes


def load_rgb(path) -> Image.Image:
    with open(path, "rb") as f:
        img = Image.open(f)
        img.load()  # decode now, so a truncated file fails here and not in a transform
    return img.convert("RGB")


# --------------------------------------------------------------- datasets
class SeededSample:
    """Runs a transform under a per-sample seed, leaving the caller's RNG untouched."""

    def __init__(self, transform: Callable):
        self.transform = transform

    def __call__(self, img, seed: Optional[int]):
        if seed is None:
            return self.transform(img)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.transform(img)


class ImageFolderDataset(Dataset):
    """ImageNet-style or flat folder. Unreadable images are reported and skipped.

    A file that cannot be decoded is logged (and listed in ``bad_list`` if set),
    and the next image takes its place; if ``max_bad_fraction`` of the set turns
    out unreadable the run stops with the list of files, instead of training on
    the rest silently. ``bad_list`` is the record that data-loader workers, which
    each hold a copy of this dataset and are made anew every epoch, share: a file
    is reported once, and the limit counts distinct files over the whole run.
    """

    def __init__(self, root, transform: Callable, bad_list: Optional[str] = None, max_bad_fraction: float = 0.01):
        self.files, self.labels, self.classes = scan_image_folder(root)
        self.root = Path(root)
        self.transform = SeededSample(transform)
        self.bad_list = bad_list
        self.max_bad = max(1, int(max_bad_fraction * len(self.files)))
        self._bad: set = set()  # paths; this process's view when there is no bad_list

    def __len__(self) -> int:
        return len(self.files)

    def _report_bad(self, i: int, err: Exception):
        path = str(self.files[i])
        if self.bad_list and Path(self.bad_list).is_file():
            self._bad |= {line.split("\t", 1)[0] for line in Path(self.bad_list).read_text().splitlines()}
        if path not in self._bad:
            self._bad.add(path)
            log.warning("skipping unreadable image %s: %s: %s", path, type(err).__name__, err)
            if self.bad_list:
                Path(self.bad_list).parent.mkdir(parents=True, exist_ok=True)
                with open(self.bad_list, "a") as f:
                    f.write(f"{path}\t{type(err).__name__}: {err}\n")
        if len(self._bad) > self.max_bad:
            raise RuntimeError(
                f"{len(self._bad)} unreadable images in {self.root} (more than allowed); e.g. "
                + ", ".join(sorted(self._bad)[:5])
            )

    def __getitem__(self, item):
        index, seed = item if isinstance(item, tuple) else (item, None)
        for offset in range(len(self.files)):
            i = (index + offset) % len(self.files)
            try:
                img = load_rgb(self.files[i])
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
                self._report_bad(i, e)
                continue
            return self.transform(img, seed), self.labels[i]
        raise RuntimeError(f"no readable image in {self.root}")


class SyntheticImageDataset(Dataset):
    """The built-in default: ``n`` seeded synthetic scenes (label = class of the first object)."""

    def __init__(self, n: int, transform: Callable, size: int = 224, seed: int = 0):
        self.n, self.size, self.seed = n, size, seed
        self.transform = SeededSample(transform)
        self.classes = ["synthetic"]

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, item):
        index, seed = item if isinstance(item, tuple) else (item, None)
        scene = render_scene(scene_rng(self.seed, index), (self.size, self.size))
        label = scene.instances[0].category if scene.instances else 0
        return self.transform(Image.fromarray(scene.image), seed), label


# -------------------------------------------------------------- sampling
class ResumableSampler(Sampler):
    """Shards a per-epoch permutation over processes; starts mid-epoch on resume.

    Yields ``(index, seed)``. Each process takes every ``world_size``-th index of
    a permutation seeded by (seed, epoch), padded to an equal length, and skips
    the first ``start`` samples of its shard after a mid-epoch resume.
    """

    def __init__(self, size: int, rank: int = 0, world_size: int = 1, shuffle: bool = True, seed: int = 0):
        self.size, self.rank, self.world_size, self.shuffle, self.seed = size, rank, world_size, shuffle, seed
        self.num_per_rank = math.ceil(size / world_size)
        self.epoch, self.start = 0, 0

    def set_position(self, epoch: int, start: int = 0):
        self.epoch, self.start = epoch, start

    def indices(self) -> List[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.size, generator=g).tolist()
        else:
            order = list(range(self.size))
        order += order[: self.num_per_rank * self.world_size - len(order)]
        return order[self.rank :: self.world_size]

    def __iter__(self):
        for pos, idx in enumerate(self.indices()):
            if pos < self.start:
                continue
            # A well-mixed seed per (run, epoch, rank, position): independent streams per sample.
            seed = np.random.SeedSequence([self.seed, self.epoch, self.rank, pos]).generate_state(1, np.uint64)[0]
            yield idx, int(seed)

    def __len__(self) -> int:
        return self.num_per_rank - self.start


# ------------------------------------------------------------- transforms
def normalize() -> T.Normalize:
    return T.Normalize(IMAGENET_MEAN, IMAGENET_STD)


def mae_transform(img_size: int = 224, min_scale: float = 0.2) -> Callable:
    """MAE pretraining: RandomResizedCrop (bicubic) + horizontal flip only."""
    return T.Compose([
        T.RandomResizedCrop(img_size, scale=(min_scale, 1.0), interpolation=T.InterpolationMode.BICUBIC),
        T.RandomHorizontalFlip(),
        T.ToTensor(),
        normalize(),
    ])


def moco_transform(version: str = "v2", img_size: int = 224, min_scale: float = 0.2) -> Callable:
    """One MoCo view. v1: the InstDisc augmentation; v2 ("aug+"): + blur, weaker hue jitter."""
    crop = T.RandomResizedCrop(img_size, scale=(min_scale, 1.0))
    if version == "v1":
        augs = [crop, T.RandomGrayscale(p=0.2), T.ColorJitter(0.4, 0.4, 0.4, 0.4), T.RandomHorizontalFlip()]
    elif version == "v2":
        # Kernel ~10% of the image (23 px at 224), sigma in [0.1, 2] as SimCLR / MoCo v2.
        kernel = max(3, int(0.1 * img_size) // 2 * 2 + 1)
        augs = [
            crop,
            T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
            T.RandomGrayscale(p=0.2),
            T.RandomApply([T.GaussianBlur(kernel, sigma=(0.1, 2.0))], p=0.5),
            T.RandomHorizontalFlip(),
        ]
    else:
        raise ValueError(f"MoCo augmentation must be v1 or v2, got {version!r}")
    return T.Compose(augs + [T.ToTensor(), normalize()])


class TwoCrops:
    """Two independent views of one image: the query and the key."""

    def __init__(self, transform: Callable):
        self.transform = transform

    def __call__(self, img):
        return torch.stack([self.transform(img), self.transform(img)])


def eval_transform(img_size: int = 224, crop_pct: float = 0.875) -> Callable:
    """Resize the short side to img_size / crop_pct, centre crop img_size (bicubic)."""
    return T.Compose([
        T.Resize(int(math.floor(img_size / crop_pct)), interpolation=T.InterpolationMode.BICUBIC),
        T.CenterCrop(img_size),
        T.ToTensor(),
        normalize(),
    ])


def build_pretrain_dataset(data_cfg, transform: Callable, seed: int = 0, bad_list: Optional[str] = None) -> Dataset:
    """data.path's images, or the synthetic scenes where ``data.synthetic`` says so (the config refuses neither)."""
    if data_cfg.path:
        dataset = ImageFolderDataset(data_cfg.path, transform, bad_list=bad_list)
        log.info("data: %d images from %s", len(dataset), Path(data_cfg.path).resolve())
        return dataset
    if not data_cfg.synthetic:
        raise ValueError("data.path is not set: give the dataset, or data.synthetic=true for the synthetic scenes")
    log.info("data: %d built-in synthetic scenes (data.synthetic=true), not a real dataset",
             data_cfg.synthetic_images)
    return SyntheticImageDataset(data_cfg.synthetic_images, transform, size=max(64, data_cfg.img_size), seed=seed)


def worker_init(_):
    # One intra-op thread per worker: workers are the parallelism.
    torch.set_num_threads(1)
