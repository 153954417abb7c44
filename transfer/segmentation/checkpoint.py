"""mmengine checkpoints under torch's weights-only loading.

Since torch 2.6 ``torch.load`` defaults to ``weights_only=True``, and mmengine
0.10 calls it without arguments (resume, ``load_from``). Its checkpoints carry,
besides tensors, the message hub's ``HistoryBuffer`` logs: numpy arrays and
scalars, and the buffer's statistics methods, pickled as
``getattr(HistoryBuffer, 'mean')``. ``mmengine_checkpoint_globals`` allowlists
exactly those (``getattr`` only for those four methods) instead of turning
weights-only loading off.
"""
from __future__ import annotations

import contextlib
import pickle
from typing import Iterator, List

import numpy as np
import torch

__all__ = ["mmengine_checkpoint_globals", "load_checkpoint_file"]

_HISTORY_BUFFER_METHODS = ("min", "max", "current", "mean")


def _history_buffer_method(obj, name):
    """``getattr`` as the weights-only unpickler may call it: HistoryBuffer's statistics methods only."""
    from mmengine.logging import HistoryBuffer

    if obj is HistoryBuffer and name in _HISTORY_BUFFER_METHODS:
        return getattr(obj, name)
    raise pickle.UnpicklingError(f"refusing getattr({obj!r}, {name!r}) in a checkpoint")


def _checkpoint_globals() -> List:
    from mmengine.logging import HistoryBuffer

    multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray  # numpy 2 / 1
    reconstruct, scalar = multiarray._reconstruct, multiarray.scalar
    return [
        HistoryBuffer, (_history_buffer_method, "builtins.getattr"),
        np.ndarray, np.dtype, type(np.dtype(np.float64)), type(np.dtype(np.int64)),  # Float64DType, Int64DType
        # numpy's array / scalar rebuilders, under the names numpy 2 and numpy 1 write
        (reconstruct, "numpy._core.multiarray._reconstruct"), (scalar, "numpy._core.multiarray.scalar"),
        (reconstruct, "numpy.core.multiarray._reconstruct"), (scalar, "numpy.core.multiarray.scalar"),
    ]


@contextlib.contextmanager
def mmengine_checkpoint_globals() -> Iterator[None]:
    """Let ``torch.load(weights_only=True)`` read mmengine checkpoints (resume, --eval-only).

    Nests: torch's ``safe_globals`` removes its globals on exit, even ones an
    enclosing context had added, so only the missing ones are added here.
    """
    present = torch.serialization.get_safe_globals()
    with torch.serialization.safe_globals([g for g in _checkpoint_globals() if g not in present]):
        yield


def load_checkpoint_file(path, allow_pickle: bool = False):
    """``pretrain.checkpoint.load_file`` that also reads mmengine checkpoints (a trained segmentor)."""
    from pretrain.checkpoint import load_file

    with mmengine_checkpoint_globals():
        return load_file(path, allow_pickle=allow_pickle)
