"""Image datasets, a resumable sampler and the data loader for pretraining.

Reproducibility and resumption: the sampler hands the dataset ``(index, seed)``
pairs, and each sample's augmentation draws from its own seeded generator. A
sample's crops depend only on (run seed, epoch, position), not on the number of
workers, the backend or on where a run was interrupted, so a resumed run sees
exactly the batches an uninterrupted one would.

The datasets hand their transform (``pretrain.transforms``) the image undecoded
(``pretrain.images``): the transform decodes at the scale its crop needs and
returns uint8; its ``device_transform``, which the dataset exposes, finishes
the batch on the device.
"""
from __future__ import annotations

import contextlib
import logging
import math
from pathlib import Path
from typing import Callable, List, Optional, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .errors import DataError, InputNotFound
from .images import DecodedImage, EncodedImage
from .synthetic import render_scene, scene_rng

log = logging.getLogger(__name__)

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
        raise InputNotFound(f"image folder not found: {root}: give an existing folder of images")
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
        raise InputNotFound(
            f"no images in {root}: expected <root>/<class>/*.jpg (ImageNet-style) or images directly "
            f"in the folder, with extensions {', '.join(IMG_EXTENSIONS)}"
        )
    return files, labels, classes


# --------------------------------------------------------------- datasets
@contextlib.contextmanager
def seeded(seed: Optional[int]):
    """torch's generator seeded with ``seed`` inside, the caller's state restored after (None: untouched)."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        # The CPU generator only: torch.manual_seed would also queue a seeding of every CUDA generator
        # (1 ms a call, with a stack trace), which fork_rng(devices=[]) does not restore.
        torch.random.default_generator.manual_seed(seed)
        yield


class SeededSample:
    """Runs a transform under a per-sample seed, leaving the caller's RNG untouched."""

    def __init__(self, transform: Callable):
        self.transform = transform

    def __call__(self, img, seed: Optional[int]):
        with seeded(seed):
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
        self.device_transform = transform.device_transform
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
            raise DataError(
                f"{len(self._bad)} unreadable images in {self.root}, more than the {self.max_bad} allowed "
                f"(1%): replace or remove them"
                + (f" (listed in {self.bad_list})" if self.bad_list else "") + "; e.g. "
                + ", ".join(sorted(self._bad)[:5])
            )

    def __getitem__(self, item):
        index, seed = item if isinstance(item, tuple) else (item, None)
        for offset in range(len(self.files)):
            i = (index + offset) % len(self.files)
            try:
                # The header is read here, the pixels in the transform (at the scale its crop needs).
                return self.transform(EncodedImage.from_file(self.files[i]), seed), self.labels[i]
            except OSError as e:  # UnreadableImage, or the file itself
                self._report_bad(i, e)
        raise DataError(f"no readable image in {self.root}: replace or remove the unreadable files")

    def check_readable(self) -> None:
        """Before a run starts: a DataError when none of the first files decodes, so that a folder of
        unreadable files stops the run here, not in the loader (which stops after ``max_bad`` of them)."""
        failures = []
        for path in self.files[: self.max_bad + 1]:
            try:
                EncodedImage.from_file(path).decode(scale=8)  # a JPEG at 1/8: the whole file read, cheaply
                return
            except OSError as e:  # UnreadableImage, or the file itself
                failures.append(f"{path} ({type(e).__name__}: {e})")
        raise DataError(f"no readable image in {self.root}: the first {len(failures)} of its {len(self.files)} "
                        f"files fail to decode, e.g. {failures[0]}; expected images ({', '.join(IMG_EXTENSIONS)}): "
                        f"replace or remove the unreadable files")


class SyntheticImageDataset(Dataset):
    """The built-in default: ``n`` seeded synthetic scenes (label = class of the first object)."""

    def __init__(self, n: int, transform: Callable, size: int = 224, seed: int = 0):
        self.n, self.size, self.seed = n, size, seed
        self.transform = SeededSample(transform)
        self.device_transform = transform.device_transform
        self.classes = ["synthetic"]

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, item):
        index, seed = item if isinstance(item, tuple) else (item, None)
        scene = render_scene(scene_rng(self.seed, index), (self.size, self.size))
        label = scene.instances[0].category if scene.instances else 0
        return self.transform(DecodedImage(scene.image), seed), label


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


class WithIndex(Dataset):
    """A pretraining dataset whose samples carry their dataset index after the label, ``(sample, label,
    index)``: for a loss that keeps one row per image (MoCo's ``memory_bank``); a substituted unreadable
    image keeps the index that was asked for. Everything else is the wrapped dataset's."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name):  # device_transform, classes, files, ...
        return getattr(self.__dict__["dataset"], name)

    def __getitem__(self, item):  # item: (index, seed) from the sampler, or an index
        return (*self.dataset[item], item[0] if isinstance(item, tuple) else item)


def build_pretrain_dataset(data_cfg, transform: Callable, seed: int = 0, bad_list: Optional[str] = None) -> Dataset:
    """data.path's images, or the synthetic scenes where ``data.synthetic`` says so (the config refuses neither)."""
    if data_cfg.path:
        return ImageFolderDataset(data_cfg.path, transform, bad_list=bad_list)
    if not data_cfg.synthetic:
        raise DataError("data.path is not set: give the dataset, or data.synthetic=true for the synthetic scenes")
    return SyntheticImageDataset(data_cfg.synthetic_images, transform, size=max(64, data_cfg.img_size), seed=seed)


def describe_dataset(dataset) -> str:
    """What a run trains on, for its log."""
    if isinstance(dataset, ImageFolderDataset):
        return f"{len(dataset)} images from {dataset.root.resolve()}"
    return f"{len(dataset)} built-in synthetic scenes (data.synthetic=true), not a real dataset"


def check_full_step(size: int, batch_size: int, accum_iter: int, world_size: int, where) -> None:
    """A DataError unless ``size`` images make one whole optimizer step on every process (the loader drops a
    last partial batch: with fewer, every epoch would be empty)."""
    if math.ceil(size / world_size) < batch_size * accum_iter:
        raise DataError(
            f"{where} has {size} training images, fewer than one step of train.batch_size={batch_size} "
            f"x train.accum_iter={accum_iter} x {world_size} process(es): lower train.batch_size, or add images")


def check_training_data(dataset, batch_size: int, accum_iter: int = 1, world_size: int = 1) -> None:
    """Before a run builds its model or writes a file: a DataError where ``dataset`` cannot train (no
    readable image, fewer images than one step)."""
    if isinstance(dataset, ImageFolderDataset):
        dataset.check_readable()
        where = dataset.root
    else:
        where = "data.synthetic_images"
    check_full_step(len(dataset), batch_size, accum_iter, world_size, where)


def worker_init(_):
    # One intra-op thread per worker: workers are the parallelism.
    torch.set_num_threads(1)


# ---------------------------------------------------------------- loading
BACKENDS = ("pil", "dali")


def resolve_backend(backend: str, dataset, device) -> str:
    """``data.backend``, or ``pil`` where DALI cannot run this (said in the log, with the reason)."""
    if backend not in BACKENDS:
        raise ValueError(f"data.backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "dali":
        from .dali import dali_problem

        problem = dali_problem(dataset, device)
        if problem:
            log.warning("data.backend=dali: %s; falling back to data.backend=pil (decoding on the CPU)", problem)
            return "pil"
    return backend


def build_train_loader(dataset, sampler: ResumableSampler, batch_size: int, num_workers: int, device,
                       seed: int, backend: str = "pil"):
    """Batches of ``dataset`` in ``sampler``'s order, as the transform leaves them (uint8, plus any
    parameters of what runs on the device): ``dataset.device_transform(batch[0], device)`` finishes them.
    ``pil``: decoded on the CPU by the loader workers; ``dali``: decoded and cut on the GPU."""
    if resolve_backend(backend, dataset, device) == "dali":
        from .dali import DaliLoader

        return DaliLoader(dataset, sampler, batch_size, device, num_threads=max(1, num_workers),
                          host_workers=num_workers)
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers, drop_last=True,
        pin_memory=device.type == "cuda", worker_init_fn=worker_init,
        # Its own generator: starting an epoch's iterator must not draw from the global RNG,
        # whose state the checkpoint restores.
        generator=torch.Generator().manual_seed(seed),
    )
