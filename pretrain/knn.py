"""Weighted k-NN monitor (Wu et al. 2018, as used to track MoCo / DINO runs).

Frozen features, L2-normalised; each test sample votes with its k most similar
training samples, weighted by exp(similarity / T). Cheap enough to run every few
epochs, and needs no training.
"""
from __future__ import annotations

from typing import Callable, Dict, Tuple

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from .data import ImageFolderDataset
from .transforms import eval_transform


@torch.no_grad()
def extract_features(feature_fn: Callable, loader, device) -> Tuple[torch.Tensor, torch.Tensor]:
    feats, labels = [], []
    for imgs, y in loader:
        imgs = loader.dataset.device_transform(imgs, device)
        feats.append(F.normalize(feature_fn(imgs).float(), dim=1).cpu())
        labels.append(torch.as_tensor(y))
    return torch.cat(feats), torch.cat(labels)


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


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor, ks=(1, 5)) -> Dict[str, float]:
    res = {}
    for k in ks:
        if k <= scores.shape[1]:
            pred = scores.topk(k, dim=1).indices
            res[f"top{k}"] = 100.0 * (pred == labels[:, None]).any(dim=1).float().mean().item()
    return res


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
) -> Dict[str, float]:
    """Top-1 / top-5 (%) of the weighted k-NN classifier from ``train_dir`` to ``val_dir``."""
    tf = eval_transform(img_size)
    train, val = ImageFolderDataset(train_dir, tf), ImageFolderDataset(val_dir, tf)
    if train.classes != val.classes:
        raise ValueError(f"class folders differ between {train_dir} and {val_dir}")
    if not train.classes:
        raise ValueError(f"{train_dir} has no class folders: the kNN monitor needs <dir>/<class>/* images")
    loader = lambda ds: DataLoader(ds, batch_size=batch_size, num_workers=num_workers)  # noqa: E731
    train_f, train_y = extract_features(feature_fn, loader(train), device)
    val_f, val_y = extract_features(feature_fn, loader(val), device)
    scores = knn_scores(val_f, train_f, train_y, len(train.classes), k, temperature)
    return topk_accuracy(scores, val_y)
