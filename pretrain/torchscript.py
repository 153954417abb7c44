"""The tensors of a TorchScript archive (``torch.jit.save``: OpenAI's CLIP releases), read without running it.

A TorchScript archive is a zip: ``code/`` (the model's TorchScript source), ``constants.pkl``, ``data/<key>``
(the raw bytes of each storage) and ``data.pkl``, a pickle of the module tree. ``torch.jit.load``
compiles ``code/`` and runs it to rebuild the modules; reading the weights needs none of that, since
``data.pkl`` names only a few globals: each module's TorchScript class (``__torch__.<module> <Class>``,
an empty object whose attributes, parameters and submodules are set from a dict), torch's tensor
rebuild function, the storage types, ``OrderedDict`` and the typed-list helpers of ``torch.jit._pickle``
(an attribute ``List[int]``). ``read_torchscript`` unpickles it with an
unpickler that allows exactly these and builds them itself: a module becomes a plain record (its
class name kept, nothing of ``code/`` compiled), a tensor a view of its storage's bytes. Any other
global (a quantised tensor, a custom object) is refused, and such an archive opens only through
``torch.jit.load`` with ``allow_pickle=True`` (a file the caller trusts).

The result, ``ScriptArchive``, is a state dict: every tensor attribute of the tree by its dotted
name (``visual.conv1.weight``), with ``module_types``: each module's class name by its dotted name
(``visual.transformer.resblocks.0.mlp.gelu`` -> ``QuickGELU``), which tells a reader what the code
computes (an activation the tensors cannot show) without running it.
"""
from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path
from typing import Any, Dict

import torch

__all__ = ["ScriptArchive", "is_torchscript_archive", "read_torchscript"]

# Storage classes of data.pkl's persistent ids, by name, and the element type of their bytes.
_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "HalfStorage": torch.float16, "BFloat16Storage": torch.bfloat16,
    "DoubleStorage": torch.float64, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
}


# torch.jit._pickle's helpers for typed attributes (a List[int], a typed dict): they only wrap a value.
_LIST_HELPERS = {"build_intlist": list, "build_floatlist": list, "build_doublelist": list, "build_boollist": list,
                 "build_tensorlist": list, "restore_type_tag": lambda value, type_str: value}


class ScriptArchive(dict):
    """A TorchScript archive's tensors by dotted name; ``module_types``: each module's class name
    (``""``: the root), ``source``: the file."""

    def __init__(self, tensors: Dict[str, torch.Tensor], module_types: Dict[str, str], source: str):
        super().__init__(tensors)
        self.module_types = module_types
        self.source = source


class _ScriptModule:
    """A TorchScript module of data.pkl as a record: its attributes, its class's name."""

    type_name = ""


def is_torchscript_archive(path) -> bool:
    """Whether ``path`` is a zip with a TorchScript archive's records (``code/``, ``constants.pkl``); a
    ``torch.save`` zip has neither."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
    return any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names)


class _TensorsOnlyUnpickler(pickle.Unpickler):
    """data.pkl's module tree with tensors read from the zip's ``data/`` records; nothing else rebuilt."""

    def __init__(self, data: bytes, archive: zipfile.ZipFile, root: str):
        super().__init__(io.BytesIO(data))
        self.archive, self.root = archive, root
        self.storages: Dict[str, torch.Tensor] = {}
        self.classes: Dict[str, type] = {}

    def find_class(self, module: str, name: str):
        if module.startswith("__torch__"):  # a module's TorchScript class: a record of that name
            qualified = f"{module}.{name}"
            if qualified not in self.classes:
                self.classes[qualified] = type(name, (_ScriptModule,), {"type_name": name})
            return self.classes[qualified]
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if (module, name) == ("collections", "OrderedDict"):
            return dict  # the tensors' backward hooks (always empty in a saved module)
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        if module == "torch.jit._pickle" and name in _LIST_HELPERS:
            return _LIST_HELPERS[name]
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")

    def persistent_load(self, pid):
        kind, dtype, key, _location, numel = pid
        if kind != "storage" or not isinstance(dtype, torch.dtype):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        if key not in self.storages:
            raw = self.archive.read(f"{self.root}/data/{key}")
            flat = torch.frombuffer(bytearray(raw), dtype=dtype) if raw else torch.empty(0, dtype=dtype)
            if flat.numel() != numel:
                raise pickle.UnpicklingError(f"storage {key}: {flat.numel()} elements, expected {numel}")
            self.storages[key] = flat
        return self.storages[key]


def _rebuild_tensor(storage: torch.Tensor, offset: int, size, stride, requires_grad=False, hooks=None,
                    metadata=None) -> torch.Tensor:
    """torch._utils._rebuild_tensor_v2 on a storage read as a flat tensor."""
    return storage.as_strided(tuple(size), tuple(stride), offset)


def _walk(obj: Any, prefix: str, tensors: Dict[str, torch.Tensor], types: Dict[str, str]) -> None:
    types[prefix[:-1]] = obj.type_name
    for name, value in vars(obj).items():
        if isinstance(value, torch.Tensor):
            tensors[prefix + name] = value
        elif isinstance(value, _ScriptModule):
            _walk(value, f"{prefix}{name}.", tensors, types)


def read_torchscript(path, allow_pickle: bool = False) -> ScriptArchive:
    """The tensors and module types of the TorchScript archive at ``path`` (module docstring). An archive
    holding more than modules and tensors is refused (``pickle.UnpicklingError``) unless
    ``allow_pickle``: then ``torch.jit.load`` runs it and its state dict is read (no ``module_types``)."""
    path = Path(path)
    with zipfile.ZipFile(path) as z:
        pkl = next(n for n in z.namelist() if n.count("/") == 1 and n.endswith("/data.pkl"))
        root = pkl.split("/")[0]
        order = z.read(f"{root}/byteorder").decode().strip() if f"{root}/byteorder" in z.namelist() else "little"
        try:
            if order != "little":
                raise pickle.UnpicklingError(f"{order}-endian storages")
            tree = _TensorsOnlyUnpickler(z.read(pkl), z, root).load()
            if not isinstance(tree, _ScriptModule):
                raise pickle.UnpicklingError(f"data.pkl holds a {type(tree).__name__}, not a module")
        except pickle.UnpicklingError:
            if not allow_pickle:
                raise
            module = torch.jit.load(str(path), map_location="cpu")
            return ScriptArchive(dict(module.state_dict()), {}, str(path))
    tensors: Dict[str, torch.Tensor] = {}
    types: Dict[str, str] = {}
    _walk(tree, "", tensors, types)
    return ScriptArchive(tensors, types, str(path))
