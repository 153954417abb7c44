"""Datasets by path: a COCO-format json and its images, with no registration code to write.

Wherever a config names datasets (``dataloader.train.dataset.names``,
``DATASETS.TRAIN``; ``tools/train_net.py --train-json / --train-images``), a name may be

* a dataset detectron2 knows (``coco_2017_train``, ``voc_2007_test``, ...);
* ``path/to/instances.json``: a COCO-format json; its images are found in the
  COCO layout (``root/annotations/instances_<split>.json`` -> ``root/<split>/``),
  in an ``images/`` folder beside the json, or beside the json;
* ``path/to/instances.json:path/to/images``: the image folder given.

Path names are registered on first use with detectron2's
``register_coco_instances`` (crowd regions and category-id gaps are handled as
for COCO itself; the evaluator maps contiguous ids back).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional, Tuple, Union

from . import require_detectron2

require_detectron2()
from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from detectron2.data.datasets import register_coco_instances  # noqa: E402

__all__ = ["resolve_dataset", "resolve_datasets", "register_coco_folder", "find_image_root"]


def find_image_root(json_file: Union[str, Path]) -> Path:
    """The image folder of a COCO json: ``root/<split>/`` for ``root/annotations/instances_<split>.json``, else
    the json's own folder."""
    json_file = Path(json_file)
    split = json_file.stem.split("_", 1)[-1]
    candidates = [json_file.parent.parent / split, json_file.parent / split, json_file.parent / "images",
                  json_file.parent]
    for folder in candidates:
        if folder.is_dir() and folder != json_file.parent:
            return folder
    return json_file.parent


def register_coco_folder(json_file, image_root=None, name: Optional[str] = None) -> str:
    """Register a COCO-format json (and its image folder) under ``name`` (default: the path); returns the name."""
    json_file = Path(json_file).expanduser()
    if not json_file.is_file():
        raise FileNotFoundError(f"COCO annotation file not found: {json_file}")
    image_root = Path(image_root).expanduser() if image_root else find_image_root(json_file)
    if not image_root.is_dir():
        raise FileNotFoundError(f"image folder not found: {image_root} (for {json_file})")
    name = name or f"{json_file}:{image_root}"
    if name not in DatasetCatalog.list():
        register_coco_instances(name, {}, str(json_file), str(image_root))
    return name


def _split_spec(spec: str) -> Tuple[str, Optional[str]]:
    json_part, sep, images = spec.partition(".json:")
    return (json_part + ".json", images) if sep else (spec, None)


def resolve_dataset(spec: str) -> str:
    """A registered dataset name for ``spec`` (a known name, ``x.json`` or ``x.json:images``)."""
    if spec in DatasetCatalog.list():
        return spec
    json_file, images = _split_spec(spec)
    if json_file.endswith(".json"):
        return register_coco_folder(json_file, images, name=spec)
    raise KeyError(f"dataset {spec!r} is neither registered in detectron2 (e.g. coco_2017_train, voc_2007_test) "
                   f"nor a path to a COCO-format json ('annotations.json' or 'annotations.json:image_folder')")


def resolve_datasets(specs: Union[str, Iterable[str]]) -> Tuple[str, ...]:
    specs = (specs,) if isinstance(specs, str) else tuple(specs)
    return tuple(resolve_dataset(s) for s in specs)


def num_classes(names: Iterable[str]) -> Optional[int]:
    """The number of thing classes of datasets (all must agree), or None when their metadata does not say."""
    counts = set()
    for name in names:
        meta = MetadataCatalog.get(name)
        classes = meta.get("thing_classes", None)
        if classes is None and name in DatasetCatalog.list() and meta.get("json_file", None):
            DatasetCatalog.get(name)  # loading a COCO json fills thing_classes
            classes = meta.get("thing_classes", None)
        if classes is not None:
            counts.add(len(classes))
    if len(counts) > 1:
        raise ValueError(f"datasets {list(names)} have different numbers of classes: {sorted(counts)}")
    return counts.pop() if counts else None
