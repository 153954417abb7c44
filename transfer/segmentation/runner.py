"""Running mmseg configs for the project (``tools/train_seg.py``): config edits, checkpoints, results.

mmengine's ``Runner`` does the training, evaluation and resuming; this module
holds what the project adds around it:

* config edits a command line asks for (backbone checkpoint or random init, the network of a checkpoint
  holding several, data folder, iterations, CPU fallbacks), each a small function of the config;
* a ``MAETimmViT`` config fitted to its checkpoint (``fit_to_checkpoint``: widths, depth, maps, layer decay),
  as detectron2's ``fit_vitdet_to_checkpoint`` fits ViTDet's;
* checks of what a run reads (``check_data``, ``check_checkpoint``), made before mmengine's
  ``Runner`` creates the work dir, so that a user's mistake ends in one line and leaves nothing;
* ``CPURunner``: SyncBatchNorm reverted to BatchNorm after the model build (the CPU fallback for
  norm layers that no config names);
* resuming under torch's weights-only loading: ``checkpoint.mmengine_checkpoint_globals``;
* ``write_seg_results``: mIoU / mAcc / aAcc and the recipe into
  ``<work_dir>/results.json`` (``transfer.results``).
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence

import torch.nn as nn
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.runner import Runner

from pretrain.errors import ConfigError, DataError, InputNotFound
from transfer.results import write_results

__all__ = [
    "load_seg_config", "merge_overrides", "set_backbone_checkpoint", "backbone_checkpoint", "set_variant",
    "fit_to_checkpoint", "scale_out_indices", "match_input_normalisation", "set_data", "match_num_classes",
    "set_iterations", "adapt_to_device", "check_data", "check_checkpoint",
    "sync_bn_to_bn", "CPURunner", "SegResultsHook", "trained_record",
    "results_recipe", "write_seg_results", "SEG_METRICS",
]

SEG_METRICS = ("mIoU", "mAcc", "aAcc")
# mmseg modules whose norm layer defaults to SyncBN when their config does not name one.
SYNC_BN_DEFAULTS = ("Feature2Pyramid",)


# ------------------------------------------------------------------ config
def load_seg_config(path, overrides: Optional[Dict] = None) -> Config:
    """An mmseg config with ``key=value`` overrides merged (mmengine's ``--cfg-options`` syntax)."""
    if not Path(path).is_file():
        raise InputNotFound(f"config not found: {path} (an mmseg config, e.g. configs/mmseg/...py)")
    try:
        cfg = Config.fromfile(str(path))
    except SyntaxError as e:
        raise ConfigError(f"{path} is not a valid mmengine config: {e.msg} (line {e.lineno})") from None
    missing = [k for k in ("model", "train_dataloader", "train_cfg") if k not in cfg]
    if missing:
        raise ConfigError(f"{path} is not an mmseg training config: it has no {', '.join(missing)} "
                          f"(the configs under configs/mmseg/ are)")
    if overrides:
        merge_overrides(cfg, overrides)
    return cfg


def merge_overrides(cfg: Config, overrides: Dict) -> None:
    """Merge ``key=value`` overrides (``--cfg-options``); one that does not fit the config's structure
    (a value where the config has a section, or the reverse) is a ConfigError naming it."""
    for key, value in overrides.items():
        try:
            cfg.merge_from_dict({key: value})
        except (TypeError, KeyError) as e:  # mmengine's refusals of a merge; nothing else runs here
            raise ConfigError(f"--cfg-options {key}={value!r} does not fit the config: {e}") from None


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


# The backbones whose checkpoint reading takes ``variant`` (the network of a file holding several).
VARIANT_BACKBONES = ("MAETimmViT", "MAEViTEncoder", "ResNetEncoder")


def set_variant(cfg: Config, variant: Optional[str]) -> None:
    """Read ``variant`` of the backbone checkpoint (DINO / iBOT / DINOv2: teacher or student; I-JEPA: target or
    context): set on the project's backbones, refused where there is no checkpoint or the backbone cannot take it."""
    if variant is None:
        return
    kind = cfg.model.backbone.get("type")
    if kind not in VARIANT_BACKBONES:
        raise ConfigError(f"--variant {variant} picks a network of the backbone checkpoint; the config's {kind} "
                          f"backbone reads no variant (the configs of {' / '.join(VARIANT_BACKBONES)} do)")
    if not backbone_checkpoint(cfg):
        raise ConfigError(f"--variant {variant} picks a network of the backbone checkpoint, but there is none: "
                          f"give --checkpoint PATH, or leave the variant out")
    cfg.model.backbone.variant = variant


def _backbone_export(cfg: Config):
    """The backbone export of the config's checkpoint (its variant), None when there is no such file; raises
    ``CheckpointFormatError`` for a file ``read_backbone`` does not read (a converted / trained mmseg file)."""
    from pretrain.backbones import read_backbone

    from transfer.segmentation.checkpoint import load_checkpoint_file

    checkpoint = backbone_checkpoint(cfg)
    if not checkpoint or not Path(checkpoint).is_file():
        return None
    return read_backbone(load_checkpoint_file(checkpoint), path=checkpoint,
                         variant=cfg.model.backbone.get("variant"))


def scale_out_indices(indices: Sequence[int], depth: int, new_depth: int) -> List[int]:
    """The blocks of a ``new_depth`` ViT at the relative depths of ``indices`` in a ``depth`` one, as the ViT-L
    recipes take ViT-B's ((3, 5, 7, 11) of 12 -> (7, 11, 15, 23) of 24): block i ends at (i + 1) / depth of the
    network. Kept distinct and in range (rounding can meet at small depths)."""
    n = len(indices)
    if new_depth < n:
        raise ConfigError(f"a ViT of {new_depth} blocks cannot give the config's {n} maps (out_indices "
                          f"{tuple(indices)}): it needs {n} blocks at least")
    out = [int((i + 1) * new_depth / depth + 0.5) - 1 for i in sorted(indices)]
    for k in reversed(range(n)):  # room for the maps after each
        out[k] = min(out[k], new_depth - n + k)
    for k in range(n):
        out[k] = max(out[k], 0 if k == 0 else out[k - 1] + 1)
    return out


def fit_to_checkpoint(cfg: Config) -> List[str]:
    """A ``MAETimmViT`` config fitted to its checkpoint's ViT: the backbone's width, the neck's and heads' input
    widths, the maps at the config's relative depths and the layer decay over the file's blocks; returns a note
    per change (what and why). Other backbones, or no checkpoint file: no change. A file no MAETimmViT can
    build (a ResNet) is refused, saying which configs take it."""
    bb = cfg.model.backbone
    if bb.get("type") != "MAETimmViT":
        return []
    export = _backbone_export(cfg)
    if export is None:
        return []
    if export.family != "vit":
        raise ConfigError(f"{backbone_checkpoint(cfg)} is a {export.arch} ({export.provenance.layout}), not a "
                          f"ViT: MAETimmViT builds ViTs; the ResNet configs (configs/mmseg/*r50*) take it")
    width, depth = export.shape["embed_dim"], export.shape["depth"]
    why = f"{backbone_checkpoint(cfg)} is a {export.arch or 'ViT'} of width {width}, {depth} blocks"
    notes = []

    def fit(node, key, value, what):
        old = node.get(key)
        if (list(old) if isinstance(old, (list, tuple)) else old) != value:
            notes.append(f"{what} {old} -> {value} ({why})")
            node[key] = value

    fit(bb, "embed_dims", width, "backbone embed_dims")
    neck, decode, aux = cfg.model.get("neck"), cfg.model.get("decode_head"), cfg.model.get("auxiliary_head")
    if neck and "embed_dim" in neck:  # Feature2Pyramid
        fit(neck, "embed_dim", width, "neck embed_dim")
    for name, head in (("decode head", decode), ("auxiliary head", aux)):
        if head:
            channels = head.in_channels
            fit(head, "in_channels", [width] * len(channels) if isinstance(channels, (list, tuple)) else width,
                f"{name} in_channels")
    decay = cfg.optim_wrapper.get("paramwise_cfg") or {}
    indices = [bb.out_indices] if isinstance(bb.out_indices, int) else list(bb.out_indices)
    config_depth = decay.get("num_layers") or max(indices) + 1  # layer decay's blocks: the config's depth
    if config_depth != depth:
        new = scale_out_indices(indices, config_depth, depth)
        notes.append(f"backbone out_indices {tuple(indices)} -> {tuple(new)}: the same relative depths in "
                     f"{depth} blocks as in the config's {config_depth} ({why})")
        bb.out_indices = tuple(new)
    if "num_layers" in decay:  # mmseg's LearningRateDecayOptimizerConstructor: the blocks (it adds 2 itself)
        fit(decay, "num_layers", depth, "layer decay num_layers")
    if cfg.get("sslkit_results") is not None:  # results name the file's ViT, as published rows and baselines do
        fit(cfg.sslkit_results, "backbone", export.arch, "results backbone")
    return notes


def match_input_normalisation(cfg: Config) -> Optional[str]:
    """The data preprocessor's mean / std set to the input normalisation the backbone checkpoint was trained with
    (its export's: ImageNet's for most families, CLIP's own, none for SimCLR v1's converted ResNets), in the
    channel order the preprocessor normalises (RGB with ``bgr_to_rgb``, else the loaded BGR); returns the change
    for the log, None when the config's already is (or the file is an mmseg one: the config's)."""
    from pretrain.checkpoint import CheckpointFormatError

    pre = cfg.model.get("data_preprocessor")
    if not pre:
        return None
    try:
        export = _backbone_export(cfg)
    except CheckpointFormatError:  # a converted / trained mmseg file: trained with the config's normalisation
        return None
    if export is None:
        return None
    mean, std = [round(255 * m, 4) for m in export.mean], [round(255 * s, 4) for s in export.std]
    if not pre.get("bgr_to_rgb"):  # the images as loaded (cv2: BGR)
        mean, std = mean[::-1], std[::-1]
    old = (list(pre.get("mean") or []), list(pre.get("std") or []))
    if len(old[0]) == 3 and len(old[1]) == 3 and all(
            abs(a - b) < 1e-3 for a, b in zip(mean + std, old[0] + old[1])):
        return None
    pre.mean, pre.std = mean, std
    return f"input normalisation of the checkpoint: mean {mean} std {std} (the config's: mean {old[0]} std {old[1]})"


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
                raise ConfigError(f"--classes / --ignore-label apply to SegFolderDataset configs, not {ds.type}")
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
    schedulers = cfg.get("param_scheduler") or []
    schedulers = [schedulers] if isinstance(schedulers, dict) else schedulers
    for sched in schedulers:
        for key in ("begin", "end"):
            if key in sched:
                sched[key] = min(iters, scale(sched[key])) if sched[key] else 0
        if "milestones" in sched:  # a step schedule (MoCo's FCN recipes): its steps at the same fractions
            sched["milestones"] = [min(iters, scale(m)) for m in sched["milestones"]]
    # A phase scaled to no iteration (the poly decay after a warm-up that takes the only iteration)
    # would never run, and mmengine refuses a scheduler whose end is not after its begin: dropped.
    cfg.param_scheduler = [s for s in schedulers if s.get("begin", 0) < s.get("end", float("inf"))]
    ckpt = cfg.default_hooks.get("checkpoint")
    if ckpt and "interval" in ckpt:
        ckpt.interval = min(iters, scale(ckpt.interval))


def adapt_to_device(cfg: Config, cuda: bool) -> List[str]:
    """CPU fallbacks for a GPU recipe; returns what was changed (for the log).

    On CPUs: SyncBN -> BN (SyncBN needs GPUs), AmpOptimWrapper -> OptimWrapper
    (mmengine's AMP needs a GPU), gloo instead of nccl and a DDP wrapper without
    device ids for torchrun runs. The SyncBN a module takes from its class default
    is not in the config: Feature2Pyramid's (the MAE recipe's neck) is named here,
    and ``CPURunner`` reverts any other after the build.
    """
    if cuda:
        return []
    notes = []

    def name_default_norms(node):
        if isinstance(node, dict):
            if node.get("type") in SYNC_BN_DEFAULTS and "norm_cfg" not in node:
                node["norm_cfg"] = dict(type="SyncBN", requires_grad=True)  # the class default, named
            for v in node.values():
                name_default_norms(v)
        elif isinstance(node, (list, tuple)):
            for v in node:
                name_default_norms(v)

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

    name_default_norms(cfg.model)
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


def sync_bn_to_bn(model: nn.Module) -> nn.Module:
    """``model`` with its SyncBatchNorm layers as BatchNorm (same parameters and statistics)."""
    synced = sum(isinstance(m, nn.SyncBatchNorm) for m in model.modules())
    if not synced:
        return model
    from mmengine.model import revert_sync_batchnorm

    print_log(f"no GPU: {synced} SyncBatchNorm layers (a class default) -> BatchNorm", logger="current")
    return revert_sync_batchnorm(model)


class CPURunner(Runner):
    """mmengine's Runner for CPUs: the built model's SyncBatchNorm layers become BatchNorm before the
    DDP wrapper (which refuses them on CPUs), whatever their config said or left to a class default."""

    def build_model(self, model):
        return sync_bn_to_bn(super().build_model(model))


# ------------------------------------------------------------------ inputs
def _dataset_dirs(ds: Dict):
    """(image folder, label folder) a BaseSegDataset config reads (SegFolderDataset finds its own)."""
    root, prefix = ds.get("data_root") or "", ds.get("data_prefix") or {}
    return (Path(root, prefix["img_path"]) if "img_path" in prefix else None,
            Path(root, prefix["seg_map_path"]) if "seg_map_path" in prefix else None)


def check_data(cfg: Config, splits: Sequence[str] = ("train", "val", "test")) -> Dict[str, int]:
    """Every dataset the run reads, checked as the Runner would find it, but before the Runner creates
    the work dir: the root and its folders exist, the image list is not empty, and every image has its
    label map (mmseg itself fails on a missing one only when loading it). Returns {split: images}."""
    from mmseg.registry import DATASETS

    counts, seen = {}, []
    for split in splits:
        loader = cfg.get(f"{split}_dataloader")
        if not loader or loader.dataset in seen:  # test_dataloader is often val_dataloader
            continue
        seen.append(loader.dataset)
        ds = copy.deepcopy(dict(loader.dataset))
        what = f"the {split} split's {ds.get('type')}"
        root = ds.get("data_root")
        if root and not Path(root).is_dir():
            raise InputNotFound(f"dataset root not found: {root} ({what}; --data-root DIR sets it)")
        if ds.get("type") != "SegFolderDataset" and not ds.get("ann_file"):
            img_dir, seg_dir = _dataset_dirs(ds)
            for folder in (img_dir, seg_dir):
                if folder is not None and not folder.is_dir():
                    raise InputNotFound(
                        f"{folder} not found: {what} reads images from {img_dir} and labels from {seg_dir} "
                        f"(for ADE20K, --data-root is the ADEChallengeData2016 folder)")
        dataset = DATASETS.build(dict(ds, pipeline=[], lazy_init=False, serialize_data=False))
        if len(dataset) == 0:
            raise DataError(f"no images (*{getattr(dataset, 'img_suffix', '')}) in "
                            f"{dataset.data_prefix.get('img_path')} ({what})")
        unlabelled = [Path(info["img_path"]).name for info in map(dataset.get_data_info, range(len(dataset)))
                      if info.get("seg_map_path") and not Path(info["seg_map_path"]).is_file()]
        if unlabelled:
            raise DataError(f"{len(unlabelled)} of {len(dataset)} images of {what} have no label map in "
                            f"{dataset.data_prefix.get('seg_map_path')} (first: {unlabelled[:3]}); every image "
                            f"needs one")
        counts[split] = len(dataset)
    return counts


def check_checkpoint(path, what: str) -> None:
    """A checkpoint the run will load exists and reads as one (a CheckpointFormatError otherwise)."""
    from transfer.segmentation.checkpoint import load_checkpoint_file

    if not Path(path).is_file():
        raise InputNotFound(f"checkpoint not found: {path} ({what})")
    load_checkpoint_file(path)


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
    record none). The backbone's ``variant`` (``set_variant``) is recorded with the checkpoint.
    """
    from pretrain.checkpoint import CheckpointFormatError

    from transfer.results import pretrain_label

    checkpoint = backbone_checkpoint(cfg)
    info = cfg.get("sslkit_results") or {}
    label, epochs = None, None
    if checkpoint and inspect_checkpoint:
        try:
            export = _backbone_export(cfg)
        except CheckpointFormatError:  # an mmseg file (a trained segmentor): the config says
            export = None
        if export is not None:
            label, epochs = export.provenance.label, export.provenance.epochs
    record = {"pretrain": pretrain_label(pretrain, label, bool(checkpoint), info.get("pretrain")),
              "checkpoint": checkpoint,
              "iterations": cfg.train_cfg.max_iters, "batch": cfg.train_dataloader.batch_size * world_size}
    if epochs and checkpoint:
        record["pretrain_epochs"] = epochs
    if checkpoint and cfg.model.backbone.get("variant"):  # which network of the file was trained
        record["variant"] = cfg.model.backbone.variant
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
    if trained.get("variant"):
        recipe["variant"] = trained["variant"]
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
