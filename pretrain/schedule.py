"""Learning-rate schedules as functions of the (fractional) epoch, applied every step."""
from __future__ import annotations

import math
from typing import Sequence


def lr_at(
    epoch: float,
    lr: float,
    total_epochs: float,
    schedule: str = "cosine",
    warmup_epochs: float = 0.0,
    min_lr: float = 0.0,
    milestones: Sequence[int] = (),
    gamma: float = 0.1,
) -> float:
    """Linear warm-up from 0, then a half-cycle cosine to ``min_lr`` or steps of ``gamma``.

    ``epoch`` counts from 0 and may be fractional (``epoch + it / iters_per_epoch``),
    as in the MAE code, so the schedule moves every iteration.
    """
    if epoch < warmup_epochs:
        return lr * epoch / warmup_epochs
    if schedule == "cosine":
        progress = (epoch - warmup_epochs) / max(total_epochs - warmup_epochs, 1e-12)
        return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    if schedule == "step":
        return lr * gamma ** sum(epoch >= m for m in milestones)
    raise ValueError(f"unknown schedule {schedule!r}; expected cosine or step")


def set_lr(optimizer, lr: float):
    """Set every group's lr, honouring a per-group ``lr_scale`` (layer-wise decay)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
