"""detectron2's reference-world-size rule, for a recipe run on another number of GPUs than its own.

detectron2's ``DefaultTrainer.auto_scale_workers`` (``SOLVER.REFERENCE_WORLD_SIZE``): with
``scale = world size / reference``, the total batch and the base learning rate are multiplied by ``scale``;
the iterations, the lr steps, the warm-up and the evaluation and checkpoint periods divided by it, so that
the run sees as many epochs, at the same learning rate per image (the linear scaling rule). yacs configs go
through detectron2's own function. LazyConfigs, for which detectron2 has none, get the same rule on their
keys (``dataloader.train.total_batch_size``, ``optimizer.lr``, ``train.max_iter``, ``train.eval_period``,
``train.checkpointer.period``); their lr schedule (``lr_multiplier``, a ``ParamScheduler``) is evaluated at
the fraction of ``train.max_iter`` done, so its milestones and warm-up follow the iterations.

``tools/train_net.py --reference-world-size N`` applies it; the evaluation ladder passes the recipe's GPUs
when it runs a detection rung on fewer (``transfer.ladder.job_launch``).
"""
from __future__ import annotations

from typing import Optional

from pretrain.errors import ConfigError

__all__ = ["scale_to_world_size"]


def scale_to_world_size(recipe, reference: int, world_size: int) -> Optional[str]:
    """Scale ``recipe`` (a ``transfer.detection.engine.Recipe``), written for ``reference`` GPUs, to ``world_size``
    in place; returns what changed in words, or None when there is nothing to scale (``reference`` 0 or equal)."""
    if reference <= 0 or reference == world_size:
        return None
    scale = world_size / reference
    if recipe.lazy:
        c = recipe.cfg
        batch = c.dataloader.train.total_batch_size
        if batch % reference:
            raise ConfigError(f"{recipe.path}: the batch {batch} is not a multiple of the reference world size "
                              f"{reference}: give --reference-world-size a divisor of it (the recipe's GPUs)")
        before = (batch, c.optimizer.lr, c.train.max_iter)
        c.dataloader.train.total_batch_size = int(round(batch * scale))
        c.optimizer.lr = c.optimizer.lr * scale
        c.train.max_iter = int(round(c.train.max_iter / scale))
        c.train.eval_period = int(round(c.train.eval_period / scale))
        c.train.checkpointer.period = int(round(c.train.checkpointer.period / scale))
        after = (c.dataloader.train.total_batch_size, c.optimizer.lr, c.train.max_iter)
    else:
        from detectron2.engine import DefaultTrainer

        cfg = recipe.cfg.clone()
        cfg.defrost()
        cfg.SOLVER.REFERENCE_WORLD_SIZE = reference
        s = cfg.SOLVER
        before = (s.IMS_PER_BATCH, s.BASE_LR, s.MAX_ITER)
        recipe.cfg = DefaultTrainer.auto_scale_workers(cfg, world_size)
        recipe.cfg.freeze()
        s = recipe.cfg.SOLVER
        after = (s.IMS_PER_BATCH, s.BASE_LR, s.MAX_ITER)
    return (f"the recipe is for {reference} GPUs, this run has {world_size}: detectron2's reference world size rule "
            f"scales batch {before[0]} -> {after[0]}, lr {before[1]:g} -> {after[1]:g}, iterations {before[2]} -> "
            f"{after[2]} (and the lr steps, warm-up, evaluation and checkpoint periods)")
