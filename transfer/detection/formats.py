"""Datasets in their own formats, by path: LVIS jsons and the Cityscapes ``gtFine`` tree, with their own evaluations.

Wherever a dataset name is read (``tools/train_net.py --train-dataset / --test-dataset``, a config's
``dataloader.*.dataset.names``), besides detectron2's names and COCO jsons (``transfer.detection.data``):

* ``lvis:JSON[:IMAGE_ROOT]``: an LVIS json (v0.5 or v1) and the COCO 2017 images it names by ``coco_url``
  (``IMAGE_ROOT/train2017/``, ``IMAGE_ROOT/val2017/``; default IMAGE_ROOT: the json's folder, else
  detectron2's ``datasets/coco/`` beside ``datasets/lvis/``). Its classes are the json's categories (ids
  1..K, as LVIS's), so a json of a few categories trains a model of that size; scored by detectron2's
  ``LVISEvaluator``: the ``lvis`` package's federated AP (a category counts on an image only where the image
  is labelled for it: positive, or in ``neg_category_ids``; unmatched detections of a category in
  ``not_exhaustive_category_ids`` are no false positives), with APr / APc / APf by category ``frequency``.
* ``cityscapes:ROOT:SPLIT``: ``ROOT/leftImg8bit/SPLIT/<city>/*_leftImg8bit.png`` and
  ``ROOT/gtFine/SPLIT/<city>/*_gtFine_{polygons.json,instanceIds.png,labelIds.png}``; the training masks
  from the polygons (detectron2's builtin Cityscapes loader, ``from_json``), scored by ``cityscapesscripts``'
  instance-level evaluation on the ``instanceIds`` maps (AP, AP50; detectron2's ``CityscapesInstanceEvaluator``).

detectron2 0.6 as distributed imports ``cityscapesscripts`` under an internal path
(``deeplearning.projects.cityscapesApi.cityscapesscripts``: facebookresearch/detectron2#5436), so its
Cityscapes loader and evaluator cannot find the installed package; ``alias_cityscapesscripts`` names the
installed one under that path too; ``numpy_compat`` lets the ``lvis`` and ``cityscapesscripts`` evaluations run
on NumPy 2 (both done on import of this module, which the LVIS and Cityscapes configs import).
"""
from __future__ import annotations

import os
import sys
import types
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from pretrain.errors import DataError, InputNotFound, UserError

from . import require_detectron2

require_detectron2()
from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from detectron2.evaluation import CityscapesInstanceEvaluator as _D2CityscapesInstanceEvaluator  # noqa: E402
from detectron2.evaluation import LVISEvaluator  # noqa: E402

__all__ = ["PREFIXES", "register_format", "register_lvis", "register_cityscapes", "lvis_version",
           "fed_loss_cls_weights", "numpy_compat", "CityscapesInstanceEvaluator", "format_record",
           "alias_cityscapesscripts"]

LVIS, CITYSCAPES = "lvis:", "cityscapes:"
PREFIXES = (LVIS, CITYSCAPES)
_D2_CITYSCAPES = "deeplearning.projects.cityscapesApi.cityscapesscripts"  # detectron2 0.6's import path
_LVIS_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf")


def register_format(spec: str) -> Optional[str]:
    """The registered name of a ``lvis:`` / ``cityscapes:`` spec (registering it on first use); None for others."""
    if spec.startswith(LVIS):
        return register_lvis(spec)
    if spec.startswith(CITYSCAPES):
        return register_cityscapes(spec)
    return None


# ------------------------------------------------------------------------ LVIS
def lvis_version(json_file) -> str:
    """``v0.5`` or ``v1``, from the file's name as LVIS releases it (``lvis_v0.5_val.json``, ``lvis_v1_val.json``):
    the two are different benchmarks (categories, annotations), published in different tables."""
    return "v0.5" if "v0.5" in Path(str(json_file)).name else "v1"


def find_lvis_image_root(json_file: Path) -> Path:
    """The folder holding ``train2017/`` / ``val2017/`` for an LVIS json: its own, else detectron2's ``../coco``."""
    for root in (json_file.parent, json_file.parent.parent / "coco"):
        if (root / "train2017").is_dir() or (root / "val2017").is_dir():
            return root
    return json_file.parent


def register_lvis(spec: str) -> str:
    from .data import _split_spec

    json_part, images = _split_spec(spec[len(LVIS):])
    json_file = Path(json_part).expanduser()
    if not json_file.is_file():
        raise InputNotFound(f"LVIS annotation file not found: {json_file} (dataset {spec})")
    image_root = Path(images).expanduser() if images else find_lvis_image_root(json_file)
    if not image_root.is_dir():
        raise InputNotFound(f"image folder not found: {image_root} (for {json_file}); expected the folder holding "
                            f"COCO's train2017/ and val2017/: lvis:{json_file}:IMAGE_ROOT")
    if spec not in DatasetCatalog.list():
        DatasetCatalog.register(spec, lambda: load_lvis_checked(json_file, image_root, spec))
        MetadataCatalog.get(spec).set(json_file=str(json_file), image_root=str(image_root), evaluator_type="lvis")
    return spec


def load_lvis_checked(json_file: Path, image_root: Path, name: str) -> List[dict]:
    """detectron2's ``load_lvis_json`` with the json's own categories as the classes (``thing_classes``, and
    ``class_image_count`` for the federated loss), its failures on a file that is not LVIS json as one
    ``DataError``. The json is parsed twice (here for the categories, then by detectron2's loader)."""
    from detectron2.data.datasets.lvis import load_lvis_json
    from lvis import LVIS as LVISApi

    try:
        api = LVISApi(str(json_file))
    except (ValueError, KeyError, TypeError, AssertionError) as e:
        raise DataError(f"{json_file} is not an LVIS annotation file ({type(e).__name__}: {e}): expected a JSON "
                        f"object with 'images', 'annotations' and 'categories'") from None
    categories = sorted(api.cats.values(), key=lambda c: c["id"])
    ids = [c["id"] for c in categories]
    if ids != list(range(1, len(ids) + 1)):
        raise DataError(f"{json_file}: LVIS category ids are 1..{len(ids)}, found {ids[:10]}...: renumber them")
    images_of = {cid: len(set(api.cat_img_map[cid])) for cid in ids}
    MetadataCatalog.get(name).set(
        thing_classes=[c["name"] for c in categories],
        class_image_count=[{"id": cid, "image_count": images_of[cid]} for cid in ids])
    try:  # its ids 1..K become the contiguous 0..K-1; the file names come from coco_url (train2017/...)
        dicts = load_lvis_json(str(json_file), str(image_root) + os.sep)
    except (ValueError, KeyError, TypeError, AssertionError) as e:
        raise DataError(f"{json_file}: not LVIS json detectron2 reads ({type(e).__name__}: {e})") from None
    if not dicts:
        raise DataError(f"{json_file} lists no images")
    if not os.path.isfile(dicts[0]["file_name"]):
        raise DataError(f"{dicts[0]['file_name']} not found: the images of {json_file} (by their coco_url) are not "
                        f"under {image_root}; name the folder holding train2017/ and val2017/: "
                        f"lvis:{json_file}:IMAGE_ROOT")
    return dicts


def numpy_compat(module, **aliases) -> None:
    """``module``'s ``np`` with ``aliases`` for the names NumPy removed (numpy itself untouched): ``lvis`` 0.5.3, the
    last release on PyPI, calls ``np.float`` (removed in NumPy 1.24; fixed in lvis-api's main branch,
    lvis-dataset/lvis-api#42, unreleased), cityscapesscripts 2.3.0 ``np.in1d`` (removed in NumPy 2.4)."""
    missing = {name: alias for name, alias in aliases.items() if not hasattr(module.np, name)}
    if missing:
        compat = types.ModuleType("numpy")
        compat.__dict__.update(vars(module.np))
        compat.__dict__.update(missing)
        module.np = compat


def lvis_numpy_compat() -> None:
    try:
        import lvis.eval
    except ImportError:
        return
    numpy_compat(lvis.eval, float=float)  # NumPy's deprecation: the builtin


def fed_loss_cls_weights(dataset_names, freq_weight_power: float = 0.5):
    """The federated loss's class weights (ViTDet's LVIS recipes: image counts ** 0.5) as the callable
    ``FastRCNNOutputLayers`` takes, for the training sets the run reads (a config names them by
    interpolation, so that --train-dataset reaches it, unlike a lambda over the config file's own loader)."""
    from functools import partial

    from detectron2.data.detection_utils import get_fed_loss_cls_weights

    return partial(get_fed_loss_cls_weights, dataset_names, freq_weight_power)


# ------------------------------------------------------------------ Cityscapes
def alias_cityscapesscripts() -> bool:
    """Name the installed ``cityscapesscripts`` (and its loaded modules) under detectron2 0.6's internal import
    path too; False when it is not installed (``pip install cityscapesscripts``)."""
    try:
        import cityscapesscripts.evaluation.evalInstanceLevelSemanticLabeling as evaluation
        import cityscapesscripts.helpers.labels  # noqa: F401
    except ImportError:
        return False
    numpy_compat(evaluation, in1d=lambda a, b, assume_unique=False, invert=False:
                 evaluation.np.isin(a, b, assume_unique=assume_unique, invert=invert).ravel())
    evaluation.writeDict2JSON = _write_cityscapes_json
    parts = _D2_CITYSCAPES.split(".")
    for i in range(1, len(parts)):
        parent = ".".join(parts[:i])
        if parent not in sys.modules:
            sys.modules[parent] = types.ModuleType(parent)
            sys.modules[parent].__path__ = []  # a package, for the import system
    for name, module in list(sys.modules.items()):
        if name == "cityscapesscripts" or name.startswith("cityscapesscripts."):
            sys.modules.setdefault(_D2_CITYSCAPES + name[len("cityscapesscripts"):], module)
    return True


def _write_cityscapes_json(record, file_name: str) -> None:
    """cityscapesscripts' ``writeDict2JSON`` for its evaluation, with NumPy 2's scalars (its pixel counts) as
    numbers; its debugging dump of every match to ``matches.json`` in the working directory is left out (the
    evaluation does not read it back; a ladder job would leave it wherever it was started)."""
    import json

    if file_name == "matches.json":
        return

    def plain(value):
        return value.item() if hasattr(value, "item") and not hasattr(value, "__dict__") else value.__dict__

    with open(file_name, "w") as f:
        json.dump(record, f, default=plain, sort_keys=True, indent=4)


def _require_cityscapesscripts() -> None:
    if not alias_cityscapesscripts():
        raise UserError("the Cityscapes datasets and evaluation need cityscapesscripts: pip install --no-deps "
                        "cityscapesscripts==2.3.0 pyquaternion==0.9.9 (tools/setup_env.sh installs them)")


def cityscapes_thing_classes() -> List[str]:
    """The 8 instance classes Cityscapes evaluates, in the order of its labels (detectron2's)."""
    from cityscapesscripts.helpers.labels import labels

    return [label.name for label in labels if label.hasInstances and not label.ignoreInEval]


def register_cityscapes(spec: str) -> str:
    root, sep, split = spec[len(CITYSCAPES):].rpartition(":")
    if not sep or not root or not split:
        raise DataError(f"dataset {spec!r}: expected cityscapes:ROOT:SPLIT (ROOT holding leftImg8bit/SPLIT/ and "
                        f"gtFine/SPLIT/, SPLIT e.g. train or val)")
    root = Path(root).expanduser()
    image_dir, gt_dir = root / "leftImg8bit" / split, root / "gtFine" / split
    for folder in (image_dir, gt_dir):
        if not folder.is_dir():
            raise InputNotFound(f"Cityscapes folder not found: {folder} (dataset {spec}: expected "
                                f"ROOT/leftImg8bit/{split}/<city>/ and ROOT/gtFine/{split}/<city>/)")
    _require_cityscapesscripts()
    if spec not in DatasetCatalog.list():
        DatasetCatalog.register(spec, lambda: load_cityscapes_checked(image_dir, gt_dir))
        MetadataCatalog.get(spec).set(image_dir=str(image_dir), gt_dir=str(gt_dir),
                                      evaluator_type="cityscapes_instance", thing_classes=cityscapes_thing_classes())
    return spec


def load_cityscapes_checked(image_dir: Path, gt_dir: Path) -> List[dict]:
    """detectron2's Cityscapes instance loader, as its builtin datasets (masks from the polygon jsons), with a
    missing annotation file or an empty folder as one ``DataError``."""
    from detectron2.data.datasets.cityscapes import load_cityscapes_instances

    try:
        dicts = load_cityscapes_instances(str(image_dir), str(gt_dir), from_json=True, to_polygons=True)
    except (AssertionError, FileNotFoundError, KeyError, ValueError) as e:
        raise DataError(f"Cityscapes {image_dir} / {gt_dir}: {type(e).__name__}: {e} (each "
                        f"<city>/<name>_leftImg8bit.png needs <name>_gtFine_polygons.json, _instanceIds.png and "
                        f"_labelIds.png in gtFine)") from None
    if not dicts:
        raise DataError(f"no <city>/*_leftImg8bit.png under {image_dir}")
    return dicts


class CityscapesInstanceEvaluator(_D2CityscapesInstanceEvaluator):
    """detectron2's, with ``cityscapesscripts`` where detectron2 0.6 imports it from (``alias_cityscapesscripts``)."""

    def __init__(self, dataset_name: str):
        _require_cityscapesscripts()
        super().__init__(dataset_name)


# --------------------------------------------------------------------- results
def format_record(evaluator, results: Dict[str, Dict[str, float]]
                  ) -> Optional[Tuple[str, Dict[str, Optional[float]]]]:
    """(task, metrics) of an LVIS or Cityscapes evaluation (None for other evaluators): ``lvis_v0.5_instance_seg``
    / ``lvis_v1_instance_seg`` with box and mask AP, AP50, AP75, APs/m/l and APr/c/f; ``cityscapes_instance_seg``
    with mask AP and AP50."""
    from .engine import _finite

    if isinstance(evaluator, LVISEvaluator):
        # LVIS says -1 (here x100) where no category of a kind (rare, small, ...) is in the evaluation: no value
        metrics = {f"{prefix}_{name}": _finite(value) if value >= 0 else None
                   for iou_type, prefix in (("bbox", "box"), ("segm", "mask"))
                   for name, value in results.get(iou_type, {}).items() if name in _LVIS_METRICS}
        return f"lvis_{lvis_version(evaluator._metadata.json_file)}_instance_seg", metrics
    if isinstance(evaluator, _D2CityscapesInstanceEvaluator):
        segm = results["segm"]
        return "cityscapes_instance_seg", {"mask_AP": _finite(segm["AP"]), "mask_AP50": _finite(segm["AP50"])}
    return None


alias_cityscapesscripts()  # detectron2's builtin Cityscapes datasets load through that path too
lvis_numpy_compat()
