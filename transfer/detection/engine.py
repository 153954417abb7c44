"""Train and evaluate a detection recipe from a LazyConfig (``.py``) or a yacs config (``.yaml``).

The project's recipes are LazyConfigs (``configs/detectron2/``). yacs configs are read for the
ResNet recipes users hold in that form, the MoCo authors' (their repository's
``detection/configs/``: Base-RCNN-C4-BN, VOC 24k, COCO 2x, with the ``Res5ROIHeadsExtraNorm``
head registered by ``transfer.detection.roi_heads``); ViTDet, as in detectron2, is LazyConfig-only.
``Recipe`` puts both config kinds behind one interface (model, optimizer,
loaders, schedule, evaluators, settings); ``train`` and ``evaluate`` are the
loop of detectron2's ``tools/lazyconfig_train_net.py`` (``SimpleTrainer`` /
``AMPTrainer`` and its hooks, DDP through ``launch``) for both, with the
project's ``Checkpointer`` (pretraining checkpoints load directly, pickles are
not trusted by default) and a ``results.json`` per evaluated dataset
(``transfer.results``): COCO box / mask AP or VOC AP50 / AP / AP75.
"""
from __future__ import annotations

import inspect
import logging
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from omegaconf import OmegaConf

from pretrain.errors import ConfigError, DataError, InputNotFound
from transfer.results import EVAL_RESULTS_FILE, RESULTS_FILE, holds_training_record, pretrain_label, write_results

from . import require_detectron2

require_detectron2()
import detectron2.utils.comm as comm  # noqa: E402
from detectron2.config import CfgNode, LazyConfig, instantiate  # noqa: E402
from detectron2.engine import AMPTrainer, SimpleTrainer, create_ddp_model, hooks  # noqa: E402
from detectron2.engine.defaults import default_writers  # noqa: E402
from detectron2.utils.registry import locate  # noqa: E402
from detectron2.evaluation import (  # noqa: E402
    COCOEvaluator, PascalVOCDetectionEvaluator, inference_on_dataset, print_csv_format,
)

from .checkpoint import Checkpointer  # noqa: E402
from .convert import PATCH_RESIZE, backbone_name  # noqa: E402
from .data import MetadataCatalog, check_files, num_classes, resolve_datasets  # noqa: E402

__all__ = ["Recipe", "train", "evaluate", "evaluate_checkpoint", "results_record", "backbone_label"]
log = logging.getLogger("sslkit.detectron2")


class Recipe:
    """A LazyConfig or yacs config, read through one interface.

    ``Recipe.load(path, overrides, **settings)``: overrides are ``key=value``
    (LazyConfig) or ``KEY VALUE`` pairs (yacs); settings are the common ones
    every tool sets (``init_checkpoint``, ``output_dir``, ``max_iter``,
    ``train_datasets``, ``test_datasets``, ``device``), written into the config
    where its kind keeps them. Dataset names may be paths
    (``transfer.detection.data``); the number of classes follows the data (the
    training sets'; with ``eval_only``, the test sets').
    A config with ``train.backbone_from_checkpoint=True`` takes its ViT's shape and options from
    ``init_checkpoint`` (``backbones.fit_vitdet_to_checkpoint``; ``allow_pickle`` to read it, ``variant``: its
    network, of a file that holds several); without one, from the checkpoint ``resume`` names (a run's records its
    network), and an ``eval_only`` recipe with neither stops: its placeholder ViT would evaluate nothing trained.
    """

    def __init__(self, cfg, path: str):
        self.cfg, self.path = cfg, str(path)
        self.lazy = not isinstance(cfg, CfgNode)
        self.notes: List[str] = []  # what loading changed, to log once logging is set up

    # ----------------------------------------------------------------- load
    @classmethod
    def load(cls, path, overrides: Sequence[str] = (), init_checkpoint: Optional[str] = None,
             output_dir: Optional[str] = None, max_iter: Optional[int] = None,
             train_datasets: Optional[Sequence[str]] = None, test_datasets: Optional[Sequence[str]] = None,
             device: Optional[str] = None, eval_only: bool = False, allow_pickle: bool = False,
             variant: Optional[str] = None, resume: Optional[str] = None) -> "Recipe":
        path = Path(path)
        if not path.is_file():
            raise InputNotFound(f"config not found: {path}")
        if path.suffix == ".py":
            from hydra.errors import HydraException

            cfg = LazyConfig.load(str(path))
            try:
                cfg = LazyConfig.apply_overrides(cfg, list(overrides))
            except (KeyError, ValueError, HydraException) as e:  # a key under a value, hydra's parse of key=value
                raise ConfigError(f"{path}: cannot apply the overrides {' '.join(overrides)} "
                                  f"({type(e).__name__}: {e}); they are key=value for a LazyConfig") from None
        elif path.suffix in (".yaml", ".yml"):
            from .config import get_cfg

            cfg = get_cfg()
            cfg.merge_from_file(str(path))
            try:
                cfg.merge_from_list(list(overrides))
            except (KeyError, ValueError, AssertionError) as e:  # yacs: an unknown key, a wrong type, an odd list
                raise ConfigError(f"{path}: cannot apply the overrides {' '.join(overrides)} "
                                  f"({type(e).__name__}: {e}); they are KEY VALUE pairs for a yacs config") from None
        else:
            raise ConfigError(f"expected a LazyConfig (.py) or a yacs config (.yaml), got {path}")
        recipe = cls(cfg, path)
        recipe._apply(init_checkpoint=init_checkpoint, output_dir=output_dir, max_iter=max_iter, device=device,
                      train_datasets=train_datasets, test_datasets=test_datasets, eval_only=eval_only)
        source = recipe.init_checkpoint if recipe.lazy else ""
        from_checkpoint = recipe.lazy and recipe.get("train.backbone_from_checkpoint", "", False)
        if from_checkpoint and (not source or "://" in source) and (eval_only or resume):
            source, variant = recipe.resumed_checkpoint(resume) or "", None  # a run's checkpoint records its network
            if not source and eval_only:
                raise ConfigError(f"{path} builds its ViT from the checkpoint (train.backbone_from_checkpoint), and "
                                  f"this --eval-only run has none to build it from: pass --checkpoint (the run's "
                                  f"OUTPUT/model_final.pth, or its pretraining file) or --resume in the run's folder")
        if from_checkpoint and os.path.isfile(source.split("?", 1)[0]):  # else check_inputs says what is missing
            from .backbones import fit_vitdet_to_checkpoint

            recipe.notes += fit_vitdet_to_checkpoint(cfg, source, allow_pickle, variant)
        if not recipe.lazy:
            cfg.freeze()
        return recipe

    def resumed_checkpoint(self, resume: Optional[str]) -> Optional[str]:
        """The file ``resume`` names before a checkpointer exists: ``auto``, the output folder's last checkpoint
        (detectron2's ``last_checkpoint`` file names it; None without one), else the path (``resumed_file``)."""
        if resume != "auto":
            return resume or None
        marker = Path(self.output_dir) / "last_checkpoint"
        return str(marker.with_name(marker.read_text().strip())) if marker.is_file() else None

    def _set(self, lazy_key: str, yacs_key: str, value):
        node, key = (self.cfg, lazy_key if self.lazy else yacs_key)
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value

    def get(self, lazy_key: str, yacs_key: str, default=None):
        node = self.cfg
        for p in (lazy_key if self.lazy else yacs_key).split("."):
            try:
                node = node[p]
            except (KeyError, AttributeError, TypeError):
                return default
        return default if node is None else node

    def _apply(self, init_checkpoint, output_dir, max_iter, device, train_datasets, test_datasets, eval_only):
        if init_checkpoint is not None:
            self._set("train.init_checkpoint", "MODEL.WEIGHTS", init_checkpoint)
        if output_dir is not None:
            self._set("train.output_dir", "OUTPUT_DIR", output_dir)
        if max_iter is not None:
            self._set("train.max_iter", "SOLVER.MAX_ITER", int(max_iter))
        if device is None and str(self.device).startswith("cuda") and not torch.cuda.is_available():
            self.notes.append(f"the config asks for {self.device} but no GPU is visible: running on the CPU")
            device = "cpu"
        if device is not None:
            self._set("train.device", "MODEL.DEVICE", device)
        train = self.get("dataloader.train.dataset.names", "DATASETS.TRAIN", ())
        test = self.get("dataloader.test.dataset.names", "DATASETS.TEST", ())
        train = resolve_datasets(train_datasets or train)
        test = resolve_datasets(test_datasets or test)
        if self.lazy:
            self.cfg.dataloader.train.dataset.names = train[0] if len(train) == 1 else list(train)
            self.cfg.dataloader.test.dataset.names = test[0] if len(test) == 1 else list(test)
            if "evaluator" in self.cfg.dataloader and "dataset_name" in self.cfg.dataloader.evaluator:
                self.cfg.dataloader.evaluator.dataset_name = test[0]
        else:
            self.cfg.DATASETS.TRAIN, self.cfg.DATASETS.TEST = train, test
        # The classes of the data the model learns; an evaluation only: of the data it is scored on.
        n_train, n_test = num_classes(train), num_classes(test)
        if not eval_only and None not in (n_train, n_test) and n_train != n_test:
            raise DataError(f"the training sets {list(train)} have {n_train} classes, the test sets {list(test)} "
                            f"{n_test}: evaluate on data of the training classes (--test-json / --test-images)")
        n = (n_test or n_train) if eval_only else (n_train or n_test)
        current = self.get("model.roi_heads.num_classes", "MODEL.ROI_HEADS.NUM_CLASSES")
        if n is not None and current is not None and n != current:
            self.notes.append(f"num_classes follows the datasets: {n} (the config said {current})")
            self._set("model.roi_heads.num_classes", "MODEL.ROI_HEADS.NUM_CLASSES", n)

    # ------------------------------------------------------------- settings
    @property
    def device(self) -> str:
        return self.get("train.device", "MODEL.DEVICE", "cuda")

    @property
    def output_dir(self) -> str:
        return self.get("train.output_dir", "OUTPUT_DIR", "./output")

    @property
    def init_checkpoint(self) -> str:
        return self.get("train.init_checkpoint", "MODEL.WEIGHTS", "")

    @property
    def max_iter(self) -> int:
        return int(self.get("train.max_iter", "SOLVER.MAX_ITER"))

    @property
    def patch_resize(self) -> str:
        """How a pretrained patch embedding of another size is resized (``train.patch_embed_resize``):
        ``bicubic``, as the ViTDet authors, or ``pinv`` (a deviation). yacs configs hold ResNets only."""
        method = self.cfg.train.get("patch_embed_resize", "bicubic") if self.lazy else "bicubic"
        if method not in PATCH_RESIZE:
            raise ConfigError(f"{self.path}: the patch embedding resize must be one of {', '.join(PATCH_RESIZE)}, "
                              f"got {method!r}")
        return method

    @property
    def train_datasets(self) -> Tuple[str, ...]:
        names = self.get("dataloader.train.dataset.names", "DATASETS.TRAIN", ())
        return (names,) if isinstance(names, str) else tuple(names)

    @property
    def test_datasets(self) -> Tuple[str, ...]:
        names = self.get("dataloader.test.dataset.names", "DATASETS.TEST", ())
        return (names,) if isinstance(names, str) else tuple(names)

    def check_datasets(self, train: bool = True):
        """The files of the datasets a run reads exist (the training sets only when it trains): a
        builtin dataset that is not on this machine is an ``InputNotFound`` naming it, before a model is built."""
        for flag, names in (("train", self.train_datasets if train else ()), ("test", self.test_datasets)):
            for name in names:
                check_files(name, flag)

    @property
    def detector(self) -> str:
        """``ViTDet`` (simple feature pyramid), ``FPN`` or ``C4``: the detector family the published rows name."""
        if self.lazy:
            target = self.cfg.model.backbone._target_
            name = target if isinstance(target, str) else target.__name__
            return next((kind for key, kind in (("SimpleFeaturePyramid", "ViTDet"), ("FPN", "FPN"))
                         if key in name), "C4")
        return "FPN" if "fpn" in self.cfg.MODEL.BACKBONE.NAME.lower() else "C4"

    @property
    def task(self) -> str:
        """The results task its evaluation writes: ``voc_det``, else ``coco_task``'s (``coco_instance_seg``,
        ``coco_det``, ``coco_keypoints``; a Cascade R-CNN's ``..._cascade``); an LVIS or Cityscapes evaluator's
        (``format_task``)."""
        if self.lazy:
            target = self.cfg.dataloader.evaluator._target_
            voc = "PascalVOC" in (target if isinstance(target, str) else target.__name__)
            own = self.format_task(target)
            if own:
                return own
        else:
            meta = MetadataCatalog.get(self.test_datasets[0])
            voc = meta.get("evaluator_type", None) == "pascal_voc" or meta.get("year", None) in (2007, 2012)
        return "voc_det" if voc else coco_task(self.coco_tasks, self.cascade)

    def format_task(self, evaluator) -> Optional[str]:
        """The task of an LVIS or Cityscapes evaluator (``transfer.detection.formats.format_record``'s), else None."""
        from detectron2.evaluation import CityscapesInstanceEvaluator, LVISEvaluator

        from .formats import lvis_version

        target = locate(evaluator) if isinstance(evaluator, str) else evaluator
        if isinstance(target, type) and issubclass(target, LVISEvaluator):
            json_file = MetadataCatalog.get(self.test_datasets[0]).get("json_file", self.test_datasets[0])
            return f"lvis_{lvis_version(json_file)}_instance_seg"
        if isinstance(target, type) and issubclass(target, CityscapesInstanceEvaluator):
            return "cityscapes_instance_seg"
        return None

    @property
    def coco_tasks(self) -> Tuple[str, ...]:
        mask_on = self.cfg.model.roi_heads.get("mask_head") is not None if self.lazy else self.cfg.MODEL.MASK_ON
        keypoint_on = (self.cfg.model.roi_heads.get("keypoint_head") is not None if self.lazy
                       else self.cfg.MODEL.KEYPOINT_ON)
        return ("bbox",) + (("segm",) if mask_on else ()) + (("keypoints",) if keypoint_on else ())

    @property
    def cascade(self) -> bool:
        """A Cascade R-CNN (ViTDet's Cascade Mask R-CNN): its results are a task of their own."""
        if self.lazy:
            target = self.cfg.model.roi_heads._target_
            return "Cascade" in (target if isinstance(target, str) else target.__name__)
        return "Cascade" in self.cfg.MODEL.ROI_HEADS.NAME

    def settings(self) -> Dict[str, Any]:
        """The loop's settings, whatever the config kind."""
        if self.lazy:
            t = self.cfg.train
            pbn = t.get("precise_bn", None) or {}
            return {"amp": bool(t.amp.enabled), "checkpoint_period": t.checkpointer.period,
                    "max_to_keep": t.checkpointer.get("max_to_keep", None), "eval_period": t.eval_period,
                    "log_period": t.log_period, "ddp": dict(t.ddp), "precise_bn": bool(pbn.get("enabled", False)),
                    "precise_bn_iters": int(pbn.get("num_iter", 200))}
        c = self.cfg
        return {"amp": c.SOLVER.AMP.ENABLED, "checkpoint_period": c.SOLVER.CHECKPOINT_PERIOD, "max_to_keep": None,
                "eval_period": c.TEST.EVAL_PERIOD, "log_period": 20, "ddp": {"broadcast_buffers": False},
                "precise_bn": c.TEST.PRECISE_BN.ENABLED, "precise_bn_iters": c.TEST.PRECISE_BN.NUM_ITER}

    def recipe_summary(self) -> Dict[str, Any]:
        """What the results file records of the recipe: iterations, batch, image size, schedule."""
        if self.lazy:
            batch = self.cfg.dataloader.train.get("total_batch_size")
            augs = self.cfg.dataloader.test.mapper.get("augmentations", []) or []
            size = next((a.get("short_edge_length") for a in augs if "short_edge_length" in a), None)
        else:
            batch = self.cfg.SOLVER.IMS_PER_BATCH
            size = self.cfg.INPUT.MIN_SIZE_TEST
        return {"iterations": self.max_iter, "batch": batch, "img_size": size, "detector": self.detector,
                "schedule": Path(self.path).stem, "config": self.path}

    # -------------------------------------------------------------- builders
    def build_model(self) -> torch.nn.Module:
        if self.lazy:
            model = instantiate(self.cfg.model).to(self.device)
        else:
            from detectron2.modeling import build_model

            model = build_model(self.cfg)
        return cpu_sync_bn(model)

    def build_optimizer(self, model) -> torch.optim.Optimizer:
        if self.lazy:
            self.cfg.optimizer.params.model = model
            optimizer = instantiate(self.cfg.optimizer)
            # Plain values (betas arrive as omegaconf containers), so that checkpoints load with weights_only=True.
            for group in [optimizer.defaults, *optimizer.param_groups]:
                group.update({k: _plain(v) for k, v in group.items() if OmegaConf.is_config(v)})
            return optimizer
        from detectron2.solver import build_optimizer

        return build_optimizer(self.cfg, model)

    def build_train_loader(self):
        if self.lazy:
            return instantiate(self.cfg.dataloader.train)
        from detectron2.data import build_detection_train_loader

        return build_detection_train_loader(self.cfg)

    def build_lr_hook(self, optimizer):
        if self.lazy:
            return hooks.LRScheduler(scheduler=instantiate(self.cfg.lr_multiplier))
        from detectron2.solver import build_lr_scheduler

        return hooks.LRScheduler(optimizer, build_lr_scheduler(self.cfg, optimizer))

    def build_test(self, output_dir: str) -> List[Tuple[str, Any, Any]]:
        """(dataset name, loader, evaluator) for each test dataset."""
        if self.lazy:
            loader = instantiate(self.cfg.dataloader.test)
            ev = self.cfg.dataloader.evaluator
            target = ev._target_ if not isinstance(ev._target_, str) else locate(ev._target_)
            params = inspect.signature(target).parameters
            if "output_dir" in params:
                ev.output_dir = output_dir
            if "tasks" in params and not ev.get("tasks"):
                ev.tasks = self.coco_tasks  # report mask AP even when there is nothing to score
            return [(self.test_datasets[0], loader, instantiate(ev))]
        from detectron2.data import build_detection_test_loader

        out = []
        for name in self.test_datasets:
            meta = MetadataCatalog.get(name)
            if meta.get("evaluator_type", None) == "pascal_voc" or meta.get("year", None) in (2007, 2012):
                evaluator = PascalVOCDetectionEvaluator(name)
            else:
                evaluator = COCOEvaluator(name, tasks=self.coco_tasks,
                                          output_dir=os.path.join(output_dir, name.replace("/", "_")))
            out.append((name, build_detection_test_loader(self.cfg, name), evaluator))
        return out


def cpu_sync_bn(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with its ``nn.SyncBatchNorm`` layers (the recipes' ``SyncBN``) made detectron2's
    ``NaiveSyncBatchNorm`` when several processes run on the CPU: torch's SyncBN refuses CPU tensors
    once a process group exists, the naive one synchronises the same statistics through gloo. The
    parameters and buffers are kept (same names, same tensors), so checkpoints load either way."""
    if comm.get_world_size() == 1 or next(model.parameters()).device.type != "cpu":
        return model
    from detectron2.layers import NaiveSyncBatchNorm

    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if isinstance(child, torch.nn.SyncBatchNorm):
                naive = NaiveSyncBatchNorm(child.num_features, eps=child.eps, momentum=child.momentum,
                                           affine=child.affine, track_running_stats=child.track_running_stats)
                naive._parameters, naive._buffers = child._parameters, child._buffers
                setattr(parent, name, naive)
    return model


def ddp_model(model: torch.nn.Module, **kwargs) -> torch.nn.Module:
    """detectron2's ``create_ddp_model`` (DDP when several processes run), also on the CPU: detectron2
    puts the process's GPU in ``device_ids``, which DDP refuses for a CPU model (``--num-gpus 2`` on a
    machine without GPUs, gloo processes); a CPU model takes none."""
    if comm.get_world_size() > 1 and next(model.parameters()).device.type == "cpu":
        kwargs["device_ids"] = None
    return create_ddp_model(model, **kwargs)


def _plain(value):
    value = OmegaConf.to_container(value)
    return tuple(value) if isinstance(value, list) else value


class PretrainInfo:
    """What pretrained the backbone, saved in every training checkpoint so that resumed and evaluated runs know."""

    def __init__(self):
        self.info: Dict[str, Any] = {}

    def state_dict(self):
        return dict(self.info)

    def load_state_dict(self, state):
        self.info = dict(state)


def _finite(x) -> Optional[float]:
    x = float(x)
    return x if x == x and abs(x) != float("inf") else None


def coco_task(iou_types: Sequence[str], cascade: bool = False) -> str:
    """The results task of a COCO evaluation of ``iou_types``: person keypoints (``coco_keypoints``, OKS AP),
    instance segmentation or boxes; a Cascade R-CNN's boxes and masks are a task of their own (the ladder's
    cascade rung, ViTDet's Cascade rows), not comparable with Mask R-CNN's."""
    if "keypoints" in iou_types:
        return "coco_keypoints"
    return ("coco_instance_seg" if "segm" in iou_types else "coco_det") + ("_cascade" if cascade else "")


def results_record(evaluator, results: Dict[str, Dict[str, float]], cascade: bool = False
                   ) -> Tuple[str, Dict[str, Optional[float]]]:
    """(task, metrics) of ``transfer.results`` for one evaluator's output (``cascade``: a Cascade R-CNN's)."""
    from .formats import format_record

    own = format_record(evaluator, results)  # LVIS (federated) and Cityscapes: tasks of their own
    if own is not None:
        return own
    if isinstance(evaluator, PascalVOCDetectionEvaluator):
        box = results["bbox"]
        return "voc_det", {k: _finite(box[k]) for k in ("AP50", "AP", "AP75")}
    metrics = {}
    for iou_type, prefix in (("bbox", "box"), ("segm", "mask"), ("keypoints", "keypoint")):
        for name, value in results.get(iou_type, {}).items():
            if name in ("AP", "AP50", "AP75", "APs", "APm", "APl"):
                metrics[f"{prefix}_{name}"] = _finite(value)
    if not metrics:
        raise ValueError(f"no COCO box or mask AP in the evaluation results: {sorted(results)}")
    return coco_task(tuple(results), cascade), metrics


# ----------------------------------------------------------------------- loop
def backbone_label(model, pretrained: Optional[Dict[str, Any]] = None) -> str:
    """The backbone's name in results files: the pretrained one's when a checkpoint said
    (``vit_huge_patch14`` for ViTDet-H, whose patch embedding the checkpointer resized to 16),
    as the published numbers name it; else read off the model."""
    return (pretrained or {}).get("backbone") or backbone_name(model)


def evaluate(recipe: Recipe, model, output_dir: Optional[str] = None, checkpoint: Optional[str] = None,
             pretrain: Optional[str] = None, pretrained: Optional[Dict[str, Any]] = None,
             iterations: Optional[int] = None, eval_only: bool = False) -> Dict[str, Dict]:
    """Evaluate on every test dataset; write ``results.json`` (one per dataset: ``eval/<name>/`` when there
    are several) from the main process; an evaluation-only run writes ``results_eval.json`` where a training
    run's ``results.json`` is, leaving that record as it is (the report reads results.json files).
    ``pretrained``: what the pretrained checkpoint said (``PretrainInfo``): its backbone name, its
    pretraining epochs (they join the recipe, as the report compares them) and its weights layout
    (``torchvision`` for the ResNets converted here, checked against the published baselines').
    ``iterations``: those the evaluated weights were trained for, recorded instead of the recipe's
    (None: unknown, the recipe's stays); ``eval_only``: no training ran in this invocation."""
    output_dir = output_dir or recipe.output_dir
    pretrained = pretrained or {}
    epochs, weights = pretrained.get("pretrain_epochs"), pretrained.get("weights")
    summary = {**recipe.recipe_summary(), **({"pretrain_epochs": epochs} if epochs else {})}
    if pretrained.get("variant"):  # which network of the pretraining checkpoint (DINO's student), as the other tools
        summary["variant"] = pretrained["variant"]
    # What ran, not what the config asked for: the report marks a row whose iterations are not the recipe's.
    if iterations is not None:
        summary["iterations"] = int(iterations)
    if eval_only:
        summary["eval_only"] = True
    all_results = OrderedDict()  # inference_on_dataset evaluates in eval mode and restores the mode after
    tests = recipe.build_test(os.path.join(output_dir, "inference"))
    for name, loader, evaluator in tests:
        results = inference_on_dataset(model, loader, evaluator)
        all_results[name] = results
        if not comm.is_main_process():
            continue
        print_csv_format(results)
        task, metrics = results_record(evaluator, results, cascade=recipe.cascade)
        folder = output_dir if len(tests) == 1 else os.path.join(output_dir, "eval", name.replace("/", "_"))
        file_name = EVAL_RESULTS_FILE if eval_only and holds_training_record(folder) else RESULTS_FILE
        path = write_results(folder, task=task, backbone=backbone_label(model, pretrained),
                             pretrain=pretrain or "unknown", metrics=metrics, recipe=summary, checkpoint=checkpoint,
                             dataset=name, tool="tools/train_net.py", file_name=file_name,
                             **({"weights": weights} if weights else {}))
        log.info("wrote %s", path)
    return all_results


def _pretrain_label(info: Dict[str, Any], override: Optional[str], init_checkpoint: str) -> str:
    # A resumed run's checkpoint records what pretrained it, also when no initial weights are named now.
    return pretrain_label(override, info.get("pretrain"), bool(init_checkpoint) or bool(info.get("pretrain")))


def resumed_file(checkpointer: Checkpointer, resume: Optional[str]) -> Optional[str]:
    """The checkpoint ``resume`` names: ``auto``, the last one in the output folder (None when there is
    none yet, a first run); else a path; None without ``resume``."""
    if resume == "auto":
        return checkpointer.get_checkpoint_file() if checkpointer.has_checkpoint() else None
    return resume or None


def evaluate_checkpoint(recipe: Recipe, resume: Optional[str] = None, allow_pickle: bool = False,
                        pretrain: Optional[str] = None, variant: Optional[str] = None) -> Dict[str, Dict]:
    """``--eval-only``: load the checkpoint ``resume`` names (``resumed_file``), else the recipe's initial
    checkpoint (its network ``variant``), and evaluate."""
    model = recipe.build_model()
    info = PretrainInfo()
    checkpointer = Checkpointer(model, recipe.output_dir, allow_pickle=allow_pickle, pretrain_info=info,
                                patch_resize=recipe.patch_resize)
    resumed = resumed_file(checkpointer, resume)
    path = resumed or recipe.init_checkpoint
    # a training checkpoint knows its pretraining (its variant too) and its iteration (the last one run, from 0)
    loaded = checkpointer.load(path, checkpointables=["pretrain_info"], variant=None if resumed else variant) \
        if path else {}
    iterations = None  # a detectron2 file of unknown training: the recipe's stays
    if checkpointer.pretrained or not path:  # a pretraining checkpoint (or none) evaluated as it is: heads at random
        info.info = checkpointer.pretrained or {}
        iterations = 0
    elif "iteration" in (loaded or {}):
        iterations = int(loaded["iteration"]) + 1
    return evaluate(recipe, ddp_model(model), checkpoint=path or None,
                    pretrain=_pretrain_label(info.info, pretrain, path), pretrained=info.info,
                    iterations=iterations, eval_only=True)


class IterationCount(hooks.HookBase):
    """The iterations the model has been trained for (resumed ones included), for the results file: the
    trainer's own counter is one past the last step after training, and untouched when no step runs."""

    def __init__(self):
        self.done = 0

    def after_step(self):
        self.done = self.trainer.iter + 1


def train(recipe: Recipe, resume: Optional[str] = None, allow_pickle: bool = False, pretrain: Optional[str] = None,
          variant: Optional[str] = None) -> Dict[str, Dict]:
    """Train from ``init_checkpoint`` (its network ``variant``, of a file that holds several), or continuing the
    checkpoint ``resume`` names (``resumed_file``: ``auto`` or a path; it records the variant it started from),
    and evaluate at the end."""
    s = recipe.settings()
    model = recipe.build_model()
    log.info("Model:\n%s", model)
    optimizer = recipe.build_optimizer(model)
    train_loader = recipe.build_train_loader()
    model = ddp_model(model, **s["ddp"])
    trainer = (AMPTrainer if s["amp"] else SimpleTrainer)(model, train_loader, optimizer)
    info = PretrainInfo()
    checkpointer = Checkpointer(model, recipe.output_dir, allow_pickle=allow_pickle, trainer=trainer,
                                patch_resize=recipe.patch_resize, pretrain_info=info)
    final: Dict[str, Dict] = {}
    trained = IterationCount()

    def test_and_save():
        label = _pretrain_label(info.info, pretrain, recipe.init_checkpoint)
        final.update(evaluate(recipe, model, checkpoint=info.info.get("source"), pretrain=label,
                              pretrained=info.info, iterations=trained.done))
        return final

    from fvcore.nn.precise_bn import get_bn_modules

    precise_bn = (hooks.PreciseBN(s["eval_period"], model, recipe.build_train_loader(), s["precise_bn_iters"])
                  if s["precise_bn"] and get_bn_modules(model) else None)
    ckpt_kwargs = {"max_to_keep": s["max_to_keep"]} if s["max_to_keep"] else {}
    trainer.register_hooks([
        trained,  # first, so that an evaluation after a step counts it
        hooks.IterationTimer(),
        recipe.build_lr_hook(optimizer),
        precise_bn,
        hooks.PeriodicCheckpointer(checkpointer, s["checkpoint_period"], **ckpt_kwargs) if comm.is_main_process()
        else None,
        hooks.EvalHook(s["eval_period"], test_and_save),
        hooks.PeriodicWriter(default_writers(recipe.output_dir, recipe.max_iter), period=s["log_period"])
        if comm.is_main_process() else None,
    ])
    resumed = resumed_file(checkpointer, resume)
    if resumed:  # model, optimizer, schedule and iteration
        checkpointer.load(resumed)
    else:  # the weights only, as detectron2's resume_or_load
        checkpointer.load(recipe.init_checkpoint, checkpointables=[], variant=variant)
    if checkpointer.pretrained:
        info.info = checkpointer.pretrained
    start_iter = trainer.iter + 1 if resumed else 0
    trained.done = start_iter  # a resume past --max-iters trains nothing: its weights' iterations are recorded
    trainer.train(start_iter, recipe.max_iter)
    return final
