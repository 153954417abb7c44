"""Running mmseg configs for the project (``tools/train_seg.py``): config edits, checkpoints, results.

mmengine's ``Runner`` does the training, evaluation and resuming; this module
holds what the project adds around it:

* config edits a command line asks for (backbone checkpoint or random init,
  data folder, iterations, CPU fallbacks), each a small function of the config;
* resuming under torch's weights-only loading: ``checkpoint.mmengine_checkpoint_globals``;
* ``write_seg_results``: mIoU / mAcc / aAcc and the recipe into
  ``<work_dir>/results.json`` (``transfer.results``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence

from mmengine.config import Config
from mmengine.hooks import Hook

from transfer.results import write_results

__all__ = [
    "load_seg_config", "set_backbone_checkpoint", "backbone_checkpoint",
    "set_data", "match_num_classes", "set_iterations", "adapt_to_device", "SegResultsHook", "trained_record",
    "results_recipe", "write_seg_results", "SEG_METRICS",
]

SEG_METRICS = ("mIoU", "mAcc", "aAcc")


# ------------------------------------------------------------------ config
def load_seg_config(path, overrides: Optional[Dict] = None) -> Config:
    """An mmseg config with ``key=value`` overrides merged (mmengine's ``--cfg-options`` syntax)."""
    cfg = Config.fromfile(str(path))
    if overrides:
        cfg.merge_from_dict(overrides)
    return cfg


def backbone_checkpoint(cfg: Config) -> Optional[str]:
    """The pretrained checkpoint the backbone is initialised from, or None (random init)."""
    init = cfg.model.backbone.get("init_cfg")
    if isinstance(init, dict) and init.get("type") == "Pretrained":
        return init.get("checkpoint")
    return cfg.model.get("pretrained") or None


def set_backbone_checkpoint(cfg: Config, path: Optional[str]) -> None:
    """Initialise the backbone from ``path`` (any layout the project's encoders read), or randomly if None."""
    cfg.model.pretrained = None
    cfg.model.backbone.init_cfg = dict(type="Pretrained", checkpoint=str(path)) if path else None


def _datasets(cfg: Config) -> Iterator[Dict]:
    for name in ("train_dataloader", "val_dataloader", "test_dataloader"):
        loader = cfg.get(name)
        if loader:
            yield loader.dataset


def set_data(cfg: Config, data_root=None, classes=None, ignore_labels: Optional[Sequence[int]] = None) -> None:
    """Point every split at ``data_root``; ``classes`` / ``ignore_labels`` for ``SegFolderDataset``."""
    for ds in _datasets(cfg):
        if data_root is not None:
            ds.data_root = str(data_root)
        if classes is not None or ignore_labels is not None:
            if ds.type != "SegFolderDataset":
                raise ValueError(f"--classes / --ignore-label apply to SegFolderDataset configs, not {ds.type}")
            if classes is not None:
                ds.classes = classes
            if ignore_labels is not None:
                ds.ignore_labels = list(ignore_labels)


def match_num_classes(cfg: Config) -> Optional[int]:
    """Size the heads to a ``SegFolderDataset``'s class list; returns the number of classes (or None)."""
    from transfer.segmentation.datasets import read_classes

    ds = cfg.train_dataloader.dataset
    if ds.get("type") != "SegFolderDataset":
        return None
    n = len(read_classes(ds.get("classes"), ds.get("data_root")))
    for head in ("decode_head", "auxiliary_head"):
        if cfg.model.get(head):
            cfg.model[head].num_classes = n
    return n


def set_iterations(cfg: Config, iters: int) -> None:
    """Run ``iters`` iterations, scaling the lr schedule, validation and checkpoint intervals to match."""
    old = cfg.train_cfg.max_iters
    scale = lambda v: max(1, round(v * iters / old))  # noqa: E731
    cfg.train_cfg.max_iters = iters
    cfg.train_cfg.val_interval = min(iters, scale(cfg.train_cfg.get("val_interval", old)))
    for sched in cfg.get("param_scheduler") or []:
        for key in ("begin", "end"):
            if key in sched:
                sched[key] = min(iters, scale(sched[key])) if sched[key] else 0
    ckpt = cfg.default_hooks.get("checkpoint")
    if ckpt and "interval" in ckpt:
        ckpt.interval = min(iters, scale(ckpt.interval))


def adapt_to_device(cfg: Config, cuda: bool) -> List[str]:
    """CPU fallbacks for a GPU recipe; returns what was changed (for the log).

    On CPUs: SyncBN -> BN (SyncBN needs GPUs), AmpOptimWrapper -> OptimWrapper
    (mmengine's AMP needs a GPU), gloo instead of nccl and a DDP wrapper without
    device ids for torchrun runs.
    """
    if cuda:
        return []
    notes = []

    def sync_to_bn(node):
        if isinstance(node, dict):
            if node.get("type") == "SyncBN":
                node["type"] = "BN"
                notes.append("SyncBN")
            for v in node.values():
                sync_to_bn(v)
        elif isinstance(node, (list, tuple)):
            for v in node:
                sync_to_bn(v)

    sync_to_bn(cfg.model)
    changes = [f"SyncBN -> BN ({len(notes)} norm configs)"] if notes else []
    if cfg.optim_wrapper.get("type") == "AmpOptimWrapper":
        cfg.optim_wrapper.type = "OptimWrapper"
        cfg.optim_wrapper.pop("loss_scale", None)
        changes.append("AmpOptimWrapper -> OptimWrapper (fp32)")
    cfg.env_cfg = dict(cfg.get("env_cfg", {}), dist_cfg=dict(backend="gloo"))
    # mmengine's DDP wrapper passes device_ids=[LOCAL_RANK], which only GPU modules accept.
    cfg.model_wrapper_cfg = dict(type="MMDistributedDataParallel", device_ids=None, broadcast_buffers=False)
    return changes


# ----------------------------------------------------------------- results
class SegResultsHook(Hook):
    """What the results file needs from a run.

    Keeps the last validation's metrics (and the iteration it ran at), and
    stamps what was trained (pretraining, its checkpoint, iterations, total
    batch) into every checkpoint's meta, so that evaluating a checkpoint alone
    (--eval-only) records the run that produced it, not the evaluation's config.
    """

    priority = "LOWEST"
    META_KEY = "sslkit_trained"

    def __init__(self, trained: Optional[Dict] = None, from_checkpoint: bool = False):
        self.trained = dict(trained or {})
        self.from_checkpoint = from_checkpoint  # evaluation of a checkpoint: it says what was trained
        self.metrics: Optional[Dict[str, float]] = None
        self.iter: Optional[int] = None

    def after_val_epoch(self, runner, metrics=None) -> None:
        self.metrics, self.iter = dict(metrics or {}), runner.iter

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        checkpoint.setdefault("meta", {})[self.META_KEY] = dict(self.trained)

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        if self.from_checkpoint:
            self.trained.update((checkpoint.get("meta") or {}).get(self.META_KEY) or {})


def trained_record(cfg: Config, world_size: int, pretrain: Optional[str] = None,
                   inspect_checkpoint: bool = True) -> Dict:
    """What a training run of ``cfg`` on ``world_size`` processes trains (see ``SegResultsHook``).

    The pretraining label: ``transfer.results.pretrain_label`` of ``pretrain``, the checkpoint's
    backbone export and the config's ``sslkit_results.pretrain``. ``inspect_checkpoint`` reads the checkpoint
    for that and for its pretraining epochs (released weights without an epoch
    record none).
    """
    from pretrain.backbones import read_backbone
    from pretrain.checkpoint import CheckpointFormatError

    from transfer.results import pretrain_label

    checkpoint = backbone_checkpoint(cfg)
    info = cfg.get("sslkit_results") or {}
    label, epochs = None, None
    if checkpoint and inspect_checkpoint and Path(checkpoint).is_file():
        from transfer.segmentation.checkpoint import load_checkpoint_file

        try:
            provenance = read_backbone(load_checkpoint_file(checkpoint), path=checkpoint).provenance
        except CheckpointFormatError:  # an mmseg file (a trained segmentor): the config says
            provenance = None
        if provenance is not None:
            label, epochs = provenance.label, provenance.epochs
    record = {"pretrain": pretrain_label(pretrain, label, bool(checkpoint), info.get("pretrain")),
              "checkpoint": checkpoint,
              "iterations": cfg.train_cfg.max_iters, "batch": cfg.train_dataloader.batch_size * world_size}
    if epochs and checkpoint:
        record["pretrain_epochs"] = epochs
    return record


def results_recipe(cfg: Config, trained: Dict) -> Dict:
    """The recipe a results file records: iterations, total batch, crop, schedule in words."""
    iters = trained.get("iterations", cfg.train_cfg.max_iters)
    optim = cfg.optim_wrapper.optimizer
    schedule = f"{iters // 1000}k" if iters >= 1000 and iters % 1000 == 0 else f"{iters} iters"
    schedule += f", {optim.type} lr {optim.lr:g} wd {optim.get('weight_decay', 0):g}"
    decay = (cfg.optim_wrapper.get("paramwise_cfg") or {}).get("decay_rate")
    if decay:
        schedule += f", layer decay {decay:g}"
    if cfg.optim_wrapper.type == "AmpOptimWrapper":
        schedule += ", amp"
    crop = cfg.model.get("data_preprocessor", {}).get("size") or cfg.get("crop_size")
    if crop:  # square crops as one number, as the published recipes record them
        crop = int(crop[0]) if len(set(crop)) == 1 else [int(c) for c in crop]
    recipe = {"iterations": iters, "batch": trained.get("batch"), "crop_size": crop, "schedule": schedule,
              "test_mode": cfg.model.get("test_cfg", {}).get("mode", "whole")}
    if trained.get("pretrain_epochs"):
        recipe["pretrain_epochs"] = trained["pretrain_epochs"]
    return recipe


def write_seg_results(cfg: Config, metrics: Dict[str, float], trained: Dict, tool: str = "tools/train_seg.py",
                      **extra) -> Path:
    """``<work_dir>/results.json`` for a segmentation run; ``trained``: ``trained_record`` / the hook's."""
    info = cfg.get("sslkit_results") or {}
    if cfg.model.backbone.type == "ResNetEncoder":
        from .resnet import ResNetEncoder

        extra.setdefault("weights", ResNetEncoder.weights_layout(cfg.model.backbone))
    missing = [m for m in SEG_METRICS if m not in metrics]
    if missing:
        raise KeyError(f"the evaluator returned {sorted(metrics)}, not {missing} (IoUMetric with 'mIoU' expected)")
    return write_results(
        cfg.work_dir, task=info.get("task") or "semantic_seg",
        backbone=info.get("backbone") or cfg.model.backbone.type, pretrain=trained.get("pretrain") or "unknown",
        metrics={m: float(metrics[m]) for m in SEG_METRICS}, recipe=results_recipe(cfg, trained),
        checkpoint=trained.get("checkpoint"), tool=tool, config=cfg.filename, **extra)
