"""Process-group helpers. torchrun sets RANK / WORLD_SIZE / LOCAL_RANK (on one or
many machines); without them everything runs in a single process."""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, List

import torch
import torch.distributed as dist

from .errors import ConfigError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto", backend: str = "auto", timeout_min: float = 30.0) -> DistInfo:
    """Join the process group torchrun describes (if any) and pick this process's device. ``timeout_min``
    (``train.dist_timeout_min``): how long a collective waits for the other processes before the run
    aborts (NCCL's default, 10 minutes, is shorter than some whole-set evaluations)."""
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device=cuda but this machine has no usable CUDA GPU: use train.device=cpu (or auto)")
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    rank = int(os.environ.get("RANK", 0))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        if backend == "auto":
            backend = "nccl" if use_cuda else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size,
                                timeout=timedelta(minutes=timeout_min))
    return DistInfo(rank, world_size, local_rank, dev)


def get_world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def get_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def barrier():
    if get_world_size() > 1:
        dist.barrier()


@torch.no_grad()
def all_gather_tensor(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every process along dim 0 (no gradient)."""
    if get_world_size() == 1:
        return x
    out = [torch.empty_like(x) for _ in range(get_world_size())]
    dist.all_gather(out, x.contiguous())
    return torch.cat(out, dim=0)


@torch.no_grad()
def all_gather_rows(x: torch.Tensor) -> List[torch.Tensor]:
    """Every process's ``x``, in rank order, where the processes' row counts (dim 0) may differ
    (no gradient)."""
    if get_world_size() == 1:
        return [x]
    counts = all_gather_tensor(torch.tensor([x.shape[0]], device=x.device)).tolist()
    # all_gather needs equal shapes: pad every part to the longest, then cut the padding off.
    padded = torch.cat([x, x.new_zeros((max(counts) - x.shape[0], *x.shape[1:]))])
    rows = all_gather_tensor(padded).split(max(counts))
    return [r[:n] for r, n in zip(rows, counts)]


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """``x`` summed over the processes (in place)."""
    if get_world_size() > 1:
        dist.all_reduce(x)
    return x


def all_gather_object(obj: Any) -> List[Any]:
    if get_world_size() == 1:
        return [obj]
    out: List[Any] = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_mean(value: float, device=None) -> float:
    if get_world_size() == 1:
        return float(value)
    t = torch.tensor([float(value)], device=device or "cpu", dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item()) / get_world_size()


def cleanup():
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
