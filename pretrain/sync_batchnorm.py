"""Batch norm over the whole batch of every process, on GPUs and on CPUs.

``torch.nn.SyncBatchNorm`` runs on GPUs only: DDP refuses a CPU module holding one ("SyncBatchNorm layers
only work with GPU modules"). A two-process CPU run (torchrun with gloo, the documented way to try a
recipe without GPUs) uses :class:`AllReduceBatchNorm` instead: the same statistics, from two all-reduces
of per-channel sums per layer (the mean, then the squared deviations from it: no cancellation), through
``torch.distributed.nn``'s differentiable all-reduce, so that the gradients are SyncBN's too.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torch.distributed import nn as dist_nn

from . import distributed as du

__all__ = ["AllReduceBatchNorm", "convert_sync_batchnorm"]


class AllReduceBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm (any input ``[N, C, *]``) whose training statistics are those of every process's batch
    together; in evaluation, or in one process, plain batch norm."""

    def _check_input_dim(self, input):
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or du.get_world_size() == 1:
            return super().forward(x)
        self._check_input_dim(x)
        dims = [0, *range(2, x.dim())]
        shape = [1, x.shape[1]] + [1] * (x.dim() - 2)
        xf = x.float()
        sums = dist_nn.all_reduce(torch.cat([xf.sum(dims), xf.new_tensor([x.numel() // x.shape[1]])]))
        n = sums[-1]
        mean = sums[:-1] / n
        centred = xf - mean.view(shape)
        var = dist_nn.all_reduce((centred * centred).sum(dims)) / n  # biased, as batch norm normalises
        if self.track_running_stats:
            with torch.no_grad():  # as F.batch_norm: the running variance is the unbiased one
                self.num_batches_tracked.add_(1)
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), momentum)
                self.running_var.lerp_((var * n / (n - 1).clamp_min(1)).to(self.running_var.dtype), momentum)
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)

    @classmethod
    def convert(cls, module: nn.Module) -> nn.Module:
        """``module`` with every ``BatchNorm*d`` replaced by this class (parameters and buffers kept), as
        ``nn.SyncBatchNorm.convert_sync_batchnorm`` does."""
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, cls):
            out = cls(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
            if module.affine:
                with torch.no_grad():
                    out.weight, out.bias = module.weight, module.bias
            out.running_mean, out.running_var = module.running_mean, module.running_var
            out.num_batches_tracked = module.num_batches_tracked
            out.train(module.training)
            return out
        for name, child in module.named_children():
            module.add_module(name, cls.convert(child))
        return module


def convert_sync_batchnorm(module: nn.Module, on_gpu: bool) -> nn.Module:
    """Every batch norm of ``module`` over the global batch: torch's ``SyncBatchNorm`` (its fused kernels)
    for a model that runs on GPUs, :class:`AllReduceBatchNorm` for one on CPUs."""
    if on_gpu:
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return AllReduceBatchNorm.convert(module)
