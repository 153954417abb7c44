"""Classification configs: one typed schema per protocol, with the paper's recipe as its defaults.

A config file names its ``protocol``:

* ``mae_linear``   MAE linear probing (He et al. 2021, Sec. A.2 / Table 10): frozen ViT,
  cls token after the final norm, BatchNorm1d(affine=False) + linear head, LARS.
* ``mae_finetune`` MAE end-to-end fine-tuning (Sec. A.1 / Table 9): global average pooling
  + norm, layer-wise lr decay, drop path, AdamW, RandAugment, mixup / cutmix, smoothing.
* ``moco_linear``  MoCo linear classification (He et al. 2019, Sec. 4.1): frozen ResNet,
  re-initialised fc, SGD lr 30, steps at 60 and 80 of 100 epochs.

Unknown keys and wrong types fail at start-up with the key's path, as for pretraining
(``pretrain.config.load_structured_config``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence, Union

from pretrain.config import (
    ConfigError, OptimConfig, RunConfig, load_structured_config, to_yaml, validate_backend, validate_data_source,
    validate_run,
)
from transfer.results import TASKS

__all__ = ["PROTOCOL_SCHEMAS", "load_cls_config", "ConfigError", "to_yaml"]


@dataclass
class ClsModelConfig:
    # ViT protocols: an MAE preset or timm name (vit_base_patch16, mae_vit_large_patch16,
    # vit_huge_patch14_224, mae_vit_pico_patch8, ...); moco_linear: a torchvision ResNet
    # (resnet50, ...). ``auto``: read off model.checkpoint's tensor shapes.
    arch: str = "auto"
    # Pretrained backbone: MAE (the authors' full or encoder-only files, the project's), a
    # timm / DeiT ViT, MoCo v1/v2/v3 (the authors' or the project's) or a torchvision ResNet.
    # None: random initialisation (a lower bound).
    checkpoint: Optional[str] = None
    allow_pickle: bool = False  # only for a file you trust that weights_only loading refuses
    # Which network of a checkpoint that holds several (DINO / iBOT / DINOv2: teacher | student; I-JEPA: target |
    # context); None: the one the paper evaluates (pretrain.backbones.read_backbone).
    variant: Optional[str] = None
    # Label written to results.json: mae | moco_v1 | moco_v2 | supervised | random | ...;
    # auto: guessed from the checkpoint (a ViT with a classifier or a plain torchvision
    # ResNet counts as supervised).
    pretrain: str = "auto"
    num_classes: Optional[int] = None  # None: the number of class folders in the data
    global_pool: str = "token"  # ViT: token (cls token after the final norm) | avg (patch tokens, then fc_norm)
    drop_path: float = 0.0
    layer_decay: float = 1.0  # ViT fine-tuning: lr scale decay^(depth + 1 - layer) per layer
    head_init_std: float = 0.01  # trunc-normal std of the new linear head (fc: normal)
    # ViT protocols: activation checkpointing of the blocks (timm's), less memory for about a third more
    # compute per step (fine-tuning; a frozen backbone keeps no activations anyway).
    grad_checkpointing: bool = False
    # mae_finetune: tune only the last N blocks (and the final norm and the head), the rest frozen: MAE's
    # partial fine-tuning (Figure 9; N = 0: head and norm). None: every block (the recipe).
    tune_blocks: Optional[int] = None


@dataclass
class ClsDataConfig:
    # A root holding train/ and val/ (ImageNet-style <split>/<class>/*); or set train / val.
    # Or ``synthetic: true``: a labelled folder of the built-in shapes is written under
    # train.output_dir (CPU demos, tests); never substituted for a missing dataset.
    path: Optional[str] = None
    train: Optional[str] = None
    val: Optional[str] = None
    synthetic: bool = False
    synthetic_per_class: int = 60  # synthetic data: training images per class (a quarter as many for val)
    img_size: int = 224
    crop_min_scale: float = 0.08  # RandomResizedCrop scale = (crop_min_scale, 1.0)
    interpolation: str = "bicubic"
    # The input normalisation of RGB in [0, 1]; None: the pretrained backbone's (BackboneExport.mean / std:
    # ImageNet's, CLIP's, none for SimCLR v1), ImageNet's without one.
    mean: Optional[List[float]] = None
    std: Optional[List[float]] = None
    crop_pct: float = 0.875  # evaluation: resize to img_size / crop_pct, centre crop img_size
    num_workers: int = 8
    # Training images: pil (the CPU loader) | dali (decode and crop on the GPU: the linear protocols; where
    # it cannot run, e.g. RandAugment on the host, the log says why and the run loads with pil).
    backend: str = "pil"
    # Fine-tuning regularisation (timm's implementations); off for the linear protocols.
    auto_augment: Optional[str] = None  # e.g. rand-m9-mstd0.5-inc1 (RandAugment m9, mstd 0.5)
    reprob: float = 0.0  # random erasing probability
    remode: str = "pixel"
    recount: int = 1
    mixup: float = 0.0  # mixup alpha (0: off)
    cutmix: float = 0.0  # cutmix alpha (0: off)
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    mixup_mode: str = "batch"
    smoothing: float = 0.0  # label smoothing
    # The task results.json names (transfer.results.TASKS): None = the protocol's ImageNet task (imagenet_linear,
    # imagenet_finetune); a transfer dataset names its own (inat2018_finetune, places365_finetune, ...).
    task: Optional[str] = None


@dataclass
class ClsTrainConfig(RunConfig):
    epochs: int = 90
    output_dir: str = "output/classification"
    ckpt_every_epochs: int = 1  # checkpoint-last.pth (resume); numbered copies below
    eval_every_epochs: int = 1  # and always at the end
    keep_every_epochs: int = 0  # also keep checkpoint-<epoch>.pth every N epochs (0: the last epoch only)
    eval_batch_size: Optional[int] = None  # default: batch_size


def _mae_linear_optim() -> OptimConfig:
    # LARS, base lr 0.1 (lr = 0.1 x batch / 256), no weight decay, 10 warm-up epochs, cosine.
    return OptimConfig(name="lars", base_lr=0.1, weight_decay=0.0, momentum=0.9, schedule="cosine",
                       warmup_epochs=10.0, min_lr=0.0)


def _mae_finetune_optim() -> OptimConfig:
    # AdamW (PyTorch's default betas, as the authors), base lr 5e-4 for ViT-B, wd 0.05.
    return OptimConfig(name="adamw", base_lr=5e-4, weight_decay=0.05, betas=[0.9, 0.999], schedule="cosine",
                       warmup_epochs=5.0, min_lr=1e-6)


def _moco_linear_optim() -> OptimConfig:
    # SGD lr 30 (absolute, as the authors: not scaled with the batch), momentum 0.9, no weight decay.
    return OptimConfig(name="sgd", lr=30.0, base_lr=30.0, weight_decay=0.0, momentum=0.9, schedule="step",
                       warmup_epochs=0.0, milestones=[60, 80])


@dataclass
class MAELinearConfig:
    protocol: str = "mae_linear"
    model: ClsModelConfig = field(default_factory=lambda: ClsModelConfig(global_pool="token", head_init_std=0.01))
    data: ClsDataConfig = field(default_factory=lambda: ClsDataConfig(interpolation="bicubic"))
    optim: OptimConfig = field(default_factory=_mae_linear_optim)
    train: ClsTrainConfig = field(default_factory=lambda: ClsTrainConfig(epochs=90, batch_size=512))


@dataclass
class MAEFinetuneConfig:
    protocol: str = "mae_finetune"
    model: ClsModelConfig = field(default_factory=lambda: ClsModelConfig(
        global_pool="avg", drop_path=0.1, layer_decay=0.65, head_init_std=2e-5))
    data: ClsDataConfig = field(default_factory=lambda: ClsDataConfig(
        interpolation="bicubic", auto_augment="rand-m9-mstd0.5-inc1", reprob=0.25, mixup=0.8, cutmix=1.0,
        smoothing=0.1))
    optim: OptimConfig = field(default_factory=_mae_finetune_optim)
    train: ClsTrainConfig = field(default_factory=lambda: ClsTrainConfig(epochs=100, batch_size=32))


@dataclass
class MoCoLinearConfig:
    protocol: str = "moco_linear"
    model: ClsModelConfig = field(default_factory=lambda: ClsModelConfig(arch="resnet50"))
    data: ClsDataConfig = field(default_factory=lambda: ClsDataConfig(interpolation="bilinear"))
    optim: OptimConfig = field(default_factory=_moco_linear_optim)
    train: ClsTrainConfig = field(default_factory=lambda: ClsTrainConfig(epochs=100, batch_size=32))


PROTOCOL_SCHEMAS = {"mae_linear": MAELinearConfig, "mae_finetune": MAEFinetuneConfig, "moco_linear": MoCoLinearConfig}


def load_cls_config(path: Optional[Union[str, Path]] = None, overrides: Sequence[str] = (),
                    protocol: Optional[str] = None):
    """A classification config: YAML (or the protocol's defaults) plus ``section.key=value`` overrides."""
    if protocol is not None:  # the command-line choice wins over the file's
        overrides = [f"protocol={protocol}", *overrides]
    return load_structured_config(PROTOCOL_SCHEMAS, "protocol", path, overrides, choice=protocol,
                                  validate=_validate)


def _validate(cfg, path):
    def fail(msg):
        raise ConfigError(f"{path or 'config'}: {msg}")

    t, o, m, d = cfg.train, cfg.optim, cfg.model, cfg.data
    validate_run(t, fail)
    if t.eval_every_epochs < 1:
        fail(f"train.eval_every_epochs must be >= 1, got {t.eval_every_epochs}")
    if o.name not in ("lars", "sgd", "adamw"):
        fail(f"optim.name must be lars, sgd or adamw, got {o.name!r}")
    if o.schedule not in ("cosine", "step"):
        fail(f"optim.schedule must be cosine or step, got {o.schedule!r}")
    if m.global_pool not in ("token", "avg"):
        fail(f"model.global_pool must be token or avg, got {m.global_pool!r}")
    if not 0.0 < m.layer_decay <= 1.0:
        fail(f"model.layer_decay must be in (0, 1], got {m.layer_decay}")
    if m.tune_blocks is not None and (cfg.protocol != "mae_finetune" or m.tune_blocks < 0):
        fail(f"model.tune_blocks (partial fine-tuning: the last N blocks learn) is for mae_finetune, with N >= 0; "
             f"got {m.tune_blocks} under {cfg.protocol}")
    if d.interpolation not in ("bicubic", "bilinear"):
        fail(f"data.interpolation must be bicubic or bilinear, got {d.interpolation!r}")
    if (d.mean is None) != (d.std is None) or any(v is not None and len(v) != 3 for v in (d.mean, d.std)):
        fail(f"data.mean and data.std are given together, three values each (RGB), got {d.mean} and {d.std}")
    if d.std is not None and min(d.std) <= 0:
        fail(f"data.std must be positive, got {d.std}")
    if not 0.0 < d.crop_pct <= 1.0:
        fail(f"data.crop_pct must be in (0, 1], got {d.crop_pct}")
    if (d.mixup > 0 or d.cutmix > 0) and t.batch_size % 2:
        fail(f"mixup / cutmix pair samples within a batch: train.batch_size must be even, got {t.batch_size}")
    if cfg.protocol == "moco_linear" and m.arch != "auto" and not m.arch.startswith(("resnet", "resnext", "wide_")):
        fail(f"moco_linear trains a torchvision ResNet; model.arch must name one (e.g. resnet50), got {m.arch!r}")
    if cfg.protocol == "moco_linear" and m.grad_checkpointing:
        fail("model.grad_checkpointing is for the ViT protocols; moco_linear's frozen ResNet keeps no activations")
    if cfg.protocol.startswith("mae_") and m.arch.startswith(("resnet", "resnext", "wide_")):
        fail(f"{cfg.protocol} trains a ViT; model.arch must name one (e.g. vit_base_patch16), got {m.arch!r}")
    if d.task is not None and "top1" not in TASKS.get(d.task, ()):
        fail(f"data.task must be a classification task of transfer.results.TASKS, one that reports top1 "
             f"({', '.join(t for t, m in TASKS.items() if 'top1' in m)}), got {d.task!r}")
    validate_backend(d, fail)
    validate_data_source(d, fail, "/data/imagenet holding train/ and val/; or data.train and data.val")
