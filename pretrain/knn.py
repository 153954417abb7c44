"""Weighted k-NN monitor (Wu et al. 2018, as used to track MoCo / DINO runs).

Frozen features, L2-normalised; each test sample votes with its k most similar
training samples, weighted by exp(similarity / T). Cheap enough to run every few
epochs, and needs no training. Under several processes each extracts and scores a
share of the images (features and votes stay on the device); every process returns
the whole set's accuracy, equal to a single process's.
"""
from __future__ import annotations

from typing import Callable, Dict, Tuple

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset

from . import distributed as du
from .data import ImageFolderDataset
from .errors import DataError
from .transforms import IMAGENET_MEAN, IMAGENET_STD, ToFloatNormalized, eval_transform


@torch.no_grad()
def extract_features(feature_fn: Callable, dataset, device, batch_size: int = 64,
                     num_workers: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """L2-normalised features and labels, on ``device``, of this process's share of ``dataset``:
    every world_size-th image from its rank (each image once, no padding)."""
    share = Subset(dataset, range(du.get_rank(), len(dataset), du.get_world_size()))
    feats, labels = [], []
    for imgs, y in DataLoader(share, batch_size=batch_size, num_workers=num_workers):
        imgs = dataset.device_transform(imgs, device)
        feats.append(F.normalize(feature_fn(imgs).float(), dim=1))
        labels.append(torch.as_tensor(y).to(device))
    return torch.cat(feats), torch.cat(labels)


def gather_shares(x: torch.Tensor) -> torch.Tensor:
    """Every process's share (``extract_features``) of the rows of ``x``, back in dataset order."""
    shares = du.all_gather_rows(x)
    if len(shares) == 1:
        return x
    out = x.new_empty((sum(len(s) for s in shares), *x.shape[1:]))
    for rank, share in enumerate(shares):
        out[rank::len(shares)] = share
    return out


@torch.no_grad()
def knn_scores(
    test_feats: torch.Tensor,
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.07,
    chunk: int = 1024,
) -> torch.Tensor:
    """Class scores [N_test, C]: sum over the k nearest of exp(cos / T) per class."""
    k = min(k, train_feats.shape[0])
    out = []
    for start in range(0, test_feats.shape[0], chunk):
        sim = test_feats[start : start + chunk] @ train_feats.T
        top_sim, top_idx = sim.topk(k, dim=1)
        # Each neighbour adds exp(sim / T) to its class: a scatter, not an [n, k, C] one-hot.
        scores = torch.zeros(top_idx.shape[0], num_classes, device=top_sim.device, dtype=top_sim.dtype)
        out.append(scores.scatter_add_(1, train_labels[top_idx], (top_sim / temperature).exp()))
    return torch.cat(out)


def topk_hits(scores: torch.Tensor, labels: torch.Tensor, ks) -> torch.Tensor:
    """For each k, how many samples have their label among their k highest scores."""
    top = scores.topk(max(ks), dim=1).indices == labels[:, None]
    return torch.stack([top[:, :k].any(dim=1).sum() for k in ks])


def labelled_folders(train_dir, val_dir, img_size: int = 224, mean=IMAGENET_MEAN, std=IMAGENET_STD
                     ) -> Tuple[ImageFolderDataset, ImageFolderDataset]:
    """The kNN's training and validation sets (resized and centre-cropped to ``img_size``, normalised with
    ``mean`` / ``std``: the backbone's), checked: labelled folders (``<dir>/<class>/*``) with the same classes,
    each with a readable image (else a DataError)."""
    tf = eval_transform(img_size)
    tf.device_transform = ToFloatNormalized(mean, std)
    train, val = ImageFolderDataset(train_dir, tf), ImageFolderDataset(val_dir, tf)
    if not train.classes:
        raise DataError(f"{train_dir} has no class folders: the kNN needs labelled <dir>/<class>/* images")
    if train.classes != val.classes:
        only_train = sorted(set(train.classes) - set(val.classes))[:5]
        only_val = sorted(set(val.classes) - set(train.classes))[:5]
        raise DataError(f"class folders differ between {train_dir} and {val_dir}: only in train {only_train}, "
                        f"only in val {only_val}; both need the same classes")
    train.check_readable()
    val.check_readable()
    return train, val


def knn_evaluate(
    feature_fn: Callable,
    train_dir: str,
    val_dir: str,
    img_size: int = 224,
    batch_size: int = 64,
    device="cpu",
    k: int = 200,
    temperature: float = 0.07,
    num_workers: int = 0,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
) -> Dict[str, float]:
    """Top-1 / top-5 (%) of the weighted k-NN classifier from ``train_dir`` to ``val_dir`` (top-5 with at
    least 5 classes), the images normalised with ``mean`` / ``std`` (the backbone's input normalisation). Every
    process of a process group takes part and gets the result."""
    train, val = labelled_folders(train_dir, val_dir, img_size, mean, std)
    if min(len(train), len(val)) < du.get_world_size():
        raise DataError(f"the kNN monitor needs at least one train and one val image per process "
                        f"({len(train)} / {len(val)} for {du.get_world_size()}): add images, or run fewer processes")
    extract = lambda ds: extract_features(feature_fn, ds, device, batch_size, num_workers)  # noqa: E731
    train_f, train_y = extract(train)
    train_f, train_y = gather_shares(train_f), gather_shares(train_y)  # every process votes from all of them
    val_f, val_y = extract(val)  # each process scores its share: the hit counts add up
    ks = [k for k in (1, 5) if k <= len(train.classes)]
    hits = topk_hits(knn_scores(val_f, train_f, train_y, len(train.classes), k, temperature), val_y, ks)
    hits = du.all_reduce_sum(torch.cat([hits, hits.new_tensor([len(val_y)])])).tolist()
    return {f"top{k}": 100.0 * h / hits[-1] for k, h in zip(ks, hits)}
