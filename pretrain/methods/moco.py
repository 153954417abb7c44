"""Momentum Contrast (He et al. 2019; v2: Chen et al. 2020) for torchvision ResNets.

``MoCo(base_encoder)`` is built like the authors' builder: a query encoder, a
momentum-updated copy as key encoder, and a queue of K normalised keys. The
state dict has the authors' names (``encoder_q.*``, ``encoder_k.*``, ``queue``,
``queue_ptr``); their checkpoints store it under ``state_dict`` with DDP's
``module.`` prefix, and so does the trainer.

Shuffle BN, which keeps batch norm from leaking which key matches which query:
* under DDP (world size > 1): keys are computed on a batch shuffled across
  processes (all-gather, a permutation broadcast from rank 0), then unshuffled,
  exactly as the authors' code;
* in a single process: both encoders' batch norms normalise ``bn_splits``
  sub-batches separately (``SplitBatchNorm2d``) and the key batch is shuffled
  across sub-batches, so a query and its key are normalised with different
  samples, as on 8 GPUs. ``bn_splits=1`` turns this off (and leaks).
``shuffle_bn=False`` is the paper's appendix ablation: keys are encoded on the
batch in its own order (under DDP each process's BN sees its own batch; in one
process sub-batch j of the keys holds the other views of query sub-batch j, as
8 GPUs without the shuffle would), so batch norm leaks.

``contrast`` picks the paper's Figure 3 mechanism (all three with InfoNCE at T):
* ``moco``: the momentum encoder and the queue (the default, the authors' code);
* ``end_to_end``: the keys are the current batch's own, encoded by the query
  encoder with gradients; each query's negatives are the other keys of the
  (global) batch, K = batch - 1. No key encoder, no queue. Shuffle BN applies as
  the paper says it did for this variant (Section 3.3): the key batch is
  shuffled across the split-BN sub-batches of each process (a shuffle across
  processes would need a differentiable all-to-all), and keys from other
  processes are gathered without gradient, as SimCLR's implementations do;
* ``memory_bank`` (Wu et al. 2018): one feature per training image in a buffer;
  the positive is the bank's entry of the query's own image, K negatives are
  drawn uniformly (with replacement, shared by the batch) from the bank, and
  the batch's entries are then updated, v <- normalize(0.5 v + 0.5 q). One
  encoder, no gradient into the bank; shuffle BN does not apply (the positive
  comes from an earlier batch).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable, ClassVar, Dict, List, Mapping, Optional, Tuple

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from ..backbones import BackboneExport, Provenance, resnet_export, split_prefix
from ..checkpoint import CheckpointFormatError, strip_prefix, unwrap_state_dict
from ..config import DataConfig, OptimConfig, TrainConfig
from ..distributed import all_gather_tensor, get_rank, get_world_size
from ..errors import ConfigError
from ..transforms import moco_transform
from . import PretrainMethod, fused_ok, register_method, run_config, trained_on

__all__ = ["MoCo", "CONTRASTS", "SplitBatchNorm2d", "convert_split_bn", "build_moco", "moco_checkpoint", "MoCoLayout",
           "resnet_features",
           "MoCoModelConfig", "MoCoPretrainConfig", "MoCoMethod"]


class SplitBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are computed over ``num_splits`` sub-batches.

    Sub-batch j holds samples j, j + s, j + 2s, ... (s = num_splits): one
    ``batch_norm`` call on the batch viewed as [N/s, s*C, H, W]. Running
    statistics are the mean of the sub-batches'. Same parameters and buffers as
    BatchNorm2d, so state dicts are interchangeable; evaluation is plain BN.
    """

    def __init__(self, num_features: int, num_splits: int, **kwargs):
        super().__init__(num_features, **kwargs)
        self.num_splits = num_splits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.num_splits
        if not self.training or s == 1:
            return super().forward(x)
        n, c, h, w = x.shape
        if n % s:
            raise ValueError(f"batch of {n} does not split into {s} BN sub-batches (model.bn_splits)")
        mean = self.running_mean.repeat(s)
        var = self.running_var.repeat(s)
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
        out = F.batch_norm(
            x.view(n // s, c * s, h, w), mean, var,
            self.weight.repeat(s) if self.affine else None, self.bias.repeat(s) if self.affine else None,
            True, self.momentum if self.momentum is not None else 0.1, self.eps,
        ).view(n, c, h, w)
        self.running_mean.copy_(mean.view(s, c).mean(0))
        self.running_var.copy_(var.view(s, c).mean(0))
        return out


def convert_split_bn(module: nn.Module, num_splits: int) -> nn.Module:
    """Replace every BatchNorm2d in ``module`` by a SplitBatchNorm2d sharing its tensors."""
    if num_splits <= 1:
        return module
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            new = SplitBatchNorm2d(child.num_features, num_splits, eps=child.eps, momentum=child.momentum,
                                   affine=child.affine, track_running_stats=child.track_running_stats)
            new.load_state_dict(child.state_dict())
            setattr(module, name, new)
        else:
            convert_split_bn(child, num_splits)
    return module


CONTRASTS = ("moco", "end_to_end", "memory_bank")  # model.contrast: the MoCo paper's Figure 3


class MoCo(nn.Module):
    """``K``: the queue's length (``moco``), the negatives drawn from the bank per step (``memory_bank``);
    ``end_to_end`` has K = batch - 1. ``bank_size``: the bank's rows, one per training image (``memory_bank``;
    0: sized later by ``reset_memory_bank``, once the dataset is known)."""

    def __init__(
        self,
        base_encoder: Callable[..., nn.Module] = torchvision.models.resnet50,
        dim: int = 128,
        K: int = 65536,
        m: float = 0.999,
        T: float = 0.07,
        mlp: bool = False,
        bn_splits: int = 1,
        contrast: str = "moco",
        shuffle_bn: bool = True,
        bank_size: int = 0,
        bank_momentum: float = 0.5,  # Wu et al. 2018's
    ):
        super().__init__()
        if contrast not in CONTRASTS:
            raise ValueError(f"unknown contrast {contrast!r}; expected one of {', '.join(CONTRASTS)}")
        self.K, self.m, self.T = K, m, T
        self.contrast, self.shuffle_bn, self.bank_momentum = contrast, shuffle_bn, bank_momentum
        self.encoder_q = base_encoder(num_classes=dim)
        if mlp:  # v2: fc -> Linear, ReLU, fc
            hidden = self.encoder_q.fc.weight.shape[1]
            self.encoder_q.fc = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), self.encoder_q.fc)
        convert_split_bn(self.encoder_q, bn_splits)
        self.bn_splits = bn_splits
        if contrast == "moco":
            self.encoder_k = copy.deepcopy(self.encoder_q)
            for p in self.encoder_k.parameters():
                p.requires_grad = False
            self.register_buffer("queue", F.normalize(torch.randn(dim, K), dim=0))
            self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))
        elif contrast == "memory_bank":
            # A buffer, so that checkpoints hold it and a resumed run goes on with the same bank.
            self.register_buffer("memory_bank", F.normalize(torch.randn(bank_size, dim), dim=1))

    @torch.no_grad()
    def reset_memory_bank(self, size: int, generator: Optional[torch.Generator] = None):
        """A fresh bank of ``size`` random unit vectors (one per training image), on the bank's device."""
        bank = F.normalize(torch.randn(size, self.memory_bank.shape[1], generator=generator), dim=1)
        self.memory_bank = bank.to(self.memory_bank.device)

    # ------------------------------------------------------------ key encoder
    @torch.no_grad()
    def momentum_update_key_encoder(self):
        """theta_k <- m * theta_k + (1 - m) * theta_q, as two fused foreach ops."""
        k_params = [p.data for p in self.encoder_k.parameters()]
        q_params = [p.data for p in self.encoder_q.parameters()]
        torch._foreach_mul_(k_params, self.m)
        torch._foreach_add_(k_params, q_params, alpha=1.0 - self.m)

    @torch.no_grad()
    def dequeue_and_enqueue(self, keys: torch.Tensor):
        """Write this step's keys (from every process) over the oldest ones."""
        keys = all_gather_tensor(keys)
        batch = keys.shape[0]
        if self.K % batch:
            raise ValueError(
                f"the queue size K={self.K} must be a multiple of the global batch ({batch} keys per step); "
                f"choose K = {max(1, self.K // batch) * batch} or a batch that divides {self.K}"
            )
        ptr = int(self.queue_ptr)
        self.queue[:, ptr : ptr + batch] = keys.T.to(self.queue.dtype)
        self.queue_ptr[0] = (ptr + batch) % self.K

    # ------------------------------------------------------------ shuffle BN
    @torch.no_grad()
    def _shuffle_keys(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Shuffle the key batch; returns (this process's shuffled part, indices to undo it)."""
        if get_world_size() == 1:
            perm = torch.randperm(x.shape[0], device=x.device)
            return x[perm], torch.argsort(perm)
        gathered = all_gather_tensor(x)
        perm = torch.randperm(gathered.shape[0], device=x.device)
        dist.broadcast(perm, src=0)
        unshuffle = torch.argsort(perm)
        mine = perm.view(get_world_size(), -1)[get_rank()]
        return gathered[mine], unshuffle

    @torch.no_grad()
    def _unshuffle_keys(self, k: torch.Tensor, unshuffle: torch.Tensor) -> torch.Tensor:
        if get_world_size() == 1:
            return k[unshuffle]
        gathered = all_gather_tensor(k)
        return gathered[unshuffle.view(get_world_size(), -1)[get_rank()]]

    # ----------------------------------------------------------- memory bank
    @torch.no_grad()
    def update_memory_bank(self, features: torch.Tensor, index: torch.Tensor):
        """Wu et al.'s update of the batch's rows (every process's): v <- normalize(b v + (1 - b) f)."""
        features, index = all_gather_tensor(features.float()), all_gather_tensor(index)
        old = self.memory_bank[index]
        self.memory_bank[index] = F.normalize(self.bank_momentum * old + (1.0 - self.bank_momentum) * features,
                                              dim=1)

    # --------------------------------------------------------------- forward
    def forward(self, im_q: torch.Tensor, im_k: torch.Tensor, index: Optional[torch.Tensor] = None):
        """Returns InfoNCE logits [N, 1 + K] (positive at index 0, over T) and zero labels. ``index``: each
        sample's row in the memory bank (its dataset index; ``memory_bank`` only, which ignores ``im_k``)."""
        if self.contrast == "end_to_end":
            return self._end_to_end(im_q, im_k)
        if self.contrast == "memory_bank":
            return self._memory_bank(im_q, index)
        q = F.normalize(self.encoder_q(im_q), dim=1)
        with torch.no_grad():
            self.momentum_update_key_encoder()
            if self.shuffle_bn:
                shuffled, unshuffle = self._shuffle_keys(im_k)
                k = F.normalize(self.encoder_k(shuffled), dim=1)
                k = self._unshuffle_keys(k, unshuffle)
            else:
                k = F.normalize(self.encoder_k(im_k), dim=1)
        logits = self._logits(q, k, self.queue.clone().detach())
        self.dequeue_and_enqueue(k.float())
        return logits, _zero_labels(logits)

    def _logits(self, q: torch.Tensor, k: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
        """[q.k+, q.negatives] / T, in fp32: under bf16 autocast the products would round the cosines to 8 bits
        before / T. ``negatives``: [dim, K]."""
        q, k = q.float(), k.float()
        with torch.autocast(q.device.type, enabled=False):
            l_pos = (q * k).sum(dim=1, keepdim=True)
            l_neg = q @ negatives.float()
            return torch.cat([l_pos, l_neg], dim=1) / self.T

    def _end_to_end(self, im_q: torch.Tensor, im_k: torch.Tensor):
        q = F.normalize(self.encoder_q(im_q), dim=1)
        if self.shuffle_bn:  # a differentiable shuffle across this process's split-BN sub-batches
            perm = torch.randperm(im_k.shape[0], device=im_k.device)
            k = F.normalize(self.encoder_q(im_k[perm]), dim=1)[torch.argsort(perm)]
        else:
            k = F.normalize(self.encoder_q(im_k), dim=1)
        q, k = q.float(), k.float()
        n, rank = q.shape[0], get_rank()
        keys = k
        if get_world_size() > 1:  # the global batch's keys; gradients through this process's only
            gathered = all_gather_tensor(k.detach())
            keys = torch.cat([gathered[: rank * n], k, gathered[(rank + 1) * n:]])
        with torch.autocast(q.device.type, enabled=False):
            sim = q @ keys.T  # [n, global batch]
            own = torch.arange(n, device=q.device) + rank * n
            others = torch.ones_like(sim, dtype=torch.bool)
            others[torch.arange(n, device=q.device), own] = False
            l_pos = sim[torch.arange(n, device=q.device), own].unsqueeze(1)
            logits = torch.cat([l_pos, sim[others].view(n, -1)], dim=1) / self.T
        return logits, _zero_labels(logits)

    def _memory_bank(self, im_q: torch.Tensor, index: Optional[torch.Tensor]):
        if index is None:
            raise ValueError("contrast='memory_bank' needs each sample's dataset index (its row in the bank)")
        rows = self.memory_bank.shape[0]
        if int(index.min()) < 0 or int(index.max()) >= rows:  # a bank not sized to the dataset (reset_memory_bank)
            raise ValueError(f"sample indices {int(index.min())}..{int(index.max())} do not fit a memory bank of "
                             f"{rows} rows")
        q = F.normalize(self.encoder_q(im_q), dim=1)
        with torch.no_grad():
            # Read before the update: the positive is the image's feature from its earlier visits.
            sampled = torch.randint(rows, (self.K,), device=self.memory_bank.device)
            positives, negatives = self.memory_bank[index], self.memory_bank[sampled].T
        logits = self._logits(q, positives, negatives)
        self.update_memory_bank(q.detach(), index)
        return logits, _zero_labels(logits)


def _zero_labels(logits: torch.Tensor) -> torch.Tensor:
    """InfoNCE's targets: the positive is at index 0."""
    return torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)


def build_moco(arch: str = "resnet50", **kwargs) -> MoCo:
    """MoCo around a torchvision ResNet named by ``arch`` (resnet18 ... resnext101_32x8d)."""
    if not arch.startswith(("resnet", "resnext", "wide_resnet")) or not hasattr(torchvision.models, arch):
        raise ValueError(f"unknown torchvision ResNet {arch!r} (e.g. resnet18, resnet50, resnet101)")
    return MoCo(getattr(torchvision.models, arch), **kwargs)


def resnet_features(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A torchvision ResNet's pooled features (the input of ``fc``)."""
    x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
    x = net.layer4(net.layer3(net.layer2(net.layer1(x))))
    return torch.flatten(net.avgpool(x), 1)


# ------------------------------------------------------- checkpoint layout
def moco_checkpoint(model: nn.Module, arch: str, epoch: int) -> Dict:
    """The authors' checkpoint layout: module.-prefixed state dict, ``epoch`` (the next one to run), ``arch``
    (the trainer adds the optimizer)."""
    return {"epoch": epoch, "arch": arch, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}


class MoCoLayout:
    """The MoCo authors' checkpoint layout, v1/v2's and v3's alike: ``checkpoint_0199.pth.tar`` (the epoch just
    finished) / ``checkpoint_last.pth.tar``, ``epoch`` = the next one to run, ``arch``, ``state_dict`` under DDP's
    ``module.``; their files are told apart by the encoder they hold (``encoder_prefix``)."""

    encoder_prefix: ClassVar[str]

    def checkpoint_name(self, tag) -> str:
        return f"checkpoint_{tag:04d}.pth.tar" if isinstance(tag, int) else f"checkpoint_{tag}.pth.tar"

    def pack(self, model: nn.Module, cfg, finished_epoch: int) -> Dict:
        return moco_checkpoint(model, cfg.model.arch, finished_epoch + 1)

    def epochs_done(self, ckpt: Mapping) -> int:
        return int(ckpt["epoch"])

    @classmethod
    def claims(cls, ckpt: Mapping, source: str = "") -> bool:
        try:
            return any(k.startswith(cls.encoder_prefix) for k in strip_prefix(unwrap_state_dict(ckpt), "module."))
        except CheckpointFormatError:
            return False

    def encoder(self, ckpt: Mapping) -> Tuple[Dict[str, torch.Tensor], List[str]]:
        """(the encoder's tensors without its prefix, every other key of the file)."""
        return split_prefix(strip_prefix(unwrap_state_dict(ckpt), "module."), self.encoder_prefix)


# ------------------------------------------------------------------ method
@dataclass
class MoCoModelConfig:
    arch: str = "resnet50"  # any torchvision ResNet constructor name
    dim: int = 128
    # K: the queue's length (moco), the negatives drawn from the bank each step (memory_bank); end_to_end
    # ignores it (K = global batch - 1).
    queue_size: int = 65536
    momentum: float = 0.999  # m
    temperature: float = 0.07  # T: 0.07 (v1), 0.2 (v2)
    mlp: bool = False  # v2: 2-layer MLP head
    aug: str = "v1"  # v1 | v2 ("aug+")
    # Single process only: batch norm over this many sub-batches (and keys shuffled
    # across them), the stand-in for multi-GPU Shuffle BN. 1 turns it off.
    # (end_to_end with shuffle_bn: in every process, under DDP too, its keys shuffled across them.)
    bn_splits: int = 8
    contrast: str = "moco"  # moco | end_to_end | memory_bank: the paper's Figure 3
    # false: keys encoded on the batch in its order (the appendix ablation; bn_splits then stands for
    # per-GPU BN without the shuffle)
    shuffle_bn: bool = True


def _moco_optim() -> OptimConfig:
    return OptimConfig(
        name="sgd", base_lr=0.03, weight_decay=1e-4, momentum=0.9, schedule="step",
        warmup_epochs=0.0, milestones=[120, 160],
    )


@dataclass
class MoCoPretrainConfig:
    method: str = "moco"
    model: MoCoModelConfig = field(default_factory=MoCoModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=_moco_optim)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=200, batch_size=32))


@register_method
class MoCoMethod(MoCoLayout, PretrainMethod):
    """MoCo v1 and v2 (v2: ``model.mlp``, ``model.aug=v2``, T = 0.2, cosine schedule)."""

    name = "moco"
    config_schema = MoCoPretrainConfig
    encoder_prefix = "encoder_q."

    def validate(self, cfg, fail):
        if cfg.model.aug not in ("v1", "v2"):
            fail(f"model.aug must be v1 or v2, got {cfg.model.aug!r}")
        if cfg.model.contrast not in CONTRASTS:
            fail(f"model.contrast must be one of {', '.join(CONTRASTS)}, got {cfg.model.contrast!r}")
        if cfg.model.contrast == "memory_bank":
            if cfg.data.backend == "dali":
                fail("model.contrast=memory_bank needs each sample's dataset index, which the dali backend does "
                     "not deliver: use data.backend=pil")
            if cfg.model.queue_size < 1:
                fail(f"model.queue_size (K, the negatives drawn from the memory bank) must be >= 1, "
                     f"got {cfg.model.queue_size}")
        if cfg.train.compile:  # benchmarks/compile_checkpointing.py: both measured with torch 2.9.1
            fail("train.compile does not run MoCo v1/v2 with torch 2.9.1: inductor fails on the key shuffle's "
                 "randperm indexing, and the compiled graph saves the queue, which the enqueue then modifies")

    def label(self, cfg) -> str:
        return "moco_v2" if cfg.model.mlp else "moco_v1"

    def build_model(self, cfg, world_size: int = 1) -> nn.Module:
        m = cfg.model
        global_batch = cfg.train.batch_size * world_size
        if m.contrast == "moco" and m.queue_size % global_batch:
            raise ValueError(
                f"model.queue_size (K={m.queue_size}) must be a multiple of the global batch "
                f"train.batch_size x processes = {global_batch}"
            )
        # Shuffle BN across processes under DDP; split BN in a single process. end_to_end shuffles its keys
        # within each process (a gradient-carrying shuffle across processes is not implemented): split BN there.
        splits = m.bn_splits if world_size == 1 or (m.contrast == "end_to_end" and m.shuffle_bn) else 1
        if splits > 1 and cfg.train.batch_size % splits:
            raise ValueError(f"train.batch_size={cfg.train.batch_size} must be a multiple of model.bn_splits={splits}")
        # memory_bank: the bank gets its rows in ``prepare``, from the dataset.
        return build_moco(m.arch, dim=m.dim, K=m.queue_size, m=m.momentum, T=m.temperature, mlp=m.mlp,
                          bn_splits=splits, contrast=m.contrast, shuffle_bn=m.shuffle_bn)

    def sample_index(self, cfg) -> bool:
        return cfg.model.contrast == "memory_bank"  # the bank's row of each image

    def prepare(self, model: nn.Module, cfg, dataset) -> None:
        if cfg.model.contrast != "memory_bank":
            return
        # Before step 0, not at it: the bank's rows are the samples' dataset indices, after image and label.
        if len(dataset[0]) < 3:
            raise ConfigError("model.contrast=memory_bank needs each sample's dataset index from the data loader, "
                              "which this pretraining data path does not deliver; use model.contrast=moco or "
                              "end_to_end")
        # One row per training image, drawn from the run's seed: the same bank on every process.
        model.reset_memory_bank(len(dataset), torch.Generator().manual_seed(cfg.train.seed))

    def build_transform(self, cfg, device: torch.device) -> Callable:
        # Colour jitter, grayscale and blur where they are cheapest: batched on a CUDA device, else in the
        # loader workers (beside the training step); the same parameters either way.
        return moco_transform(cfg.model.aug, cfg.data.img_size, cfg.data.crop_min_scale,
                              colour_on_device=device.type == "cuda")

    def build_optimizer(self, model: nn.Module, cfg, lr: float) -> torch.optim.Optimizer:
        # As the authors: weight decay on every parameter of the query encoder.
        params = [p for p in model.parameters() if p.requires_grad]
        return torch.optim.SGD(params, lr=lr, momentum=cfg.optim.momentum, weight_decay=cfg.optim.weight_decay,
                               fused=fused_ok(model))

    def loss(self, model: nn.Module, batch, cfg):
        views = batch[0]  # [N, 2, C, H, W]
        if cfg.model.contrast == "memory_bank":
            # The bank's rows: each sample's dataset index, which the loader hands after the labels.
            if len(batch) < 3:
                raise RuntimeError("model.contrast=memory_bank needs each sample's dataset index in the batch "
                                   "(batch[2]); this loader delivers images and labels only")
            logits, labels = model(views[:, 0], views[:, 1], batch[2])
        else:
            logits, labels = model(views[:, 0], views[:, 1])
        loss = F.cross_entropy(logits, labels)
        acc = (logits.argmax(dim=1) == labels).float().mean().detach()  # instance discrimination top-1
        return loss, {"acc1": acc}

    @torch.no_grad()
    def features(self, model: nn.Module, imgs: torch.Tensor) -> torch.Tensor:
        return resnet_features(model.encoder_q, imgs)

    def export(self, ckpt: Mapping, source: str = "<dict>") -> BackboneExport:
        """The query encoder under torchvision names (its ``fc`` / MLP head, the key encoder and the queue
        dropped)."""
        encoder, dropped = self.encoder(ckpt)
        cfg, epoch = run_config(ckpt), ckpt.get("epoch")
        if cfg is not None:
            label, data, layout = self.label(cfg), trained_on(cfg), "the project's MoCo checkpoint"
        else:
            label, data, layout = ("moco_v2" if "fc.0.weight" in encoder else "moco_v1"), None, \
                "the MoCo authors' checkpoint"
        provenance = Provenance(label, self.name, self.epochs_done(ckpt) if isinstance(epoch, int) else None, data,
                                source, layout)
        export = resnet_export(encoder, provenance, dropped=dropped, prefix="encoder_q.")
        export.notes.append("MoCo query encoder taken; key encoder, queue (or memory bank) and projection head "
                            "dropped")
        return export
