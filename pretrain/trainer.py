"""The pretraining loop shared by every method.

One optimizer step = ``accum_iter`` micro-batches; the learning rate follows the
schedule per step (fractional epoch). Checkpoints hold everything a resumed run
needs to end where an uninterrupted one would: model, optimizer, grad scaler,
position (epoch, micro-batch within it, step), and every process's RNG state;
the data order is a function of (seed, epoch) and each sample's augmentation of
its own seed (``pretrain.data``), so skipping the consumed batches restores it.
"""
from __future__ import annotations

import abc
import contextlib
import logging
import math
import os
import random
import resource
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP

from . import distributed as du
from .checkpoint import load_file, save_atomic, write_text_atomic
from .config import to_yaml
from .data import (ResumableSampler, WithIndex, build_pretrain_dataset, build_train_loader, check_full_step,
                   check_training_data, describe_dataset)
from .errors import InputNotFound
from .knn import knn_evaluate, labelled_folders
from .logger import MetricLogger, progress, setup_logging
from .methods import get_method
from .precision import autocast_dtype, matmul_shapes
from .schedule import lr_at, set_lr

log = logging.getLogger(__name__)

LAST = "last"  # checkpoint-last.pth / checkpoint_last.pth.tar: always the newest


def rng_state() -> Dict:
    """This process's RNG streams: torch's CPU generator, Python's, NumPy's, and the generator of its own
    GPU (the current CUDA device; a resumed run may see fewer or more GPUs, in another order)."""
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": _numpy_state_to_tensor(np.random.get_state()),
    }
    if torch.cuda.is_available():
        state["cuda_device"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: Dict):
    """Restore ``rng_state()``'s streams (the GPU's into the current CUDA device's generator)."""
    torch.set_rng_state(state["torch"])
    random.setstate(_to_tuple(state["python"]))
    np.random.set_state(_tensor_to_numpy_state(state["numpy"]))
    if not torch.cuda.is_available():
        return
    if "cuda_device" in state:
        torch.cuda.set_rng_state(state["cuda_device"])
    elif "cuda" in state:  # older checkpoints: every visible GPU's generator, by device index
        index = torch.cuda.current_device()
        if index < len(state["cuda"]):
            torch.cuda.set_rng_state(state["cuda"][index])
        else:
            log.warning("the checkpoint holds the RNG state of %d GPU(s), none for this process's cuda:%d: "
                        "its CUDA random stream starts afresh", len(state["cuda"]), index)


def _numpy_state_to_tensor(s):
    # Plain types and tensors only, so the checkpoint loads with weights_only=True.
    return {"keys": torch.from_numpy(s[1].astype(np.int64)), "pos": int(s[2]), "has_gauss": int(s[3]),
            "gauss": float(s[4])}


def _tensor_to_numpy_state(d):
    return ("MT19937", d["keys"].numpy().astype(np.uint32), d["pos"], d["has_gauss"], d["gauss"])


def _to_tuple(x):
    return tuple(_to_tuple(i) for i in x) if isinstance(x, (list, tuple)) else x


def peak_memory_mb(device: torch.device) -> float:
    """Peak CUDA allocation, or this process's peak resident memory (MiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:  # VmHWM restarts at exec; ru_maxrss would carry a parent's peak into a child
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def configure_attention(model: nn.Module, device_type: str, amp_dtype: Optional[torch.dtype]) -> bool:
    """Pick timm's attention path for the run; returns whether the fused one is used.

    Fused scaled-dot-product attention everywhere except CPU bf16 training, where
    its backward kernel is slower than the explicit softmax(QK^T)V path (1.27 s vs
    1.67 s per ViT-B MAE step on 2 Xeon cores; benchmarks/mae_masked_encoding.py).
    """
    fused = not (device_type == "cpu" and amp_dtype == torch.bfloat16)
    for m in model.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = fused
    return fused


def compile_model(module: torch.nn.Module) -> torch.nn.Module:
    """``train.compile``: ``torch.compile(module)``, where ``module`` is what the loss runs through (under
    DDP the wrapper, as PyTorch advises: its DDP optimizer splits the graph at the gradient buckets so
    that communication still overlaps the backward). The caller keeps the uncompiled model for
    checkpoints. After the first forward (when dynamo has traced it) the graph breaks, each a piece that
    runs eagerly, are logged with dynamo's reason: what to fix for a faster compiled step."""
    from torch._dynamo.utils import counters

    before = dict(counters["graph_break"])
    # fallback_random: masks, shuffles and drop path draw eager's random numbers from the generator the
    # checkpoints save, so a compiled run trains on the eager run's masks and resumes exactly.
    compiled = torch.compile(module, options={"fallback_random": True})

    def log_graph_breaks(*_):
        handle.remove()
        breaks = {reason: n - before.get(reason, 0) for reason, n in counters["graph_break"].items()
                  if n > before.get(reason, 0)}
        if breaks:
            log.warning("torch.compile: %d graph break(s) in the training forward:\n%s", sum(breaks.values()),
                        "\n".join(f"  {n} x {reason}" for reason, n in breaks.items()))
        else:
            log.info("torch.compile: the training forward compiled without graph breaks")

    handle = compiled.register_forward_hook(log_graph_breaks)
    return compiled


def set_determinism(deterministic: bool):
    """``train.deterministic``, for this process: PyTorch's deterministic algorithms and no cuDNN
    autotuning, or (false) cuDNN's autotuned kernels. Global torch flags, set either way, so that one
    run's setting never carries over into the next run in the same process."""
    if deterministic:
        # cuBLAS sums in an order of its choosing unless its workspace is fixed; it reads this when CUDA
        # creates its handle, so before any CUDA work (a value the user set is kept).
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    # warn_only: an op PyTorch has no deterministic CUDA kernel for (adaptive average pooling's backward,
    # among a few) is named in a warning instead of stopping the run.
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic  # autotuning times kernels: its choice varies run to run


def use_channels_last(model: torch.nn.Module, enabled: bool) -> bool:
    """``train.channels_last``: a ResNet's weights, and so its activations, in channels-last memory format (the
    layout oneDNN's and cuDNN's fastest convolutions use; a ViT's one patch convolution gains nothing). Not
    with MoCo's split batch norm, whose sub-batch view needs contiguous maps. Returns whether applied."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    if not enabled or not bns or any(getattr(m, "num_splits", 1) > 1 for m in bns):
        return False
    model.to(memory_format=torch.channels_last)
    log.info("train.channels_last: the convolutions run in channels-last memory format")
    return True


def start_run(t, config_yaml: str, config_file: str = "config.yaml"):
    """What every training command does first, from its ``train`` config section: ``join_run`` then
    ``open_run``. Returns (distributed context, output folder); the precision is decided once the model is
    built (``autocast_dtype`` measures at its widths)."""
    dist = join_run(t)
    return dist, open_run(t, dist, config_yaml, config_file)


def join_run(t) -> du.DistInfo:
    """Choose deterministic or autotuned kernels (``train.deterministic``), join the processes
    (``train.dist_timeout_min``), seed. Nothing is written yet: a trainer checks its inputs (data,
    checkpoints) between this and ``open_run``, so that a run refused for them leaves no file behind."""
    set_determinism(t.deterministic)
    dist = du.init_distributed(t.device, t.dist_backend, t.dist_timeout_min)
    # Different masks / shuffles / augmentations per process, reproducible per run.
    seed = t.seed + dist.rank
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    return dist


def open_run(t, dist: du.DistInfo, config_yaml: str, config_file: str = "config.yaml") -> Path:
    """Open the output folder and its log, save the config (``config_file``); returns the folder."""
    out = Path(t.output_dir)
    setup_logging(str(out), dist.is_main)
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / config_file, config_yaml)  # a full disk leaves the earlier one whole
    if t.deterministic:
        log.info("train.deterministic: deterministic algorithms, no cuDNN autotuning (CUBLAS_WORKSPACE_CONFIG=%s): "
                 "a resumed run ends bitwise where an uninterrupted one would, on a GPU too",
                 os.environ["CUBLAS_WORKSPACE_CONFIG"])
    elif dist.device.type == "cuda":
        log.info("train.deterministic=false: cuDNN autotuning on; a resumed GPU run is statistically equivalent "
                 "to an uninterrupted one, not bitwise equal (train.deterministic=true for that, slower)")
    return out


def read_checkpoint(path, allow_pickle: bool = False):
    """``load_file``, with a missing file reported as the user's (``InputNotFound``) like an unreadable one."""
    if not Path(path).is_file():
        raise InputNotFound(f"checkpoint not found: {path}: give an existing checkpoint file, or --resume alone "
                            f"for the newest one in the output folder")
    return load_file(path, allow_pickle=allow_pickle)


class WaitTimer:
    """Iterates ``iterable``, adding up the seconds spent waiting for its items (``waited``):
    the time the training step stood idle for data."""

    def __init__(self, iterable):
        self.iterable, self.waited = iterable, 0.0

    def __iter__(self):
        start = time.perf_counter()
        items = iter(self.iterable)  # workers start here: waiting too
        while True:
            try:
                item = next(items)
            except StopIteration:
                return
            finally:
                self.waited += time.perf_counter() - start
            yield item
            start = time.perf_counter()


class TrainerBase(abc.ABC):
    """The training loop the pretraining Trainer and the classification trainer share, after
    ``start_run``: ``fit`` runs epochs from any position (per-iteration lr and the ``before_step``
    hook, gradient accumulation without DDP sync in between, scaled backward, clipping, logging
    windows, mid-epoch checkpoints), stops at the same step on every process, and restores a
    checkpoint's position and RNG streams. A subclass sets the attributes declared below (``setup_training``
    sets the training ones) and defines ``batch_loss``, ``save``, ``after_epoch`` and ``finish``.

    The loader delivers what the dataset's transform leaves (uint8, ``pretrain.transforms``);
    ``device_transform`` (the dataset's) finishes a batch on the device. The logs say which share of
    the step time went to waiting for data (``data_wait``): near 1, the loader is the bottleneck.
    """

    # set by the subclass
    cfg: Any  # its typed config: ``train`` (RunConfig) and ``optim`` (OptimConfig) sections
    dist: du.DistInfo
    out: Path  # output folder
    device: torch.device
    amp_dtype: Optional[torch.dtype]
    model: torch.nn.Module
    metrics: MetricLogger
    # set by setup_training
    ddp: torch.nn.Module  # the model, under DDP when distributed
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    lr: float  # the peak learning rate (the schedule's base)
    eff_batch: int
    sampler: ResumableSampler
    train_loader: Any
    device_transform: Callable
    iters_per_epoch: int  # micro-batches
    # position: the next micro-batch to run; step counts optimizer steps
    epoch: int = 0
    iter: int = 0
    step: int = 0
    stopped: bool = False  # train_epoch stopped early (max_iters, a signal)
    _stop_requested: bool = False
    step_values: Dict[str, float] = {}  # before_step's values to log with the next window
    last_stats: Dict[str, float] = {}  # the last logged window's (what fit returns for pretraining)

    def setup_training(self, dataset, build_optimizer: Callable[[float], torch.optim.Optimizer], backend: str):
        """Sampler, loader (``backend``: ``pretrain.data.BACKENDS``), the dataset's device transform, whole
        steps per epoch, effective batch, lr (``optim.lr``, else ``optim.base_lr`` x effective batch / 256),
        optimizer, grad scaler, DDP wrapper."""
        t, o, d = self.cfg.train, self.cfg.optim, self.cfg.data
        self.sampler = ResumableSampler(len(dataset), self.dist.rank, self.dist.world_size, seed=t.seed)
        self.train_loader = build_train_loader(dataset, self.sampler, t.batch_size, d.num_workers, self.device,
                                               t.seed, backend)
        self.device_transform = dataset.device_transform
        # Whole optimizer steps per epoch (a partial accumulation at the end is dropped).
        check_full_step(len(dataset), t.batch_size, t.accum_iter, self.dist.world_size, "the dataset")
        self.iters_per_epoch = (self.sampler.num_per_rank // t.batch_size) // t.accum_iter * t.accum_iter
        self.eff_batch = t.batch_size * t.accum_iter * self.dist.world_size
        self.lr = o.lr if o.lr is not None else o.base_lr * self.eff_batch / 256
        self.optimizer = build_optimizer(self.lr)
        self.scaler = torch.amp.GradScaler("cuda", enabled=t.amp == "fp16")
        self.ddp = (
            DDP(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
            if self.dist.distributed else self.model
        )
        if t.compile:  # the loss runs through self.ddp; checkpoints save self.model (no ``_orig_mod.`` keys)
            self.ddp = compile_model(self.ddp)

    def position_state(self) -> Dict:
        """The trainer's position for a checkpoint: where the run is, and every process's RNG streams."""
        return {"epoch": self.epoch, "iter": self.iter, "step": self.step,
                "rng": du.all_gather_object(rng_state()), "world_size": self.dist.world_size}

    def write_checkpoint(self, ckpt: Dict, tags, name: Callable[[Any], str]):
        """Write ``ckpt`` as ``name(tag)`` for each tag (main process), then wait for every process."""
        if self.dist.is_main:
            for tag in tags:
                save_atomic(ckpt, self.out / name(tag))
            log.info("saved %s (epoch %d, iter %d, step %d)", ", ".join(name(t) for t in tags),
                     self.epoch, self.iter, self.step)
        du.barrier()

    @abc.abstractmethod
    def batch_loss(self, batch) -> Tuple[torch.Tensor, Dict, int]:
        """(loss of one micro-batch under autocast, extra values to log (numbers or 0-d tensors,
        read only when logged), images in it)."""

    @abc.abstractmethod
    def save(self, tags) -> None:
        """Write a checkpoint under each tag (an epoch, or ``LAST``)."""

    @abc.abstractmethod
    def after_epoch(self, done: bool) -> None:
        """After each finished epoch (``self.epoch`` is the next one; ``done``: the last): evaluation,
        checkpoints."""

    @abc.abstractmethod
    def finish(self, stopped: bool) -> Dict:
        """After the run (``stopped``: early, resumable): close logs, write results; returns them."""

    def fit(self) -> Dict:
        """Train from the current position to ``train.epochs``; a stop writes a resumable checkpoint."""
        t = self.cfg.train
        while self.epoch < t.epochs:
            self.last_stats = self.train_epoch()
            if self.stopped:
                self.save([LAST])
                log.info("stopped at epoch %d, iter %d; resume with --resume", self.epoch, self.iter)
                break
            self.epoch, self.iter = self.epoch + 1, 0
            self.after_epoch(done=self.epoch == t.epochs)
        return self.finish(self.stopped)

    def set_train_mode(self):
        self.ddp.train()

    def before_step(self, epoch: float):
        """The per-step hook, before an optimizer step's first micro-batch, at fractional ``epoch``: sets the
        learning rate; a subclass adds its schedules (their values to log go in ``step_values``)."""
        t, o = self.cfg.train, self.cfg.optim
        set_lr(self.optimizer, lr_at(epoch, self.lr, t.epochs, o.schedule, o.warmup_epochs, o.min_lr, o.milestones))

    def train_epoch(self) -> Dict:
        """Run the current epoch from ``self.iter``; returns the last logged window's stats."""
        t, o = self.cfg.train, self.cfg.optim
        self.sampler.set_position(self.epoch, self.iter * t.batch_size)
        self.set_train_mode()
        trained = [p for p in self.model.parameters() if p.requires_grad]
        bar = progress(self.iters_per_epoch, f"epoch {self.epoch}", initial=self.iter,
                       enabled=t.progress and self.dist.is_main)
        window_loss, window_imgs, window_start = [], 0, time.perf_counter()
        stats = {}
        batches = WaitTimer(self.train_loader)
        for batch in batches:
            if self.iter >= self.iters_per_epoch:
                break
            boundary = (self.iter + 1) % t.accum_iter == 0
            if self.iter % t.accum_iter == 0:
                self.before_step(self.epoch + self.iter / self.iters_per_epoch)
            sync = contextlib.nullcontext() if boundary or not self.dist.distributed else self.ddp.no_sync()
            with sync:
                loss, extra, images = self.batch_loss(batch)
                extra = {**self.step_values, **extra}
                loss_value = loss.item()
                if not math.isfinite(loss_value):
                    raise FloatingPointError(f"loss is {loss_value} at epoch {self.epoch} iter {self.iter}; stopping")
                self.scaler.scale(loss / t.accum_iter).backward()
            if boundary:
                if o.clip_grad:
                    self.scaler.unscale_(self.optimizer)
                    torch.nn.utils.clip_grad_norm_(trained, o.clip_grad)
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.optimizer.zero_grad(set_to_none=True)
                self.step += 1
            self.iter += 1
            window_loss.append(loss_value)
            window_imgs += images * self.dist.world_size
            if boundary and (self.step % t.log_every == 0 or self.iter == self.iters_per_epoch):
                elapsed = time.perf_counter() - window_start
                data_wait, batches.waited = batches.waited / max(elapsed, 1e-9), 0.0
                stats = {
                    "epoch": self.epoch, "iter": self.iter,
                    "loss": du.all_reduce_mean(sum(window_loss) / len(window_loss), self._reduce_device()),
                    "lr": max(g["lr"] for g in self.optimizer.param_groups),  # the top layer's, under layer decay
                    "images_per_s": window_imgs / max(elapsed, 1e-9),
                    "data_wait": data_wait,  # share of the window's time spent waiting for the loader
                    "memory_mb": peak_memory_mb(self.device), **{k: float(v) for k, v in extra.items()},
                }
                self.metrics.log(self.step, **stats)
                bar.set_postfix(loss=f"{stats['loss']:.4f}", lr=f"{stats['lr']:.2e}", data=f"{data_wait:.0%}")
                window_loss, window_imgs, window_start = [], 0, time.perf_counter()
            bar.update(1)  # after the stats, so that a plain progress line shows this step's loss
            if boundary and t.ckpt_every_iters and self.step % t.ckpt_every_iters == 0 \
                    and self.iter < self.iters_per_epoch:
                self.save([LAST])
            if boundary and self._should_stop():
                self.stopped = True
                break
        bar.close()
        return stats

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def request_stop(self, *_):
        """Stop at the next optimizer step and write a checkpoint (SIGTERM / SIGINT handler)."""
        self._stop_requested = True

    def _should_stop(self) -> bool:
        t = self.cfg.train
        flag = self._stop_requested or (t.max_iters is not None and self.step >= t.max_iters)
        if self.dist.distributed:  # every process must stop at the same step
            flag = du.all_reduce_mean(float(flag), self._reduce_device()) > 0
        return flag

    def _reduce_device(self):
        return self.device if self.device.type == "cuda" else torch.device("cpu")

    def restore_position(self, tr: Dict):
        """The position (epoch, iter, step) of a checkpoint's trainer state, and this process's RNG
        streams when the run had as many processes."""
        self.epoch, self.iter, self.step = tr["epoch"], tr["iter"], tr["step"]
        if tr["world_size"] == self.dist.world_size:
            set_rng_state(tr["rng"][self.dist.rank])
        else:
            log.warning("resuming on %d processes from a run on %d: data order and RNG streams change",
                        self.dist.world_size, tr["world_size"])


class Trainer(TrainerBase):
    def __init__(self, cfg, resume: Optional[str] = None):
        self.cfg = cfg
        t = cfg.train
        self.method = get_method(cfg.method)
        self.dist = join_run(t)
        self.device = self.dist.device
        # The data first: a dataset the run cannot train on stops it before a model is built or a file written.
        dataset = build_pretrain_dataset(
            cfg.data, self.method.build_transform(cfg, self.device), seed=t.seed,
            bad_list=str(Path(t.output_dir) / "unreadable_images.txt"),
        )
        check_training_data(dataset, t.batch_size, t.accum_iter, self.dist.world_size)
        if t.knn_every_epochs and cfg.data.knn_train and cfg.data.knn_val:  # the kNN monitor's folders too
            labelled_folders(cfg.data.knn_train, cfg.data.knn_val, cfg.data.img_size)
        resume_ckpt = read_checkpoint(resume) if resume and resume != "auto" else None  # a wrong file stops here too
        self.out = open_run(t, self.dist, to_yaml(cfg))
        log.info("data: %s", describe_dataset(dataset))
        if self.method.sample_index(cfg):
            dataset = WithIndex(dataset)

        self.model = self.method.build_model(cfg, self.dist.world_size).to(self.device)
        use_channels_last(self.model, t.channels_last)
        self.amp_dtype = autocast_dtype(t.amp, self.device, matmul_shapes(self.model))
        configure_attention(self.model, self.device.type, self.amp_dtype)
        self.method.prepare(self.model, cfg, dataset)
        self.setup_training(dataset, lambda lr: self.method.build_optimizer(self.model, cfg, lr), cfg.data.backend)
        self.epoch, self.iter, self.step = 0, 0, 0  # position: next micro-batch to run
        self._stop_requested = self.stopped = False
        self.metrics = MetricLogger(str(self.out), self.dist.is_main, t.tensorboard)
        if resume:
            self.resume(resume, resume_ckpt)
        log.info("%s: %d images, %d steps/epoch, effective batch %d, lr %.3g, device %s, %d process(es)",
                 cfg.method, len(dataset), self.iters_per_epoch // t.accum_iter, self.eff_batch, self.lr,
                 self.device, self.dist.world_size)

    # ------------------------------------------------------------ checkpoints
    def checkpoint_path(self, tag) -> Path:
        return self.out / self.method.checkpoint_name(tag)

    def state(self, finished_epoch: int) -> Dict:
        ckpt = self.method.pack(self.model, self.cfg, finished_epoch)
        ckpt["optimizer"] = self.optimizer.state_dict()
        ckpt["scaler"] = self.scaler.state_dict()
        ckpt["trainer"] = self.position_state()
        ckpt["config"] = to_yaml(self.cfg)
        return ckpt

    def save(self, tags):
        self.write_checkpoint(self.state(finished_epoch=self.epoch - 1), tags, self.method.checkpoint_name)

    def resume(self, path: str, ckpt: Optional[Dict] = None):
        """Restore from ``path`` (``ckpt``: its contents, read already), or from the newest checkpoint in
        output_dir when path is 'auto'."""
        if path == "auto":
            p = self.checkpoint_path(LAST)
            if not p.is_file():
                log.info("no checkpoint in %s: starting from scratch", self.out)
                return
            path = str(p)
        if ckpt is None:
            ckpt = read_checkpoint(path)
        self.method.unpack(self.model, ckpt)
        if "optimizer" in ckpt:
            self.optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        tr = ckpt.get("trainer")
        if tr is None:  # the authors' file: resume at the start of the next epoch
            self.epoch = self.method.epochs_done(ckpt)
            self.iter, self.step = 0, self.epoch * (self.iters_per_epoch // self.cfg.train.accum_iter)
        else:
            self.restore_position(tr)
        log.info("resumed from %s at epoch %d, iter %d, step %d", path, self.epoch, self.iter, self.step)

    # --------------------------------------------------------------- training
    def after_epoch(self, done: bool):
        t = self.cfg.train
        if t.knn_every_epochs and self.epoch % t.knn_every_epochs == 0:
            self.knn_monitor()
        if done or self.epoch % t.ckpt_every_epochs == 0:
            self.save([self.epoch - 1, LAST])

    def finish(self, stopped: bool) -> Dict:
        """Close the logs; at the end of the schedule, write the backbone export (``backbone/``: safetensors +
        timm config.json, ``pretrain.backbones``)."""
        self.metrics.close()
        if not stopped and self.dist.is_main and self.cfg.train.export_backbone:
            ckpt = {**self.method.pack(self.model, self.cfg, self.epoch - 1), "config": to_yaml(self.cfg)}
            export = self.method.export(ckpt, str(self.checkpoint_path(self.epoch - 1)))
            log.info("backbone (%s %s, %s) exported to %s", export.family, export.arch, export.label,
                     export.save(self.out / "backbone"))
        du.barrier()
        return self.last_stats

    def before_step(self, epoch: float):
        super().before_step(epoch)
        self.step_values = self.method.on_step(self.model, self.cfg, epoch)

    def batch_loss(self, batch):
        images = self.device_transform(batch[0], self.device)
        batch = [images] + [b.to(self.device, non_blocking=True) if torch.is_tensor(b) else b for b in batch[1:]]
        with self.autocast():
            loss, extra = self.method.loss(self.ddp, batch, self.cfg)
        return loss, extra, images.shape[0]

    def knn_monitor(self):
        d = self.cfg.data
        if not (d.knn_train and d.knn_val):
            log.warning("train.knn_every_epochs is set but data.knn_train / data.knn_val are not: no kNN monitor")
            return
        # Every process extracts and scores its share (no process waits on another's whole pass).
        self.model.eval()
        res = knn_evaluate(lambda x: self.method.features(self.model, x), d.knn_train, d.knn_val,
                           img_size=d.img_size, device=self.device, num_workers=d.num_workers)
        self.model.train()
        if self.dist.is_main:
            log.info("kNN monitor after epoch %d: %s", self.epoch, res)
            self.metrics.log(self.step, prefix="knn", epoch=self.epoch, **{f"knn_{k}": v for k, v in res.items()})

