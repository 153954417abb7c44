"""The frozen dense probe: DINOv2's "linear" semantic-segmentation evaluation (Oquab et al. 2023, Sec. 7.4).

A linear layer reads the frozen backbone's last-layer patch features (``FrozenBackbone.dense_features``):
``BatchNorm2d`` + 1x1 conv (mmseg's ``BNHead`` as DINOv2 configures it, no dropout), the low-resolution
logits upsampled bilinearly to the label size, cross-entropy over the labelled pixels. Only the head
trains, so the mIoU measures what the features already hold.

Recipe (DINOv2's released ADE20K linear config, scaled by ``iters``): AdamW, lr 1e-3, weight decay 1e-4,
betas (0.9, 0.999); linear warm-up over the first 1500/40000 of the iterations, then linear ("poly",
power 1) decay to 0. Training samples: random rescale by 0.5-2x of the test scale, a random
``crop`` x ``crop`` crop (padded with the mean colour and the ignore label where the image is smaller),
horizontal flip 0.5;
DINOv2's photometric distortion and ``cat_max_ratio`` crops are left out. Test scale: the short side
to ``crop``, the long side at most 4x ``crop`` (mmseg's ADE20K ``Resize(2048, 512)``). Evaluation:
whole-image inference at the test scale (DINOv2 slides 512-px windows; one pass is cheaper and, with
the position table interpolated, close for a linear head), logits resized to the label's original
size, mmseg's ``IoUMetric``: per-class IoU and accuracy over the whole validation set, classes with no
pixel in labels or predictions (IoU) or in labels (accuracy) left out of the means, in percent.

Datasets (images decoded by ``pretrain.images`` and resized on uint8 in the loader, normalised on the
device, as the project's other loaders; labels read with PIL):
* ``ade20k``: ``images/{training,validation}/*.jpg`` + ``annotations/...png``; 150 classes, label 0 =
  unlabelled (ignored), k -> k - 1 (mmseg's ``reduce_zero_label``);
* ``folder``: the ``transfer.segmentation.datasets.SegFolderDataset`` layout (``images/<split>/``,
  ``labels/<split>/`` or no split folders, ``classes.txt``), as ``pretrain.synthetic.
  write_segmentation_dataset`` writes it; label values outside the classes (255, CamVid's void 11)
  are unlabelled.

Runs are seeded (``torch.manual_seed(seed)`` before the backbone's random init and the head's; each
sample's crop from (seed, position)) and resumable exactly: the head, optimizer, step and RNG state
are checkpointed to ``<out>/probe_last.pth`` at every evaluation, on a stop request and at the end.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

from pretrain.checkpoint import load_file, save_atomic
from pretrain.data import worker_init
from pretrain.errors import ConfigError, DataError, InputNotFound
from pretrain.images import EncodedImage, resize_uint8
from pretrain.logger import MetricLogger
from pretrain.trainer import rng_state, set_rng_state
from pretrain.transforms import ToFloatNormalized
from transfer.backbone import FrozenBackbone, load_frozen_backbone
from transfer.results import RESULTS_FILE, read_results, write_results

__all__ = [
    "IGNORE", "TASKS", "SegSplit", "load_split", "TrainCrops", "ValImages", "ProbeBatches", "LinearSegHead",
    "segment", "seg_loss", "probe_lr", "confusion_matrix", "seg_metrics", "evaluate", "ProbeConfig",
    "DenseProbe",
]
log = logging.getLogger(__name__)

IGNORE = 255  # label of unlabelled pixels
TASKS = {"ade20k": "ade20k_dense_probe", "folder": "dense_probe"}  # transfer.results task per dataset
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
SCALE_RANGE = (0.5, 2.0)  # training rescale, relative to the test scale
MAX_ASPECT = 4  # the long side is at most this times the short one's target (mmseg's 2048 x 512)
WEIGHT_DECAY = 1e-4
CHECKPOINT = "probe_last.pth"


# ------------------------------------------------------------------ data
@dataclass
class SegSplit:
    """Image and label files of one split, and how its label values read."""

    images: List[Path]
    labels: List[Path]
    num_classes: int
    reduce_zero_label: bool  # ADE20K: 0 is unlabelled, k is class k - 1

    def __len__(self) -> int:
        return len(self.images)

    def image(self, i: int) -> torch.Tensor:
        """uint8 [3, H, W], decoded as the project's loaders do (``pretrain.images``)."""
        return torch.from_numpy(EncodedImage.from_file(self.images[i]).decode().array).permute(2, 0, 1)

    def label(self, i: int) -> torch.Tensor:
        """uint8 [H, W] class indices, IGNORE where unlabelled."""
        with Image.open(self.labels[i]) as img:
            raw = np.asarray(img)
        if raw.ndim != 2:
            raise DataError(f"{self.labels[i]}: a label PNG must have one channel (class indices), found shape "
                             f"{raw.shape}")
        label = raw.astype(np.int64) - int(self.reduce_zero_label)
        label[(label < 0) | (label >= self.num_classes)] = IGNORE
        return torch.from_numpy(label.astype(np.uint8))


def _pairs(img_dir: Path, label_dir: Path) -> Tuple[List[Path], List[Path]]:
    if not img_dir.is_dir():
        raise InputNotFound(f"image folder not found: {img_dir}")
    images = sorted(p for p in img_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {img_dir}")
    labels = [label_dir / f"{p.stem}.png" for p in images]
    missing = [p.name for p in labels if not p.is_file()]
    if missing:
        raise DataError(f"{len(missing)} of {len(images)} images in {img_dir} have no label "
                                f"{label_dir}/<name>.png (first: {missing[:3]})")
    return images, labels


def read_class_names(classes: Optional[str], root: Path) -> List[str]:
    """Class names from a file (one a line), a comma-separated list, or ``<root>/classes.txt``."""
    if classes and not Path(classes).is_file():
        names = [c.strip() for c in classes.split(",") if c.strip()]
    else:
        path = Path(classes) if classes else root / "classes.txt"
        if not path.is_file():
            raise InputNotFound(f"class list {path} not found: a folder dataset needs classes.txt (one class "
                                    f"name a line, label value = line number - 1) or --classes FILE|a,b,c")
        names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not 0 < len(names) < IGNORE:
        raise ConfigError(f"expected 1 to {IGNORE - 1} class names, found {len(names)} ({classes or root})")
    return names


def load_split(dataset: str, root, train: bool, classes: Optional[str] = None) -> SegSplit:
    """The training or validation split of an ``ade20k`` or ``folder`` dataset (module docstring)."""
    root = Path(root)
    if not root.is_dir():
        raise InputNotFound(f"dataset root not found: {root}")
    if dataset == "ade20k":
        split = "training" if train else "validation"
        if not (root / "images" / split).is_dir():
            raise InputNotFound(f"{root} is not an ADE20K root: expected images/{split} and annotations/{split} "
                                    f"(the ADEChallengeData2016 folder); for images/ + labels/ use --dataset folder")
        return SegSplit(*_pairs(root / "images" / split, root / "annotations" / split), 150, True)
    if dataset == "folder":
        split = "train" if train else "val"
        sub = (split,) if (root / "images" / split).is_dir() else ()  # no split folders: one set serves both
        images, labels = _pairs(root.joinpath("images", *sub), root.joinpath("labels", *sub))
        return SegSplit(images, labels, len(read_class_names(classes, root)), False)
    raise ConfigError(f"unknown dataset {dataset!r}; expected ade20k or folder")


def rescaled_size(h: int, w: int, short: float) -> Tuple[int, int]:
    """(h, w) rescaled, keeping the aspect, so the short side is ``short`` and the long at most 4x that."""
    f = min(short / min(h, w), MAX_ASPECT * short / max(h, w))
    return max(1, round(h * f)), max(1, round(w * f))


def _resize(img: torch.Tensor, label: torch.Tensor, size: Tuple[int, int]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Image bilinear (antialiased, as PIL), label nearest."""
    return resize_uint8(img, size, "bilinear"), F.interpolate(label[None, None], size=size, mode="nearest-exact")[0, 0]


class TrainCrops(Dataset):
    """Training samples, uint8: random rescale, ``crop`` x ``crop`` crop (padded with the mean colour and
    IGNORE labels where the image is smaller), horizontal flip; indexed by ``(image, seed)``, the seed
    drawing every random choice."""

    def __init__(self, split: SegSplit, crop: int, mean):
        self.split, self.crop = split, crop
        self.fill = torch.tensor([round(255 * m) for m in mean], dtype=torch.uint8).view(3, 1, 1)  # ~0 normalised

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, item: Tuple[int, int]):
        index, seed = item
        rng = np.random.default_rng(seed)
        img, label = self.split.image(index), self.split.label(index)
        h, w = rescaled_size(*img.shape[-2:], self.crop * rng.uniform(*SCALE_RANGE))
        img, label = _resize(img, label, (h, w))
        c = self.crop
        top, left = int(rng.integers(max(h - c, 0) + 1)), int(rng.integers(max(w - c, 0) + 1))
        img, label = img[:, top:top + c, left:left + c], label[top:top + c, left:left + c]
        if rng.random() < 0.5:
            img, label = img.flip(-1), label.flip(-1)
        h, w = label.shape
        x, y = self.fill.expand(3, c, c).clone(), torch.full((c, c), IGNORE, dtype=torch.uint8)
        x[:, :h, :w], y[:h, :w] = img, label
        return x, y


class ValImages(Dataset):
    """Validation images at the test scale (uint8), with their labels at the original size."""

    def __init__(self, split: SegSplit, crop: int):
        self.split, self.crop = split, crop

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int):
        img = self.split.image(index)
        return resize_uint8(img, rescaled_size(*img.shape[-2:], self.crop), "bilinear"), self.split.label(index)


class ProbeBatches(Sampler):
    """Batches of ``(image, sample seed)`` for steps ``start`` .. ``iters - 1``.

    Sample position p = step * batch + i reads image ``perm(seed, p // n)[p % n]`` (a fresh
    permutation each pass over the n images) with augmentation seed f(seed, p): the batches depend on
    the position only, so a resumed run draws exactly those of an uninterrupted one.
    """

    def __init__(self, num_images: int, batch: int, iters: int, seed: int, start: int = 0):
        self.n, self.batch, self.iters, self.seed, self.start = num_images, batch, iters, seed, start

    def _order(self, epoch: int) -> List[int]:
        return torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)).tolist()

    def __iter__(self) -> Iterator[List[Tuple[int, int]]]:
        epoch, order = -1, []
        for step in range(self.start, self.iters):
            batch = []
            for p in range(step * self.batch, (step + 1) * self.batch):
                if p // self.n != epoch:
                    epoch = p // self.n
                    order = self._order(epoch)
                seed = np.random.SeedSequence([self.seed, p]).generate_state(1, np.uint64)[0]
                batch.append((order[p % self.n], int(seed)))
            yield batch

    def __len__(self) -> int:
        return self.iters - self.start


# ------------------------------------------------------------------ model
class LinearSegHead(nn.Module):
    """BatchNorm2d + 1x1 conv over frozen features -> per-location class logits."""

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(in_channels)
        self.conv = nn.Conv2d(in_channels, num_classes, 1)
        nn.init.normal_(self.conv.weight, std=0.01)  # mmseg's decode-head init
        nn.init.zeros_(self.conv.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.conv(self.bn(features))


def segment(backbone: FrozenBackbone, head: LinearSegHead, images: torch.Tensor) -> torch.Tensor:
    """Logits [B, K, H, W] at the images' size: the images padded (bottom / right, zeros = the mean colour) to
    a multiple of the backbone's stride, the low-resolution logits upsampled bilinearly, the padding cut off."""
    h, w = images.shape[-2:]
    s = backbone.stride
    padded = F.pad(images, (0, -w % s, 0, -h % s))
    logits = head(backbone.dense_features(padded))
    logits = F.interpolate(logits, size=padded.shape[-2:], mode="bilinear", align_corners=False)
    return logits[..., :h, :w]


def seg_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy averaged over the labelled pixels (0 for a batch without any)."""
    total = F.cross_entropy(logits, labels, ignore_index=IGNORE, reduction="sum")
    return total / (labels != IGNORE).sum().clamp(min=1)


def probe_lr(step: int, iters: int, lr: float) -> float:
    """DINOv2's schedule at ``step`` (from 0): linear warm-up over the first 1500/40000 of the run, then
    linear decay to 0."""
    warmup = iters * 1500 // 40000
    return lr * (1 - step / iters) * min(1.0, (step + 1) / (warmup + 1))


# ------------------------------------------------------------------ metrics
def confusion_matrix(pred: torch.Tensor, label: torch.Tensor, num_classes: int) -> torch.Tensor:
    """[K, K] pixel counts (row: label, column: prediction) over the labelled pixels."""
    valid = label != IGNORE
    index = label[valid] * num_classes + pred[valid]
    return torch.bincount(index, minlength=num_classes**2).reshape(num_classes, num_classes)


def seg_metrics(confusion: torch.Tensor) -> Dict[str, float]:
    """mIoU, mAcc, aAcc (%) as mmseg's IoUMetric: means over the classes whose IoU (union > 0) or
    accuracy (labelled pixels > 0) is defined."""
    c = confusion.double()
    intersect, label_area, pred_area = c.diag(), c.sum(1), c.sum(0)
    if label_area.sum() == 0:
        raise DataError("the validation labels hold no labelled pixel: no metric is defined")
    iou = intersect / (label_area + pred_area - intersect)  # nan where a class is in neither
    acc = intersect / label_area  # nan where a class is not in the labels
    return {"mIoU": 100 * iou.nanmean().item(), "mAcc": 100 * acc.nanmean().item(),
            "aAcc": 100 * (intersect.sum() / label_area.sum()).item()}


@torch.no_grad()
def evaluate(backbone: FrozenBackbone, head: LinearSegHead, loader, num_classes: int, device) -> Dict[str, float]:
    """Whole-image inference over ``loader`` (``ValImages``, batch 1), metrics at the labels' size."""
    was_training = head.training
    head.eval()
    to_input = ToFloatNormalized(backbone.mean, backbone.std)
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long, device=device)
    for image, label in loader:
        logits = segment(backbone, head, to_input(image, device))
        label = label.to(device).long()
        logits = F.interpolate(logits, size=label.shape[-2:], mode="bilinear", align_corners=False)
        confusion += confusion_matrix(logits.argmax(1), label, num_classes)
    head.train(was_training)
    return seg_metrics(confusion)


# ------------------------------------------------------------------ runs
@dataclass
class ProbeConfig:
    data_root: str
    out: str
    checkpoint: Optional[str] = None  # pretrained backbone; None: random init of random_init
    random_init: Optional[str] = None  # architecture to initialise at random (seeded by seed)
    dataset: str = "ade20k"  # ade20k | folder
    classes: Optional[str] = None  # folder: class list file or "a,b,c" (default <data_root>/classes.txt)
    iters: int = 2000
    batch: int = 8
    crop: int = 512
    lr: float = 1e-3
    seed: int = 0
    eval_every: int = 500  # evaluate and checkpoint every this many steps (0: at the end only)
    num_workers: int = 2
    pretrain: Optional[str] = None  # results label (default: what the checkpoint says, "random" without one)
    allow_pickle: bool = False
    variant: Optional[str] = None  # which network of a checkpoint that holds several (read_backbone's)
    device: str = "auto"  # auto: cuda when available
    stop_after: Optional[int] = None  # stop after this many steps with a checkpoint (the schedule spans iters)
    precision: str = "auto"  # the frozen backbone's forward: auto | bf16 | fp32 (FrozenBackbone.set_precision)
    compile: bool = False  # torch.compile the frozen backbone's forward (FrozenBackbone.set_compile)

    # What a resumed run, or a finished one reported again, must share with the run that wrote the folder.
    RUN_KEYS = ("data_root", "checkpoint", "random_init", "dataset", "classes", "iters", "batch", "crop", "lr", "seed")

    def settings(self) -> Dict:
        s = {k: getattr(self, k) for k in self.RUN_KEYS}
        for k in ("data_root", "checkpoint"):
            s[k] = str(Path(s[k]).resolve()) if s[k] else None
        return s


def _differences(saved: Dict, wanted: Dict) -> List[str]:
    return [f"{k}: {saved.get(k)!r} there, {v!r} now" for k, v in wanted.items() if saved.get(k) != v]


def _truncate_log(path: Path, step: int):
    """Drop the records after ``step`` (logged by an interrupted run after its last checkpoint)."""
    if path.is_file():
        lines = path.read_text().splitlines(keepends=True)
        path.write_text("".join(line for line in lines if json.loads(line)["step"] <= step))


class DenseProbe:
    """One probe run in ``cfg.out``: ``run()`` trains (or resumes), evaluates and writes results.json;
    a folder that holds a finished run with the same settings is reported without training again."""

    def __init__(self, cfg: ProbeConfig, resume: bool = False, fresh: bool = False):
        if (cfg.checkpoint is None) == (cfg.random_init is None):
            raise ConfigError("give either a pretrained checkpoint or an architecture to initialise at random")
        if cfg.iters < 1 or cfg.batch < 1 or cfg.crop < 1:
            raise ConfigError(f"iters, batch and crop must be positive (got {cfg.iters}, {cfg.batch}, {cfg.crop})")
        self.cfg, self.resume, self.fresh, self.out = cfg, resume, fresh, Path(cfg.out)
        self.ckpt_path, self.results_path = self.out / CHECKPOINT, self.out / RESULTS_FILE
        self._stop_requested = False
        self._checked = False

    def request_stop(self, *_):
        """Stop after the current step with a checkpoint (SIGTERM / SIGINT handler)."""
        self._stop_requested = True

    def finished(self) -> Optional[Dict]:
        """The results of a finished run of these settings in the folder, or None."""
        if not self.results_path.is_file():
            return None
        record = read_results(self.results_path)
        diffs = _differences(record.get("settings") or {}, self.cfg.settings())
        if diffs:
            raise ConfigError(f"{self.out} holds a finished run with other settings ({'; '.join(diffs)}): "
                              f"--fresh replaces it, or choose another output folder")
        return record

    def check(self) -> None:
        """Read what the run needs, before it writes anything (tools/dense_probe.py sets up its log file
        after this): what the output folder holds, then the dataset's two splits, then the backbone (a
        checkpoint that is missing or not one fails here). ``run()`` calls it if the caller has not."""
        if self._checked:
            return
        cfg = self.cfg
        self.done = None if self.fresh else self.finished()  # --fresh: what the folder holds goes
        self.saved = None
        if self.done is None:
            if self.ckpt_path.is_file() and not self.fresh:
                self.saved = load_file(self.ckpt_path)
            if self.saved is not None and not self.resume:
                raise ConfigError(f"{self.out} holds an unfinished run (step {self.saved['step']} of "
                                  f"{self.saved['settings']['iters']}): --resume continues it, --fresh starts over")
            if self.saved is not None:
                diffs = _differences(self.saved["settings"], self.cfg.settings())
                if diffs:
                    raise ConfigError(f"cannot resume {self.ckpt_path}, its settings differ ({'; '.join(diffs)}); "
                                      f"--fresh starts over")
            self.splits = tuple(load_split(cfg.dataset, cfg.data_root, t, cfg.classes) for t in (True, False))
            if cfg.checkpoint is not None and not Path(cfg.checkpoint).is_file():
                raise InputNotFound(f"checkpoint not found: {cfg.checkpoint}")
            self.device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto"
                                       else cfg.device)
            torch.manual_seed(cfg.seed)  # the backbone's random init, then the head's (in _setup)
            self.backbone = load_frozen_backbone(cfg.checkpoint, cfg.random_init, cfg.allow_pickle,
                                                 cfg.variant).to(self.device)
        self._checked = True

    def run(self) -> Optional[Dict]:
        """The results record; None when stopped early (a checkpoint to --resume is left)."""
        self.check()
        if self.fresh:
            for name in (CHECKPOINT, RESULTS_FILE, "metrics.jsonl"):
                (self.out / name).unlink(missing_ok=True)
        if self.done is not None:
            log.info("%s holds this run, finished: %s", self.out, _summary(self.done["metrics"]))
            return self.done
        self._setup(self.saved)
        return self._train()

    # ---------------------------------------------------------------- set-up
    def _setup(self, saved: Optional[Dict]):
        cfg = self.cfg
        train, val = self.splits
        self.num_classes, self.train_images, self.val_images = train.num_classes, len(train), len(val)
        if self.backbone.report is not None:
            log.info("pretrained weights (%s):\n%s", self.backbone.pretrain, self.backbone.report.format())
        self.precision = self.backbone.set_precision(cfg.precision, self.device)  # the head trains in fp32
        self.backbone.set_compile(cfg.compile)
        self.pretrain = cfg.pretrain or self.backbone.pretrain
        self.to_input = ToFloatNormalized(self.backbone.mean, self.backbone.std)  # uint8 -> the backbone's input
        self.train_set = TrainCrops(train, cfg.crop, self.backbone.mean)
        self.val_loader = DataLoader(ValImages(val, cfg.crop), batch_size=1,
                                     num_workers=cfg.num_workers, worker_init_fn=worker_init)
        self.head = LinearSegHead(self.backbone.embed_dim, self.num_classes).to(self.device)
        self.optimizer = torch.optim.AdamW(self.head.parameters(), lr=cfg.lr, betas=(0.9, 0.999),
                                           weight_decay=WEIGHT_DECAY)
        self.step, self.last_eval = 0, {}
        if saved is not None:
            self.head.load_state_dict(saved["head"])
            self.optimizer.load_state_dict(saved["optimizer"])
            self.step, self.last_eval = saved["step"], saved["last_eval"]
            set_rng_state(saved["rng"])
            log.info("resumed %s at step %d of %d", self.ckpt_path, self.step, cfg.iters)
        _truncate_log(self.out / "metrics.jsonl", self.step)  # what a run interrupted after this point logged
        self.out.mkdir(parents=True, exist_ok=True)
        self.metrics = MetricLogger(str(self.out), tensorboard=False)
        log.info("dense probe: %s (%s) on %s (%s, %d classes): %d train / %d val images, %d iterations of %d "
                 "crops of %d px, device %s, backbone in %s", self.backbone.name, self.pretrain, cfg.data_root,
                 cfg.dataset, self.num_classes, self.train_images, self.val_images, cfg.iters, cfg.batch, cfg.crop,
                 self.device, self.precision)

    # ---------------------------------------------------------------- loop
    def _train(self) -> Optional[Dict]:
        cfg = self.cfg
        loader = DataLoader(self.train_set, batch_sampler=ProbeBatches(len(self.train_set), cfg.batch, cfg.iters,
                                                                       cfg.seed, start=self.step),
                            num_workers=cfg.num_workers, worker_init_fn=worker_init,
                            pin_memory=self.device.type == "cuda")
        self.head.train()
        try:
            for images, labels in loader:
                lr = probe_lr(self.step, cfg.iters, cfg.lr)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                logits = segment(self.backbone, self.head, self.to_input(images, self.device))
                loss = seg_loss(logits, labels.to(self.device, non_blocking=True).long())
                if not math.isfinite(loss.item()):
                    raise FloatingPointError(f"loss is {loss.item()} at step {self.step}")
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                self.step += 1
                self.metrics.log(self.step, loss=loss.item(), lr=lr)
                evaluate_now = self.step == cfg.iters or (cfg.eval_every and self.step % cfg.eval_every == 0)
                stop = self.step < cfg.iters and (self._stop_requested or self.step == cfg.stop_after)
                if evaluate_now:
                    self.last_eval = {"step": self.step, **self._evaluate()}
                if evaluate_now or stop:
                    self._save()
                if stop:
                    log.info("stopped at step %d of %d: %s (--resume continues)", self.step, cfg.iters,
                             self.ckpt_path)
                    return None
        finally:
            self.metrics.close()
        return self._write_results()

    def _evaluate(self) -> Dict[str, float]:
        metrics = evaluate(self.backbone, self.head, self.val_loader, self.num_classes, self.device)
        self.metrics.log(self.step, prefix="val", **metrics)
        log.info("step %d/%d: %s", self.step, self.cfg.iters, _summary(metrics))
        return metrics

    def _save(self):
        save_atomic({"head": self.head.state_dict(), "optimizer": self.optimizer.state_dict(), "step": self.step,
                     "rng": rng_state(), "settings": self.cfg.settings(), "last_eval": self.last_eval},
                    self.ckpt_path)

    # ---------------------------------------------------------------- results
    def recipe(self) -> Dict:
        cfg = self.cfg
        r = {"iterations": cfg.iters, "batch": cfg.batch, "crop_size": cfg.crop, "lr": cfg.lr, "probe": "bn+linear",
             "seed": cfg.seed, "optimizer": "adamw", "weight_decay": WEIGHT_DECAY,
             "schedule": f"{cfg.iters} iters, AdamW lr {cfg.lr:g} wd {WEIGHT_DECAY:g}, linear warm-up and decay",
             "test_mode": "whole", "train_images": self.train_images, "val_images": self.val_images,
             "precision": self.precision, "compile": cfg.compile}
        if self.backbone.pretrain_epochs:
            r["pretrain_epochs"] = self.backbone.pretrain_epochs
        if cfg.variant:
            r["variant"] = cfg.variant  # which network of the checkpoint
        return r

    def _write_results(self) -> Dict:
        cfg, metrics = self.cfg, {k: v for k, v in self.last_eval.items() if k != "step"}
        path = write_results(
            self.out, task=TASKS[cfg.dataset], backbone=self.backbone.name, pretrain=self.pretrain, metrics=metrics,
            recipe=self.recipe(), checkpoint=cfg.checkpoint, tool="tools/dense_probe.py", seed=cfg.seed,
            dataset=cfg.dataset, data_root=str(Path(cfg.data_root).resolve()), num_classes=self.num_classes,
            settings=cfg.settings(), probe_checkpoint=str(self.ckpt_path))
        log.info("%s  ->  %s", _summary(metrics), path)
        return read_results(path)


def _summary(metrics: Dict[str, float]) -> str:
    return "  ".join(f"{k} {metrics[k]:.2f}" for k in ("mIoU", "mAcc", "aAcc"))
