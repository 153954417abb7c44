"""The classification loop shared by every protocol: train, evaluate, checkpoint, resume, report.

Follows the pretraining trainer (``pretrain.trainer``): the learning rate moves every
step (fractional epoch; ``lr_scale`` per group for layer-wise decay); checkpoints hold
model, optimizer, grad scaler, position (epoch, micro-batch, step) and every process's
RNG state, and the data order and each sample's augmentation are functions of (seed,
epoch, position), so a resumed run ends where an uninterrupted one would. Evaluation
splits the labelled folder over the processes and sums the counts, so top-1 / top-5 are
exact under DDP. The linear protocols end with the authors' sanity check: every frozen
tensor must equal the pretrained checkpoint's, or the run fails.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, Optional

import torch
import torch.distributed as dist
from omegaconf import OmegaConf, read_write
from torch.utils.data import DataLoader, Subset

from pretrain import distributed as du
from pretrain.backbones import read_backbone
from pretrain.checkpoint import CheckpointFormatError, load_file, unwrap_state_dict
from pretrain.data import check_full_step, worker_init
from pretrain.errors import ConfigError, DataError, InputNotFound
from pretrain.logger import MetricLogger
from pretrain.precision import autocast_dtype, matmul_shapes
from pretrain.trainer import LAST, TrainerBase, configure_attention, join_run, open_run, use_channels_last
from transfer.results import EVAL_RESULTS_FILE, RESULTS_FILE, holds_training_record, pretrain_label, write_results

from .config import to_yaml
from .data import build_criterion, build_datasets, build_mixup, input_normalization, resolve_splits, uses_files
from .protocols import build_optimizer, protocol

log = logging.getLogger(__name__)

# The MAE authors' names (checkpoint-<epoch>.pth, checkpoint-last.pth), as their fine-tuning code writes.
def checkpoint_name(tag) -> str:
    return f"checkpoint-{tag}.pth"  # the layout of the MAE authors' main_finetune / main_linprobe


def topk_correct(logits: torch.Tensor, target: torch.Tensor, ks=(1, 5)) -> Dict[int, int]:
    """How many samples have their label among the k highest logits, for each k."""
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
    hit = top == target[:, None]
    return {k: int(hit[:, :k].any(dim=1).sum()) for k in ks}


def restore_pretrained_checkpoint(cfg, resume: str) -> None:
    """A resumed run without model.checkpoint takes the pretrained weights its own saved config names
    (``config.yaml`` beside the checkpoint resumed), as does the frozen check at its end: resuming
    must not mean training on from random initialisation."""
    m = cfg.model
    if m.checkpoint:
        return
    ckpt = Path(cfg.train.output_dir) / checkpoint_name(LAST) if resume == "auto" else Path(resume)
    saved = ckpt.parent / "config.yaml"
    if not ckpt.is_file() or not saved.is_file():
        return  # nothing to resume (a fresh start), or a file not written by this tool
    model = OmegaConf.load(saved).get("model") or {}
    if not model.get("checkpoint"):
        return  # the run itself started from random initialisation
    with read_write(cfg):
        m.checkpoint = model["checkpoint"]
        if m.pretrain == "auto" and model.get("pretrain"):
            m.pretrain = model["pretrain"]
        if m.variant is None and model.get("variant"):  # the same network of that file
            m.variant = model["variant"]
    log.info("resuming: model.checkpoint=%s, from the run's saved %s", m.checkpoint, saved)


class FrozenWeightsChanged(RuntimeError):
    """A linear protocol changed a tensor of the frozen backbone."""


class ClassificationTrainer(TrainerBase):
    def __init__(self, cfg, resume: Optional[str] = None, eval_only: bool = False):
        self.cfg, self.eval_only = cfg, eval_only
        t, d, m = cfg.train, cfg.data, cfg.model
        self.protocol = protocol(cfg.protocol)
        if resume and not eval_only:  # before open_run replaces the run's saved config.yaml
            restore_pretrained_checkpoint(cfg, resume)
        self.dist = join_run(t)
        self.device = self.dist.device  # join_run set cuDNN autotuning, or deterministic kernels

        # ---- the inputs, checked before a model is built or a file written: the files named, the data
        if m.checkpoint and not Path(m.checkpoint).is_file():
            raise InputNotFound(f"model.checkpoint not found: {m.checkpoint}: give the pretrained weights "
                                f"(--checkpoint PATH), or no model.checkpoint to train from random initialisation")
        # Read once, here (before the data: its transforms normalise the inputs as the backbone was trained).
        pretrained = read_backbone(m.checkpoint, m.allow_pickle, variant=m.variant) if m.checkpoint else None
        if pretrained is None and m.variant is not None:
            raise ConfigError(f"model.variant={m.variant} (--variant) picks a network of model.checkpoint, but there "
                              f"is none: give --checkpoint, or leave the variant out")
        if pretrained is not None:
            self.protocol.check_pretrained(cfg, pretrained)
        # The inputs normalised as the backbone was trained (unless data.mean / data.std say; in the recipe).
        self.input_norm = input_normalization(d, (pretrained.mean, pretrained.std) if pretrained is not None else None)
        if uses_files(d):
            self.open_data(t.output_dir)
        if resume and resume != "auto" and not Path(resume).is_file():
            raise InputNotFound(f"checkpoint not found: {resume}: give an existing checkpoint (--resume PATH), "
                                f"or --resume alone for the newest one in the output folder")
        newest = Path(t.output_dir) / checkpoint_name(LAST)
        if eval_only and resume in (None, "auto") and not newest.is_file():
            raise InputNotFound(
                f"--eval-only needs a trained classifier: no {newest}; pass --resume PATH (this tool's "
                f"checkpoint, the authors' fine-tuned or linear-classification file, a torchvision model)")
        # An evaluation keeps its config apart: config.yaml stays the training run's (what --resume restores).
        self.out = open_run(t, self.dist, to_yaml(cfg), "config_eval.yaml" if eval_only else "config.yaml")
        if not uses_files(d):  # the synthetic folder, which rank 0 writes into the output folder
            if self.dist.is_main:
                resolve_splits(d, self.out)
            du.barrier()
            self.open_data(self.out)
        if not eval_only:
            log.info("data: %d train images from %s, %d val images from %s (%s)", len(self.train_set),
                     self.train_set.root.resolve(), len(self.val_set), self.val_set.root.resolve(),
                     "files" if uses_files(d) else "built-in synthetic shapes (data.synthetic=true), not a real dataset")
        shard = Subset(self.val_set, range(self.dist.rank, len(self.val_set), self.dist.world_size))
        self.val_loader = DataLoader(shard, batch_size=t.eval_batch_size or t.batch_size, shuffle=False,
                                     num_workers=d.num_workers, pin_memory=self.device.type == "cuda",
                                     worker_init_fn=worker_init, generator=torch.Generator().manual_seed(t.seed))

        # ---- model, pretrained weights, frozen parts
        self.model, self.backbone = self.protocol.build_model(cfg, self.num_classes, pretrained)
        # Evaluating a trained classifier: its checkpoint's own record fills the label in (resume).
        self.pretrain = pretrain_label(m.pretrain, pretrained.label if pretrained is not None else None,
                                       pretrained is not None or eval_only)
        self.pretrain_epochs = pretrained.provenance.epochs if pretrained is not None else None
        fresh = None  # keys the pretrained file does not hold (all of them without a file)
        if pretrained is not None and not eval_only:
            report = self.protocol.load_pretrained(self.model, cfg, pretrained)
            fresh = set(report.missing_by_design)
            log.info("pretrained weights (%s%s):\n%s", self.pretrain,
                     f", {self.pretrain_epochs} epochs" if self.pretrain_epochs else "", report.format())
        elif not eval_only:
            log.warning("no model.checkpoint: training from random initialisation (pretrain=%s)", self.pretrain)
        del pretrained
        self.protocol.freeze(self.model, cfg)
        # The frozen check compares these with their initial values, the rest with the pretrained file.
        frozen = set() if eval_only else set(self.protocol.frozen_keys(self.model))
        self._initial_frozen = {k: v.detach().clone() for k, v in self.model.state_dict().items()
                                if k in frozen and (fresh is None or k in fresh)}
        self.pretrained_checkpoint = m.checkpoint
        self.model.to(self.device)
        use_channels_last(self.model, t.channels_last)
        self.amp_dtype = autocast_dtype(t.amp, self.device, matmul_shapes(self.model))
        configure_attention(self.model, self.device.type, self.amp_dtype if not eval_only else None)
        self.epoch, self.iter, self.step = 0, 0, 0
        self.last_eval: Dict = {}
        self.best_eval: Dict = {}  # the evaluation with the highest top-1 so far (the authors report it)
        self.metrics = MetricLogger(str(self.out), self.dist.is_main, t.tensorboard)
        self._stop_requested = self.stopped = False

        if eval_only:
            self.resume(resume or "auto")
            return

        # ---- training data, optimizer, DDP
        self.setup_training(self.train_set,
                            lambda lr: build_optimizer(self.protocol.param_groups(self.model, cfg), cfg.optim, lr),
                            backend=d.backend)
        self.mixup = build_mixup(d, self.num_classes)
        self.criterion = build_criterion(d, self.mixup)
        n_train = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        if resume:
            self.resume(resume)
        log.info("%s on %s (%s): %d classes, %d train / %d val images, %d steps/epoch, effective batch %d, "
                 "lr %.3g, %s trainable parameters, device %s, %d process(es)", cfg.protocol, self.backbone,
                 self.pretrain, self.num_classes, len(self.train_set), len(self.val_set),
                 self.iters_per_epoch // t.accum_iter, self.eff_batch, self.lr, f"{n_train:,}", self.device,
                 self.dist.world_size)

    def open_data(self, output_dir) -> None:
        """The datasets (``data``), checked: their classes match the model's, every split has a readable
        image, the training set makes one whole step on every process (a DataError, else)."""
        t, m = self.cfg.train, self.cfg.model
        self.train_set, self.val_set, self.classes = build_datasets(self.cfg.data, output_dir, self.eval_only,
                                                                    self.input_norm)
        self.num_classes = m.num_classes or len(self.classes)
        if self.num_classes != len(self.classes):
            raise DataError(f"model.num_classes={m.num_classes} but the data has {len(self.classes)} class folders "
                            f"({', '.join(self.classes[:5])}{', ...' if len(self.classes) > 5 else ''}): set "
                            f"model.num_classes={len(self.classes)}, or leave it unset to count the folders")
        self.val_set.check_readable()
        if self.train_set is not None:
            self.train_set.check_readable()
            check_full_step(len(self.train_set), t.batch_size, t.accum_iter, self.dist.world_size,
                            self.train_set.root)

    # ------------------------------------------------------------ checkpoints
    def save(self, tags):
        ckpt = {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(), "epoch": self.epoch - 1,  # the last finished (authors' layout)
            "protocol": self.cfg.protocol, "metrics": self.last_eval, "best_metrics": self.best_eval,
            "backbone": self.backbone,
            "pretrain": self.pretrain, "pretrained_checkpoint": self.pretrained_checkpoint,
            "pretrain_epochs": self.pretrain_epochs,
            "trainer": self.position_state(), "config": to_yaml(self.cfg),
        }
        self.write_checkpoint(ckpt, tags, checkpoint_name)

    def resume(self, path: str):
        """Restore a run from ``path`` ('auto': the newest in output_dir). With --eval-only, the
        weights of any classifier in this layout: this tool's checkpoints, the authors' MAE
        fine-tuned / linear-probe files, MoCo's main_lincls files, torchvision classifiers."""
        if path == "auto":
            p = self.out / checkpoint_name(LAST)
            if not p.is_file():  # (--eval-only refused this before the run started)
                log.info("no checkpoint in %s: starting from scratch", self.out)
                return
            path = str(p)
        ckpt = load_file(path, allow_pickle=self.cfg.model.allow_pickle)
        sd = unwrap_state_dict(ckpt)
        result = self.model.load_state_dict(sd, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise CheckpointFormatError(
                f"{path} does not hold a {self.cfg.protocol} classifier of this shape "
                f"({self.backbone}, {self.num_classes} classes): missing {result.missing_keys[:8]}, "
                f"unexpected {result.unexpected_keys[:8]}")
        self.resumed_from = path
        if self.eval_only:
            if isinstance(ckpt, dict) and self.cfg.model.pretrain == "auto" and ckpt.get("pretrain"):
                self.pretrain, self.pretrained_checkpoint = ckpt["pretrain"], ckpt.get("pretrained_checkpoint")
                self.pretrain_epochs = ckpt.get("pretrain_epochs")
            log.info("evaluating %s", path)
            return
        tr = ckpt.get("trainer") if isinstance(ckpt, dict) else None
        if tr is None:
            raise CheckpointFormatError(
                f"{path} has no training state to resume (not written by this tool); evaluate it with --eval-only, "
                f"or start a run from pretrained weights with model.checkpoint={path}")
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.restore_position(tr)
        self.last_eval = ckpt.get("metrics") or {}
        self.best_eval = ckpt.get("best_metrics") or {}
        log.info("resumed from %s at epoch %d, iter %d, step %d", path, self.epoch, self.iter, self.step)

    # --------------------------------------------------------------- training
    def after_epoch(self, done: bool):
        t = self.cfg.train
        if done or self.epoch % t.eval_every_epochs == 0:
            self.last_eval = {**self.evaluate(), "epoch": self.epoch - 1}
            if not self.best_eval or self.last_eval["top1"] > self.best_eval["top1"]:
                self.best_eval = dict(self.last_eval)
            self.metrics.log(self.step, prefix="eval", **self.last_eval, top1_best=self.best_eval["top1"])
        tags = []
        if done or self.epoch % t.ckpt_every_epochs == 0:
            tags.append(LAST)
        if done or (t.keep_every_epochs and self.epoch % t.keep_every_epochs == 0):
            tags.append(self.epoch - 1)
        if tags:
            self.save(tags)

    def finish(self, stopped: bool) -> Dict:
        """The final metrics (and results.json), after the frozen check of the linear protocols; {} when stopped."""
        if stopped:
            self.metrics.close()
            return {}
        if self.protocol.frozen(self.model):
            self.check_frozen()
        self.metrics.close()
        if self.dist.is_main:
            self.write_results(self.last_eval)
        du.barrier()
        return self.last_eval

    def set_train_mode(self):
        self.ddp.train()
        self.protocol.set_train_mode(self.model)

    def batch_loss(self, batch):
        inputs, target = batch
        imgs = self.device_transform(inputs, self.device)
        target = torch.as_tensor(target).to(self.device, non_blocking=True)
        if self.mixup is not None:
            imgs, target = self.mixup(imgs, target)  # soft targets
        with self.autocast():
            loss = self.criterion(self.ddp(imgs), target)
        return loss, {}, imgs.shape[0]

    # ------------------------------------------------------------- evaluation
    @torch.no_grad()
    def evaluate(self) -> Dict[str, Optional[float]]:
        """Top-1 / top-5 (%) and mean loss on the whole labelled val folder (summed over processes)."""
        self.model.eval()
        counts = torch.zeros(4, dtype=torch.float64)  # top1, top5, loss sum, samples
        for inputs, target in self.val_loader:
            imgs = self.val_set.device_transform(inputs, self.device)
            target = torch.as_tensor(target).to(self.device, non_blocking=True)
            with self.autocast():
                logits = self.model(imgs)
            logits = logits.float()
            hits = topk_correct(logits, target)
            loss = torch.nn.functional.cross_entropy(logits, target, reduction="sum").item()
            counts += torch.tensor([hits[1], hits[5], loss, target.shape[0]], dtype=torch.float64)
        if self.dist.distributed:
            counts = counts.to(self._reduce_device())
            dist.all_reduce(counts)
            counts = counts.cpu()
        top1, top5, loss_sum, n = counts.tolist()
        res = {"top1": 100.0 * top1 / n, "top5": 100.0 * top5 / n if self.num_classes >= 5 else None,
               "loss": loss_sum / n, "images": int(n)}
        log.info("eval %s: top-1 %.2f%%, top-5 %s, loss %.4f (%d images)", self.cfg.protocol, res["top1"],
                 "n/a (fewer than 5 classes)" if res["top5"] is None else f"{res['top5']:.2f}%", res["loss"], n)
        return res

    def check_frozen(self):
        """The authors' sanity check: every frozen tensor still equals the pretrained checkpoint's
        (re-read from the file), or its initial value where the file has none."""
        reference = dict(self._initial_frozen)
        if self.cfg.model.checkpoint:
            reference.update(self.protocol.backbone_state(self.model, self.cfg))
        state = self.model.state_dict()
        frozen = self.protocol.frozen_keys(self.model)
        changed = [k for k in frozen if not torch.equal(state[k].cpu(), reference[k].cpu())]
        if changed:
            raise FrozenWeightsChanged(
                f"{self.cfg.protocol}: {len(changed)} tensors of the frozen backbone changed during training "
                f"(e.g. {changed[:8]}); the frozen part must stay as pretrained")
        log.info("sanity check passed: the %d frozen tensors equal the pretrained ones", len(frozen))

    def run_eval_only(self) -> Dict:
        res = self.evaluate()
        if self.dist.is_main:
            self.write_results(res, classifier=getattr(self, "resumed_from", None))
        du.barrier()
        self.metrics.close()
        return res

    # ---------------------------------------------------------------- results
    def recipe(self) -> Dict:
        cfg, d, m, o, t = self.cfg, self.cfg.data, self.cfg.model, self.cfg.optim, self.cfg.train
        mean, std = self.input_norm
        r = {"protocol": cfg.protocol, "img_size": d.img_size, "crop_pct": d.crop_pct,
             "interpolation": d.interpolation, "num_classes": self.num_classes, "mean": list(mean), "std": list(std)}
        if m.variant is not None:
            r["variant"] = m.variant
        if self.pretrain_epochs:
            r["pretrain_epochs"] = self.pretrain_epochs
        if self.eval_only:
            return {**r, "eval_only": True}
        r.update(epochs=t.epochs, batch=self.eff_batch, lr=self.lr, base_lr=self.lr * 256 / self.eff_batch,
                 optimizer=o.name, weight_decay=o.weight_decay, lr_schedule=o.schedule, warmup_epochs=o.warmup_epochs,
                 min_lr=o.min_lr, milestones=list(o.milestones), amp=t.amp, seed=t.seed,
                 train_images=len(self.train_set), val_images=len(self.val_set))
        if cfg.protocol == "mae_finetune":
            if m.tune_blocks is not None:  # partial fine-tuning: not the recipe's full fine-tuning
                r.update(tune_blocks=m.tune_blocks)
            r.update(layer_decay=m.layer_decay, drop_path=m.drop_path, global_pool=m.global_pool,
                     auto_augment=d.auto_augment, mixup=d.mixup, cutmix=d.cutmix, smoothing=d.smoothing,
                     reprob=d.reprob)
        elif cfg.protocol == "mae_linear":
            r.update(global_pool=self.model.global_pool)  # the model's: avg without a class token (I-JEPA)
        return r

    def write_results(self, res: Dict, classifier: Optional[str] = None) -> Path:
        """The final evaluation's top-1 / top-5 and, after training, the best epoch's top-1 (``top1_best``,
        the number the MAE code's "max accuracy" and MoCo's ``best_acc1`` report) with its epoch."""
        best = {} if self.eval_only else self.best_eval
        file_name = EVAL_RESULTS_FILE if self.eval_only and holds_training_record(self.out) else RESULTS_FILE
        path = write_results(
            self.out, task=self.cfg.data.task or self.protocol.task, backbone=self.backbone, pretrain=self.pretrain,
            metrics={"top1": res["top1"], "top5": res["top5"], "top1_best": best.get("top1")},
            best_epoch=best.get("epoch"), recipe=self.recipe(),
            checkpoint=self.pretrained_checkpoint, tool="tools/train_cls.py", config=to_yaml(self.cfg),
            classifier=classifier or str(self.out / checkpoint_name(LAST)), val_images=res["images"],
            file_name=file_name,
        )
        log.info("wrote %s", path)
        return path
