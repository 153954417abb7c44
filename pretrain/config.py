"""Pretraining configs: typed dataclasses, filled from YAML plus ``key=value`` overrides.

A config file names its ``method`` (a registered ``pretrain.methods`` name: ``mae``, ``moco``, ...);
the method's schema rejects unknown keys and wrong types with the key's path, so a typo in a config
fails at start-up rather than hours into a run. The sections every method shares are here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Mapping, Optional, Sequence, Union

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .errors import ConfigError


@dataclass
class DataConfig:
    # ImageNet-style root (``<path>/train/<class>/*`` or ``<path>/<class>/*``) or a flat
    # folder of images. A run needs one, or ``synthetic: true``: never a silent substitute.
    path: Optional[str] = None
    synthetic: bool = False  # the built-in synthetic scenes when data.path is unset (CPU demos, tests)
    synthetic_images: int = 512
    img_size: int = 224
    crop_min_scale: float = 0.2  # RandomResizedCrop scale = (crop_min_scale, 1.0)
    num_workers: int = 8
    # pil: decode and crop in the loader workers on the CPU (uint8), normalise on the device;
    # dali: decode and crop on the GPU (nvidia-dali-cuda120, CUDA only; else pil, said in the log).
    backend: str = "pil"
    # Labelled folders for the kNN monitor (``<dir>/<class>/*``); off when unset.
    knn_train: Optional[str] = None
    knn_val: Optional[str] = None


@dataclass
class OptimConfig:
    name: str = "adamw"  # adamw | sgd | lars (the method builds it)
    base_lr: float = 1.5e-4  # lr = base_lr * effective_batch / 256
    lr: Optional[float] = None  # absolute lr; overrides base_lr when set
    weight_decay: float = 0.05
    betas: List[float] = field(default_factory=lambda: [0.9, 0.95])
    momentum: float = 0.9
    schedule: str = "cosine"  # cosine (half cycle, after linear warm-up) | step
    warmup_epochs: float = 40.0
    min_lr: float = 0.0
    milestones: List[int] = field(default_factory=list)  # step schedule: x0.1 at these epochs
    clip_grad: Optional[float] = None


@dataclass
class RunConfig:
    """The ``train`` keys of every training command (pretraining, classification): schedule
    length, batch, precision, processes, output, logging, stopping."""
    epochs: int = 800
    batch_size: int = 64  # per process
    accum_iter: int = 1  # effective batch = batch_size * accum_iter * world_size
    amp: str = "none"  # none | bf16 | fp16 (CUDA only) | auto (from the hardware: pretrain.precision)
    device: str = "auto"  # auto | cpu | cuda
    seed: int = 0
    output_dir: str = "output/pretrain"
    ckpt_every_epochs: int = 20  # and always at the end
    ckpt_every_iters: int = 0  # also mid-epoch, every N optimizer steps (0: off)
    log_every: int = 20
    max_iters: Optional[int] = None  # stop after this many optimizer steps, with a checkpoint (smoke runs)
    tensorboard: bool = True
    progress: bool = True
    dist_backend: str = "auto"  # auto (nccl on CUDA, gloo on CPU) | nccl | gloo
    dist_timeout_min: float = 30.0  # process-group timeout: how long a collective may wait for the other ranks
    deterministic: bool = False  # deterministic algorithms, no cuDNN autotuning: exact resume on GPUs too
    compile: bool = False  # torch.compile the model's forward (graph breaks are named in the log)
    # ResNets: convolutions in channels-last memory format (measured faster: README, Benchmarks); not with
    # MoCo's split batch norm (one process), whose sub-batch view needs contiguous maps. ViTs: no effect.
    channels_last: bool = True


def validate_data_source(d, fail: Callable[[str], None], folder: str = "an image folder"):
    """A run trains on data.path, or on the synthetic scenes when the config says so; never on a default.
    A dataset given wins over ``synthetic`` (a CPU config pointed at real images)."""
    given = bool(d.path) or bool(getattr(d, "train", None)) or bool(getattr(d, "val", None))
    if not d.synthetic and not given:
        fail(f"data.path is not set: give the dataset (data.path={folder}), or data.synthetic=true for the "
             f"built-in synthetic scenes")


def validate_backend(d, fail: Callable[[str], None]):
    if d.backend not in ("pil", "dali"):
        fail(f"data.backend must be pil or dali, got {d.backend!r}")


def validate_run(t: RunConfig, fail: Callable[[str], None]):
    """Checks of the ``train`` keys that types cannot express."""
    if t.amp not in ("none", "bf16", "fp16", "auto"):
        fail(f"train.amp must be none, bf16, fp16 or auto, got {t.amp!r}")
    if t.device not in ("auto", "cpu", "cuda"):
        fail(f"train.device must be auto, cpu or cuda, got {t.device!r}")
    if t.batch_size < 1 or t.accum_iter < 1 or t.epochs < 1:
        fail("train.batch_size, train.accum_iter and train.epochs must be >= 1")
    if t.log_every < 1 or t.ckpt_every_epochs < 1 or t.ckpt_every_iters < 0:
        fail("train.log_every and train.ckpt_every_epochs must be >= 1 (train.ckpt_every_iters: 0 is off)")
    if t.dist_timeout_min <= 0:
        fail(f"train.dist_timeout_min must be > 0 minutes, got {t.dist_timeout_min}")


@dataclass
class TrainConfig(RunConfig):
    knn_every_epochs: int = 0  # kNN monitor (needs data.knn_train / knn_val)
    export_backbone: bool = True  # at the end: <output_dir>/backbone/ (safetensors + timm config.json)


def load_structured_config(
    schemas: Mapping[str, type],
    selector: str,
    path: Optional[Union[str, Path]] = None,
    overrides: Sequence[str] = (),
    choice: Optional[str] = None,
    default: Optional[str] = None,
    validate: Optional[Callable] = None,
):
    """Read a YAML config into the schema its ``selector`` key names, plus ``a.b=value`` overrides.

    ``schemas`` maps the selector's values (e.g. ``method: mae``) to dataclasses;
    ``choice`` (a command-line flag) wins over the file, ``default`` applies when
    neither names one. A value written ``???`` in the file must come from
    ``overrides``. ``validate(cfg, path)`` checks what types cannot. Returns a
    typed, read-only OmegaConf object. Errors name the file and the key.
    """
    try:
        raw = OmegaConf.load(path) if path else OmegaConf.create({})
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path} (check the path; the shipped ones are in configs/)") from None
    except Exception as e:
        raise ConfigError(f"{path}: not a valid YAML config: {e}") from None
    if not OmegaConf.is_dict(raw):
        raise ConfigError(f"{path}: expected a mapping of keys ({selector}: ..., train: ...), found a list")
    choice = choice or raw.get(selector) or default
    if choice not in schemas:
        raise ConfigError(f"{path}: {selector} must be one of {sorted(schemas)}, got {choice!r}")
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. train.epochs=10)")
        try:  # the value is read as YAML: an unclosed bracket or quote fails here, named
            OmegaConf.from_dotlist([item])
        except (OmegaConfBaseException, yaml.YAMLError) as e:
            why = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise ConfigError(f"override {item!r}: its value is not valid YAML ({why}); quote it in the shell, "
                              "e.g. 'key=[1, 2]'") from None
    given = {item.split("=", 1)[0] for item in overrides}
    required = [k for k in _missing_keys(raw) if k not in given]
    if required:
        raise ConfigError(f"{path}: {', '.join(required)} must be given (marked ??? in the config), "
                          f"e.g. {required[0]}=...")
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(schemas[choice]), raw, OmegaConf.from_dotlist(list(overrides)))
    except OmegaConfBaseException as e:
        where = path or "defaults"
        raise ConfigError(f"{where}: {str(e).splitlines()[0]} (key: {getattr(e, 'full_key', '?')})") from None
    if validate is not None:
        validate(cfg, path)
    OmegaConf.set_readonly(cfg, True)
    return cfg


def _missing_keys(node, prefix: str = "") -> List[str]:
    """Dotted keys whose value is ``???`` (OmegaConf's mandatory marker), which a merge would drop."""
    out = []
    for key in node:
        full = f"{prefix}{key}"
        if OmegaConf.is_missing(node, key):
            out.append(full)
        elif OmegaConf.is_dict(node[key]):
            out += _missing_keys(node[key], f"{full}.")
    return out


def load_config(path: Optional[Union[str, Path]] = None, overrides: Sequence[str] = (), method: Optional[str] = None):
    """A pretraining config: YAML (or the schema defaults) of ``method`` (a registered method), plus overrides."""
    from .methods import methods

    schemas = {name: cls.config_schema for name, cls in methods().items()}
    return load_structured_config(schemas, "method", path, overrides, choice=method, default="mae", validate=_validate)


def _validate(cfg, path):
    def fail(msg):
        raise ConfigError(f"{path or 'config'}: {msg}")

    t, o = cfg.train, cfg.optim
    validate_run(t, fail)
    if o.name not in ("adamw", "sgd", "lars"):
        fail(f"optim.name must be adamw, sgd or lars, got {o.name!r}")
    if o.schedule not in ("cosine", "step"):
        fail(f"optim.schedule must be cosine or step, got {o.schedule!r}")
    from .methods import get_method

    get_method(cfg.method).validate(cfg, fail)
    validate_data_source(cfg.data, fail, "/data/imagenet")
    validate_backend(cfg.data, fail)


def to_yaml(cfg) -> str:
    return OmegaConf.to_yaml(cfg)
