"""Datasets by path: a COCO-format json and its images, with no registration code to write.

Wherever a config names datasets (``dataloader.train.dataset.names``,
``DATASETS.TRAIN``; ``tools/train_net.py --train-json / --train-images``), a name may be

* a dataset detectron2 knows (``coco_2017_train``, ``voc_2007_test``, ...);
* ``path/to/instances.json``: a COCO-format json; its images are found in the
  COCO layout (``root/annotations/instances_<split>.json`` -> ``root/<split>/``),
  in an ``images/`` folder beside the json, or beside the json;
* ``path/to/instances.json:path/to/images``: the image folder given.

Path names are registered on first use as detectron2's
``register_coco_instances`` does (crowd regions and category-id gaps are handled as
for COCO itself; the evaluator maps contiguous ids back), their json checked when
it is read: a file that is not COCO json, or whose images are not in the folder,
is a ``DataError`` naming it; a person-keypoint json gets detectron2's COCO
keypoint metadata (``set_keypoint_metadata``). ``check_files`` checks that the files of a dataset
detectron2 registers itself (``coco_2017_train`` under ``$DETECTRON2_DATASETS``)
are there, before anything reads them.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, List, Optional, Tuple, Union

from pretrain.errors import ConfigError, DataError, InputNotFound

from . import require_detectron2

require_detectron2()
from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from detectron2.data.datasets import load_coco_json  # noqa: E402

__all__ = ["resolve_dataset", "resolve_datasets", "register_coco_folder", "find_image_root", "check_files"]


def find_image_root(json_file: Union[str, Path]) -> Path:
    """The image folder of a COCO json: ``root/<split>/`` for ``root/annotations/instances_<split>.json`` (or
    ``person_keypoints_<split>.json``), else the json's own folder."""
    json_file = Path(json_file)
    splits = dict.fromkeys((json_file.stem.split("_", 1)[-1], json_file.stem.rsplit("_", 1)[-1]))
    candidates = [folder / split for split in splits for folder in (json_file.parent.parent, json_file.parent)]
    candidates += [json_file.parent / "images", json_file.parent]
    for folder in candidates:
        if folder.is_dir() and folder != json_file.parent:
            return folder
    return json_file.parent


def register_coco_folder(json_file, image_root=None, name: Optional[str] = None) -> str:
    """Register a COCO-format json (and its image folder) under ``name`` (default: the path); returns the name."""
    json_file = Path(json_file).expanduser()
    if not json_file.is_file():
        raise InputNotFound(f"COCO annotation file not found: {json_file}")
    image_root = Path(image_root).expanduser() if image_root else find_image_root(json_file)
    if not image_root.is_dir():
        raise InputNotFound(f"image folder not found: {image_root} (for {json_file}); name it with "
                            f"--train-images / --test-images, or 'annotations.json:image_folder'")
    if next(image_root.iterdir(), None) is None:
        raise DataError(f"image folder {image_root} (for {json_file}) is empty: name the folder that holds its "
                        f"images with --train-images / --test-images, or 'annotations.json:image_folder'")
    name = name or f"{json_file}:{image_root}"
    if name not in DatasetCatalog.list():  # as register_coco_instances, with the json checked when read
        DatasetCatalog.register(name, lambda: load_coco_checked(json_file, image_root, name))
        MetadataCatalog.get(name).set(json_file=str(json_file), image_root=str(image_root), evaluator_type="coco")
    return name


def load_coco_checked(json_file: Path, image_root: Path, name: str) -> List[dict]:
    """detectron2's ``load_coco_json``, its failures on a file that is not COCO json (pycocotools' KeyError,
    AssertionError, JSONDecodeError) and images that are not in ``image_root`` as one ``DataError``."""
    try:
        dicts = load_coco_json(str(json_file), str(image_root), name)
    except (ValueError, KeyError, TypeError, AssertionError) as e:
        raise DataError(f"{json_file} is not a COCO-format annotation file ({type(e).__name__}: {e}): expected a "
                        f"JSON object with 'images', 'annotations' and 'categories'") from None
    if not dicts:
        raise DataError(f"{json_file} lists no images")
    if not os.path.isfile(dicts[0]["file_name"]):
        raise DataError(f"{dicts[0]['file_name']} not found: the images of {json_file} are not in {image_root}; "
                        f"name their folder with --train-images / --test-images, or 'annotations.json:image_folder'")
    set_keypoint_metadata(dicts, json_file, name)
    return dicts


def set_keypoint_metadata(dicts: List[dict], json_file: Path, name: str) -> None:
    """A person-keypoint json (``person_keypoints_*.json``) gets the metadata of detectron2's own COCO keypoint
    sets: the 17 keypoints' names, their left-right flip map (for flipped training images) and connections (for
    drawing), as ``keypoints_coco_2017_*`` has. Other keypoint layouts are refused: the keypoint recipes, their
    flip indices and the OKS sigmas of the evaluation are COCO's 17 person keypoints."""
    counts = {len(a["keypoints"]) // 3 for d in dicts for a in d.get("annotations", ()) if "keypoints" in a}
    if not counts:
        return
    from detectron2.data.datasets.builtin_meta import (
        COCO_PERSON_KEYPOINT_FLIP_MAP, COCO_PERSON_KEYPOINT_NAMES, KEYPOINT_CONNECTION_RULES,
    )

    if counts != {len(COCO_PERSON_KEYPOINT_NAMES)}:
        raise DataError(f"{json_file} has {sorted(counts)} keypoints per object; the keypoint recipes are COCO's "
                        f"{len(COCO_PERSON_KEYPOINT_NAMES)} person keypoints (person_keypoints_*.json)")
    meta = MetadataCatalog.get(name)
    if meta.get("keypoint_names", None) is None:
        meta.set(keypoint_names=COCO_PERSON_KEYPOINT_NAMES, keypoint_flip_map=COCO_PERSON_KEYPOINT_FLIP_MAP,
                 keypoint_connection_rules=KEYPOINT_CONNECTION_RULES)


def check_files(name: str, flag: str) -> None:
    """The files of a registered dataset exist: detectron2's builtin ones (``coco_2017_train``, ``voc_2007_test``)
    are registered under ``$DETECTRON2_DATASETS`` (default ``./datasets``) whether they are there or not, and
    pycocotools would fail on the first read. ``flag``: the options that name another set (``train``, ``test``)."""
    meta = MetadataCatalog.get(name)
    for key in ("json_file", "image_root", "dirname", "image_dir", "gt_dir"):  # COCO / LVIS, VOC, Cityscapes
        path = meta.get(key, None)
        if path and not os.path.exists(path):
            root = os.environ.get("DETECTRON2_DATASETS", "datasets")
            raise InputNotFound(
                f"dataset {name!r}: {os.path.abspath(path)} not found (detectron2 reads its builtin datasets under "
                f"$DETECTRON2_DATASETS, now {os.path.abspath(os.path.expanduser(root))}); set DETECTRON2_DATASETS to "
                f"the folder that holds it, or pass --{flag}-json (and --{flag}-images) naming a COCO-format copy")


def _split_spec(spec: str) -> Tuple[str, Optional[str]]:
    json_part, sep, images = spec.partition(".json:")
    return (json_part + ".json", images) if sep else (spec, None)


def resolve_dataset(spec: str) -> str:
    """A registered dataset name for ``spec`` (a known name, ``x.json`` or ``x.json:images``; ``lvis:...`` and
    ``cityscapes:...``: ``transfer.detection.formats``)."""
    if spec in DatasetCatalog.list():
        return spec
    if spec.startswith(("lvis:", "cityscapes:")):  # datasets in their own formats (transfer.detection.formats)
        from .formats import register_format

        return register_format(spec)
    json_file, images = _split_spec(spec)
    if json_file.endswith(".json"):
        return register_coco_folder(json_file, images, name=spec)
    raise ConfigError(f"dataset {spec!r} is neither registered in detectron2 (e.g. coco_2017_train, voc_2007_test) "
                      f"nor a path to a COCO-format json ('annotations.json' or 'annotations.json:image_folder'), "
                      f"an LVIS one ('lvis:JSON[:IMAGE_ROOT]') or a Cityscapes folder ('cityscapes:ROOT:SPLIT')")


def resolve_datasets(specs: Union[str, Iterable[str]]) -> Tuple[str, ...]:
    specs = (specs,) if isinstance(specs, str) else tuple(specs)
    return tuple(resolve_dataset(s) for s in specs)


def num_classes(names: Iterable[str]) -> Optional[int]:
    """The number of thing classes of datasets (all must agree), or None when their metadata does not say."""
    counts = set()
    for name in names:
        meta = MetadataCatalog.get(name)
        classes = meta.get("thing_classes", None)
        if (classes is None and name in DatasetCatalog.list() and meta.get("json_file", None)
                and os.path.isfile(meta.json_file)):  # an absent one: check_files says so
            DatasetCatalog.get(name)  # loading a COCO json fills thing_classes
            classes = meta.get("thing_classes", None)
        if classes is not None:
            counts.add(len(classes))
    if len(counts) > 1:
        raise DataError(f"datasets {list(names)} have different numbers of classes: {sorted(counts)}")
    return counts.pop() if counts else None
