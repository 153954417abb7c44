"""Small helpers shared by the detectron2 modules (no detectron2 import here)."""
from __future__ import annotations

import torch
from torch.overrides import TorchFunctionMode

# The constructors modules allocate their parameters and buffers with.
_ALLOCATORS = {torch.empty, torch.zeros, torch.ones, torch.full, torch.rand, torch.randn, torch.empty_strided,
               torch.zeros_like, torch.ones_like, torch.empty_like}


class meta_init(TorchFunctionMode):
    """Allocate new parameters and buffers on the meta device: shapes without memory.

    Unlike ``with torch.device("meta")``, computations at construction time
    (detectron2's ViT reads its drop-path schedule with ``linspace(...).item()``)
    still run on the CPU, so a 630M-parameter ViTDet-H builds in a second.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func in _ALLOCATORS and kwargs.get("device") is None:
            kwargs["device"] = "meta"
        return func(*args, **kwargs)
