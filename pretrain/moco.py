"""Momentum Contrast (He et al. 2019; v2: Chen et al. 2020) for torchvision ResNets.

``MoCo(base_encoder)`` is built like the authors' builder: a query encoder, a
momentum-updated copy as key encoder, and a queue of K normalised keys. The
state dict has the authors' names (``encoder_q.*``, ``encoder_k.*``, ``queue``,
``queue_ptr``); their checkpoints store it under ``state_dict`` with DDP's
``module.`` prefix, and so does the trainer.

Shuffle BN, which keeps batch norm from leaking which key matches which query:
* under DDP (world size > 1): keys are computed on a batch shuffled across
  processes (all-gather, a permutation broadcast from rank 0), then unshuffled,
  exactly as the authors' code;
* in a single process: both encoders' batch norms normalise ``bn_splits``
  sub-batches separately (``SplitBatchNorm2d``) and the key batch is shuffled
  across sub-batches, so a query and its key are normalised with different
  samples, as on 8 GPUs. ``bn_splits=1`` turns this off (and leaks).
"""
from __future__ import annotations

import copy
from typing import Callable, Dict, Tuple

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from .checkpoint import CheckpointFormatError, describe_state_dict, load_state_dict_file, unwrap_state_dict, strip_prefix
from .distributed import all_gather_tensor, get_rank, get_world_size

__all__ = ["MoCo", "SplitBatchNorm2d", "convert_split_bn", "build_moco", "backbone_state_dict", "moco_checkpoint"]


class SplitBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are computed over ``num_splits`` sub-batches.

    Sub-batch j holds samples j, j + s, j + 2s, ... (s = num_splits): one
    ``batch_norm`` call on the batch viewed as [N/s, s*C, H, W]. Running
    statistics are the mean of the sub-batches'. Same parameters and buffers as
    BatchNorm2d, so state dicts are interchangeable; evaluation is plain BN.
    """

    def __init__(self, num_features: int, num_splits: int, **kwargs):
        super().__init__(num_features, **kwargs)
        self.num_splits = num_splits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.num_splits
        if not self.training or s == 1:
            return super().forward(x)
        n, c, h, w = x.shape
        if n % s:
            raise ValueError(f"batch of {n} does not split into {s} BN sub-batches (model.bn_splits)")
        mean = self.running_mean.repeat(s)
        var = self.running_var.repeat(s)
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
        out = F.batch_norm(
            x.view(n // s, c * s, h, w), mean, var,
            self.weight.repeat(s) if self.affine else None, self.bias.repeat(s) if self.affine else None,
            True, self.momentum if self.momentum is not None else 0.1, self.eps,
        ).view(n, c, h, w)
        self.running_mean.copy_(mean.view(s, c).mean(0))
        self.running_var.copy_(var.view(s, c).mean(0))
        return out


def convert_split_bn(module: nn.Module, num_splits: int) -> nn.Module:
    """Replace every BatchNorm2d in ``module`` by a SplitBatchNorm2d sharing its tensors."""
    if num_splits <= 1:
        return module
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            new = SplitBatchNorm2d(child.num_features, num_splits, eps=child.eps, momentum=child.momentum,
                                   affine=child.affine, track_running_stats=child.track_running_stats)
            new.load_state_dict(child.state_dict())
            setattr(module, name, new)
        else:
            convert_split_bn(child, num_splits)
    return module


class MoCo(nn.Module):
    def __init__(
        self,
        base_encoder: Callable[..., nn.Module] = torchvision.models.resnet50,
        dim: int = 128,
        K: int = 65536,
        m: float = 0.999,
        T: float = 0.07,
        mlp: bool = False,
        bn_splits: int = 1,
    ):
        super().__init__()
        self.K, self.m, self.T = K, m, T
        self.encoder_q = base_encoder(num_classes=dim)
        if mlp:  # v2: fc -> Linear, ReLU, fc
            hidden = self.encoder_q.fc.weight.shape[1]
            self.encoder_q.fc = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), self.encoder_q.fc)
        convert_split_bn(self.encoder_q, bn_splits)
        self.encoder_k = copy.deepcopy(self.encoder_q)
        for p in self.encoder_k.parameters():
            p.requires_grad = False
        self.bn_splits = bn_splits

        self.register_buffer("queue", F.normalize(torch.randn(dim, K), dim=0))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))

    # ------------------------------------------------------------ key encoder
    @torch.no_grad()
    def momentum_update_key_encoder(self):
        """theta_k <- m * theta_k + (1 - m) * theta_q, as two fused foreach ops."""
        k_params = [p.data for p in self.encoder_k.parameters()]
        q_params = [p.data for p in self.encoder_q.parameters()]
        torch._foreach_mul_(k_params, self.m)
        torch._foreach_add_(k_params, q_params, alpha=1.0 - self.m)

    @torch.no_grad()
    def dequeue_and_enqueue(self, keys: torch.Tensor):
        """Write this step's keys (from every process) over the oldest ones."""
        keys = all_gather_tensor(keys)
        batch = keys.shape[0]
        if self.K % batch:
            raise ValueError(
                f"the queue size K={self.K} must be a multiple of the global batch ({batch} keys per step); "
                f"choose K = {max(1, self.K // batch) * batch} or a batch that divides {self.K}"
            )
        ptr = int(self.queue_ptr)
        self.queue[:, ptr : ptr + batch] = keys.T.to(self.queue.dtype)
        self.queue_ptr[0] = (ptr + batch) % self.K

    # ------------------------------------------------------------ shuffle BN
    @torch.no_grad()
    def _shuffle_keys(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Shuffle the key batch; returns (this process's shuffled part, indices to undo it)."""
        if get_world_size() == 1:
            perm = torch.randperm(x.shape[0], device=x.device)
            return x[perm], torch.argsort(perm)
        gathered = all_gather_tensor(x)
        perm = torch.randperm(gathered.shape[0], device=x.device)
        dist.broadcast(perm, src=0)
        unshuffle = torch.argsort(perm)
        mine = perm.view(get_world_size(), -1)[get_rank()]
        return gathered[mine], unshuffle

    @torch.no_grad()
    def _unshuffle_keys(self, k: torch.Tensor, unshuffle: torch.Tensor) -> torch.Tensor:
        if get_world_size() == 1:
            return k[unshuffle]
        gathered = all_gather_tensor(k)
        return gathered[unshuffle.view(get_world_size(), -1)[get_rank()]]

    # --------------------------------------------------------------- forward
    def forward(self, im_q: torch.Tensor, im_k: torch.Tensor):
        """Returns InfoNCE logits [N, 1 + K] (positive at index 0, over T) and zero labels."""
        q = F.normalize(self.encoder_q(im_q), dim=1)
        with torch.no_grad():
            self.momentum_update_key_encoder()
            shuffled, unshuffle = self._shuffle_keys(im_k)
            k = F.normalize(self.encoder_k(shuffled), dim=1)
            k = self._unshuffle_keys(k, unshuffle)
        q, k = q.float(), k.float()
        l_pos = (q * k).sum(dim=1, keepdim=True)
        l_neg = q @ self.queue.clone().detach()
        logits = torch.cat([l_pos, l_neg], dim=1) / self.T
        labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
        self.dequeue_and_enqueue(k)
        return logits, labels


def build_moco(arch: str = "resnet50", **kwargs) -> MoCo:
    """MoCo around a torchvision ResNet named by ``arch`` (resnet18 ... resnext101_32x8d)."""
    if not arch.startswith(("resnet", "resnext", "wide_resnet")) or not hasattr(torchvision.models, arch):
        raise ValueError(f"unknown torchvision ResNet {arch!r} (e.g. resnet18, resnet50, resnet101)")
    return MoCo(getattr(torchvision.models, arch), **kwargs)


# --------------------------------------------------------------- conversions
def moco_checkpoint(model: MoCo, arch: str, epoch: int) -> Dict:
    """The authors' checkpoint layout: module.-prefixed state dict, epoch, arch (the trainer adds
    the optimizer)."""
    return {"epoch": epoch, "arch": arch, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}


def backbone_state_dict(source, allow_pickle: bool = False) -> Dict[str, torch.Tensor]:
    """A ResNet backbone under torchvision names, without ``fc``.

    ``source``: a path or a loaded checkpoint: MoCo v1/v2 (the authors' or the
    project's; the query encoder is taken), MoCo v3 ResNet (``base_encoder``),
    or a torchvision ResNet (supervised baseline). The result loads strictly into
    ``torchvision.models.resnet50()`` once its ``fc`` is replaced by Identity.
    """
    sd = load_state_dict_file(source, allow_pickle) if not isinstance(source, dict) else unwrap_state_dict(source)
    for prefix in ("encoder_q.", "base_encoder.", "module.encoder_q.", "module.base_encoder."):
        if any(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
            break
    sd = strip_prefix(sd, "module.")
    if describe_state_dict(sd) != "resnet":
        raise CheckpointFormatError(
            "expected a MoCo or torchvision ResNet checkpoint (keys like 'encoder_q.layer1.0.conv1.weight' "
            f"or 'layer1.0.conv1.weight'), found {describe_state_dict(sd, verbose=True)}"
        )
    return {k: v for k, v in sd.items() if not k.startswith("fc.")}

