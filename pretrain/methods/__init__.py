"""Pretraining methods: one file each in this package, registered by name.

The trainer (``pretrain.trainer``) owns the loop, data, precision, DDP, checkpointing, resumption and
logs; a method (``PretrainMethod``) says everything else: its config schema, model, views of an image,
optimizer, loss, per-step schedules, checkpoint layout (the authors', so their files resume here and
ours load in their code), results label, epoch convention, and the backbone it exports
(``pretrain.backbones.BackboneExport``), which is all transfer reads. A new method is a new file here
with a ``@register_method`` class: every module of the package is imported when the registry is
first asked.
"""
from __future__ import annotations

import abc
from typing import Any, Callable, ClassVar, Dict, Mapping, Optional, Tuple, Type

import torch
import torch.nn as nn

from ..backbones import BackboneExport
from ..checkpoint import unwrap_state_dict
from ..registry import Registry

__all__ = ["PretrainMethod", "register_method", "methods", "get_method", "method_of", "run_config", "trained_on",
           "fused_ok"]


class PretrainMethod(abc.ABC):
    name: ClassVar[str]  # the config's ``method``
    config_schema: ClassVar[type]  # dataclass: method, model, data, optim, train (``pretrain.config``)

    # ---------------------------------------------------------------- config
    def validate(self, cfg, fail: Callable[[str], None]) -> None:
        """Checks of the method's config keys that types cannot express; ``fail(message)`` raises."""

    @abc.abstractmethod
    def label(self, cfg) -> str:
        """The results files' pretraining label of a run with this config (``mae``, ``moco_v2``, ...)."""

    # -------------------------------------------------------------- training
    @abc.abstractmethod
    def build_model(self, cfg, world_size: int = 1) -> nn.Module:
        ...

    @abc.abstractmethod
    def build_transform(self, cfg, device: torch.device) -> Callable:
        """The sample transform (``pretrain.transforms.SampleTransform``): uint8 views in the loader,
        finished on ``device`` by its ``device_transform``."""

    @abc.abstractmethod
    def build_optimizer(self, model: nn.Module, cfg, lr: float) -> torch.optim.Optimizer:
        ...

    def sample_index(self, cfg) -> bool:
        """Whether the loss needs each sample's dataset index, ``batch[2]`` after the labels (a loss that keeps
        one row per image: MoCo's memory bank)."""
        return False

    def prepare(self, model: nn.Module, cfg, dataset) -> None:
        """Fit what the model needs from the training data before step 0 (MAE's PCA target); a resumed run
        then loads it from its checkpoint. Called on every process with the same ``dataset``."""

    def on_step(self, model: nn.Module, cfg, epoch: float) -> Dict[str, float]:
        """Per-step schedules other than the learning rate (the trainer sets that), at fractional ``epoch``,
        before each optimizer step; returns the values to log. A function of ``epoch`` only, so a resumed
        run follows them exactly."""
        return {}

    @abc.abstractmethod
    def loss(self, model: nn.Module, batch, cfg) -> Tuple[torch.Tensor, Dict[str, Any]]:
        """(loss of a batch on the device, extra values to log: numbers or 0-d tensors)."""

    @abc.abstractmethod
    def features(self, model: nn.Module, imgs: torch.Tensor) -> torch.Tensor:
        """Global features of normalised images [N, C] (the kNN monitor)."""

    # ----------------------------------------------------------- checkpoints
    @abc.abstractmethod
    def checkpoint_name(self, tag) -> str:
        """File name of the checkpoint of epoch ``tag`` (an int) or of ``"last"``."""

    @abc.abstractmethod
    def pack(self, model: nn.Module, cfg, finished_epoch: int) -> Dict:
        """The authors' checkpoint layout of ``model`` after ``finished_epoch`` (0-based); the trainer adds
        the optimizer, scaler, its position and the config."""

    def unpack(self, model: nn.Module, ckpt: Mapping) -> None:
        model.load_state_dict(unwrap_state_dict(ckpt))

    @abc.abstractmethod
    def epochs_done(self, ckpt: Mapping) -> int:
        """Epochs of pretraining behind a checkpoint in this layout (= the next epoch's index)."""

    @classmethod
    @abc.abstractmethod
    def claims(cls, ckpt: Mapping, source: str = "") -> bool:
        """Whether a checkpoint without the project's config (the authors' file) is in this layout."""

    @abc.abstractmethod
    def export(self, ckpt: Mapping, source: str = "<dict>") -> BackboneExport:
        """The backbone of a checkpoint in this layout (the project's or the authors')."""


_REGISTRY: Registry[PretrainMethod] = Registry("pretraining method", __name__)
register_method = _REGISTRY.register


def methods() -> Dict[str, Type[PretrainMethod]]:
    """Every registered pretraining method by name (importing each module of this package once)."""
    return _REGISTRY.all()


def get_method(name: str) -> PretrainMethod:
    known = methods()
    if name not in known:
        raise ValueError(f"unknown pretraining method {name!r}; expected one of {sorted(known)}")
    return known[name]()


def method_of(ckpt: Any, source: str = "") -> Optional[PretrainMethod]:
    """The method whose checkpoint ``ckpt`` is: the one the project's config names, else the one that
    claims the layout of the authors' file; None for files of no method (timm, torchvision, ...)."""
    if not isinstance(ckpt, Mapping):
        return None
    cfg = run_config(ckpt)
    if cfg is not None:
        return get_method(cfg.method)
    return next((cls() for cls in methods().values() if cls.claims(ckpt, source)), None)


def run_config(ckpt: Mapping):
    """The config a project's pretraining checkpoint records (it names the method), else None."""
    config = ckpt.get("config") if isinstance(ckpt, Mapping) else None
    if not isinstance(config, str):
        return None
    from omegaconf import OmegaConf

    cfg = OmegaConf.create(config)
    return cfg if cfg.get("method") else None


def trained_on(cfg) -> Optional[str]:
    """What a run's config trained on: its data.path, or "synthetic"."""
    d = cfg.get("data") or {}
    return d.get("path") or ("synthetic" if d.get("synthetic") else None)


def fused_ok(model: nn.Module) -> bool:
    """Whether the optimizers' fused kernels (one pass over all parameters) exist on the model's device:
    CPU and CUDA; the per-tensor loop costs ~1 s a step for ViT-B on a CPU."""
    return next(model.parameters()).device.type in ("cpu", "cuda")
