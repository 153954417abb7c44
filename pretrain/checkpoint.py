"""Reading and writing checkpoint files, safely.

* ``load_file`` reads ``.safetensors``, torch files (``.pth``, ``.pth.tar``,
  ``.pt``, ``.bin``) with ``weights_only=True``, and detectron2 ``.pkl`` files
  with an unpickler that only rebuilds numpy arrays: no pickled code runs unless
  the caller passes ``allow_pickle=True`` for a file it trusts; TorchScript archives
  (OpenAI's CLIP) by ``pretrain.torchscript``, which rebuilds only modules and tensors.
* ``unwrap_state_dict`` finds the state dict inside the usual wrappers
  (``model``, ``state_dict``, DDP's ``module.``).
* ``describe_state_dict`` names what a state dict is, for error messages that
  say what was expected and what was found.
* ``save_atomic`` (and ``write_text_atomic``, for text records such as config.yaml) writes
  through a temporary file and a rename, so a crash or a full disk never leaves a half-written
  file under the final name; a failed write names the file.
"""
from __future__ import annotations

import argparse
import errno
import io
import json
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any, Dict, Mapping

import numpy as np
import torch

from .errors import DiskFull, UserError
from .torchscript import is_torchscript_archive, read_torchscript

__all__ = [
    "CheckpointFormatError",
    "load_file",
    "load_state_dict_file",
    "unwrap_state_dict",
    "strip_prefix",
    "describe_state_dict",
    "save_atomic",
    "write_text_atomic",
]


class CheckpointFormatError(UserError, ValueError):
    """A checkpoint is unreadable or not of the kind the caller expects."""


# ----------------------------------------------------------------- reading
class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Rebuilds dicts, lists, numbers, strings and numpy arrays; refuses everything else."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("collections", "OrderedDict"),
    }

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")


def _to_tensors(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, Mapping):
        return {k: _to_tensors(v) for k, v in obj.items()}
    return obj


def load_file(path, allow_pickle: bool = False) -> Any:
    """Read a checkpoint file onto the CPU without running pickled code (unless allowed)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file as load_safetensors

            return load_safetensors(str(path), device="cpu")
        if path.suffix == ".pkl":
            with open(path, "rb") as f:
                data = f.read()
            if allow_pickle:
                return _to_tensors(pickle.loads(data, encoding="latin1"))
            try:
                return _to_tensors(_NumpyOnlyUnpickler(io.BytesIO(data), encoding="latin1").load())
            except pickle.UnpicklingError as e:
                raise CheckpointFormatError(
                    f"{path}: this pickle holds more than numpy arrays ({e}). Open it only if you trust "
                    f"its source, with allow_pickle=True (--allow-pickle on the command line)."
                ) from e
        with open(path, "rb") as f:
            magic = f.read(4)
        if magic != b"PK\x03\x04" and magic[:1] != b"\x80":  # neither torch's zip nor a pickle stream
            raise CheckpointFormatError(
                f"could not read checkpoint {path}: not a torch (.pth), safetensors or pickle file "
                f"(it starts with {magic!r})")
        if magic == b"PK\x03\x04" and is_torchscript_archive(path):  # OpenAI's CLIP releases
            try:
                return read_torchscript(path, allow_pickle)
            except pickle.UnpicklingError as e:
                raise CheckpointFormatError(
                    f"{path}: a TorchScript archive holding more than modules and tensors ({e}); open it only "
                    f"if you trust its source, with allow_pickle=True (--allow-pickle on the command line)."
                ) from e
        try:
            # The MAE / DeiT code stores its argparse.Namespace beside the weights: a plain
            # attribute container, safe to rebuild.
            with torch.serialization.safe_globals([argparse.Namespace]):
                return torch.load(path, map_location="cpu", weights_only=not allow_pickle)
        except pickle.UnpicklingError as e:
            raise CheckpointFormatError(
                f"{path}: not loadable with weights_only=True ({str(e).splitlines()[0]}). It holds pickled "
                f"objects besides tensors; open it only if you trust its source, with allow_pickle=True "
                f"(--allow-pickle on the command line)."
            ) from e
    except CheckpointFormatError:
        raise
    except Exception as e:  # truncated file, wrong format, ...
        raise CheckpointFormatError(f"could not read checkpoint {path}: {type(e).__name__}: {e}") from e


def strip_prefix(state_dict: Dict[str, Any], prefix: str) -> Dict[str, Any]:
    """Remove ``prefix`` from every key when all keys carry it."""
    if state_dict and all(k.startswith(prefix) for k in state_dict):
        return {k[len(prefix):]: v for k, v in state_dict.items()}
    return state_dict


def unwrap_state_dict(obj: Any) -> Dict[str, torch.Tensor]:
    """The tensor dict inside a checkpoint: under ``model``/``state_dict``/``module``, no ``module.``."""
    if not isinstance(obj, Mapping):
        raise CheckpointFormatError(f"expected a checkpoint dict, found {type(obj).__name__}")
    for key in ("model", "state_dict", "module"):
        if key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
            break
    sd = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not sd:
        raise CheckpointFormatError(
            f"found no tensors in the checkpoint (top-level keys: {sorted(map(str, obj))[:10]})"
        )
    return strip_prefix(sd, "module.")


def load_state_dict_file(path, allow_pickle: bool = False) -> Dict[str, torch.Tensor]:
    try:
        return unwrap_state_dict(load_file(path, allow_pickle=allow_pickle))
    except CheckpointFormatError as e:
        if str(path) in str(e):
            raise
        raise CheckpointFormatError(f"{path}: {e}") from e


# (kind, description, keys any of which identifies it), most specific first.
_SIGNATURES = [
    ("mae", "a full MAE checkpoint (encoder + decoder)", ["decoder_embed.weight"]),
    ("vit", "a ViT (timm / MAE-encoder names)", ["blocks.0.attn.qkv.weight", "patch_embed.proj.weight"]),
    ("moco", "a MoCo checkpoint (encoder_q / encoder_k)", ["encoder_q.conv1.weight", "encoder_q.0.weight"]),
    ("resnet", "a torchvision ResNet", ["layer1.0.conv1.weight"]),
    ("detectron2-resnet", "a detectron2 ResNet", ["stem.conv1.weight", "backbone.bottom_up.stem.conv1.weight"]),
    ("detectron2-vit", "a detectron2 ViT", ["backbone.net.blocks.0.attn.qkv.weight", "net.blocks.0.attn.qkv.weight"]),
    ("mmseg-vit", "an mmseg ViT/MAE encoder", ["layers.0.attn.qkv.weight", "backbone.layers.0.attn.qkv.weight"]),
]


def describe_state_dict(state_dict: Mapping[str, Any], verbose: bool = False) -> str:
    """The kind of a state dict ('mae', 'vit', 'moco', 'resnet', ...), or a description with its keys."""
    keys = set(state_dict)
    for kind, description, markers in _SIGNATURES:
        if keys.intersection(markers):
            return f"{kind}: {description}" if verbose else kind
    return f"an unrecognised state dict (first keys: {sorted(keys)[:5]})"


# ----------------------------------------------------------------- writing
def save_atomic(obj: Any, path) -> Path:
    """Write ``obj`` by the file's suffix via a temp file + rename, so that a reader never sees a
    half-written file: ``.safetensors``, ``.pkl`` (a plain pickle: detectron2's model zoo),
    ``.json`` (indented), else ``torch.save``."""
    def write(tmp):
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in obj.items()}, tmp)
        elif path.suffix in (".pkl", ".json"):
            with open(tmp, "wb" if path.suffix == ".pkl" else "w") as f:
                if path.suffix == ".pkl":
                    pickle.dump(obj, f, protocol=pickle.HIGHEST_PROTOCOL)
                else:
                    json.dump(obj, f, indent=2)
                    f.write("\n")
        else:
            # Through a Python file: a failed write raises its OSError (ENOSPC: DiskFull below), where
            # torch.save(obj, path)'s own writer says only "PytorchStreamWriter failed writing file".
            with open(tmp, "wb") as f:
                torch.save(obj, f)

    path = Path(path)
    return _replace_atomic(path, write)


def write_text_atomic(path, text: str) -> Path:
    """``Path.write_text`` through a temp file + rename (config.yaml and the other records a run keeps
    beside its checkpoints): a full disk leaves the earlier file whole, never an empty one."""
    def write(tmp):
        with open(tmp, "w") as f:
            f.write(text)

    return _replace_atomic(Path(path), write)


def write_bytes_atomic(path, data: bytes) -> Path:
    """``Path.write_bytes`` through a temp file + rename (a chart a report links to)."""
    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(data)

    return _replace_atomic(Path(path), write)


def _replace_atomic(path: Path, write) -> Path:
    """``write(tmp)`` a temp file in ``path``'s folder, then rename it over ``path``. An OSError (a full
    disk, a quota) is raised again naming the file, with the earlier file there unchanged."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        write(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(e, OSError):  # OSError(errno, ...) is the errno's subclass again (PermissionError, ...)
            what = "disk full" if e.errno in (errno.ENOSPC, errno.EDQUOT) else (e.strerror or type(e).__name__)
            raise DiskFull(e.errno, f"{what} writing {path} (the file there before is unchanged)") from e
        raise
    return path
