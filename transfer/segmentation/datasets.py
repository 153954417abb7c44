"""Any folder of images + label PNGs as an mmseg dataset (ADE20K uses mmseg's ``ADE20KDataset``).

Layout (``pretrain.synthetic.write_segmentation_dataset`` writes it; CamVid-style
folders without split subfolders work too)::

    root/images/<split>/name.{png,jpg,...}   or  root/images/name.*
    root/labels/<split>/name.png             or  root/labels/name.png
    root/classes.txt                          one class name a line; label value = line number - 1

Label values outside the classes (e.g. CamVid's 11 = void) are declared in
``ignore_labels`` and become mmseg's ignore index 255.
"""
from __future__ import annotations

import os.path as osp
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

from mmengine.logging import print_log
from mmseg.datasets import BaseSegDataset
from mmseg.registry import DATASETS

from pretrain.errors import ConfigError, DataError, InputNotFound

__all__ = ["SegFolderDataset", "read_classes"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def read_classes(classes: Union[str, Sequence[str], None], data_root: Optional[str]) -> tuple:
    """Class names from a list, a text file (one a line), or ``<data_root>/classes.txt``."""
    if classes is None:
        if data_root is None:
            raise ConfigError("SegFolderDataset needs `classes` (a list or a file) or a data_root with classes.txt")
        classes = osp.join(data_root, "classes.txt")
    if isinstance(classes, (str, Path)):
        path = Path(classes)
        if not path.is_file():
            raise InputNotFound(f"class list {path} not found (one class name a line; or --classes FILE|a,b,c)")
        names = tuple(line.strip() for line in path.read_text().splitlines() if line.strip())
    else:
        names = tuple(classes)
    if not names:
        raise ConfigError(f"empty class list from {classes}")
    return names


@DATASETS.register_module()
class SegFolderDataset(BaseSegDataset):
    """Images and same-named label PNGs under ``data_root`` (see the module docstring).

    Args:
        split: subfolder of ``img_dir`` / ``label_dir`` (``training``, ``val``...);
            when absent, the folders themselves are read (a single-split set).
        classes: names (label value = index), a class-list file, or ``None`` for
            ``<data_root>/classes.txt``.
        ignore_labels: label values that mark unlabelled pixels (become 255).
        reduce_zero_label: ADE-style files where 0 means "unlabelled" and 1..N the classes.
    """

    def __init__(self, data_root: str, split: Optional[str] = None, classes=None, ignore_labels: Sequence[int] = (),
                 img_dir: str = "images", label_dir: str = "labels", seg_map_suffix: str = ".png", **kwargs):
        self._ignore_labels = tuple(int(v) for v in ignore_labels)
        names = read_classes(classes, data_root)
        img_path, seg_path = self._split_dirs(data_root, img_dir, label_dir, split)
        metainfo = dict(kwargs.pop("metainfo", None) or {}, classes=names)
        super().__init__(data_root=data_root, data_prefix=dict(img_path=img_path, seg_map_path=seg_path),
                         seg_map_suffix=seg_map_suffix, metainfo=metainfo, **kwargs)

    @staticmethod
    def _split_dirs(root: str, img_dir: str, label_dir: str, split: Optional[str]):
        if split and osp.isdir(osp.join(root, img_dir, split)):
            return osp.join(img_dir, split), osp.join(label_dir, split)
        if not osp.isdir(osp.join(root, img_dir)):
            raise InputNotFound(f"no image folder {osp.join(root, img_dir)} (expected {img_dir}/[<split>/]*.png "
                                    f"and {label_dir}/[<split>/]*.png under the data root)")
        if split:
            print_log(f"{osp.join(root, img_dir)} has no '{split}' subfolder: the whole folder serves as "
                      f"'{split}'", logger="current", level=30)
        return img_dir, label_dir

    def get_label_map(self, new_classes=None) -> Optional[Dict[int, int]]:
        # Called by BaseSegDataset.__init__ before the file list is read; LoadAnnotations applies it.
        return {v: self.ignore_index for v in self._ignore_labels} or None

    def load_data_list(self) -> List[dict]:
        img_dir, seg_dir = self.data_prefix["img_path"], self.data_prefix["seg_map_path"]
        images = sorted(p for p in Path(img_dir).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {img_dir}")
        data_list, unlabelled = [], []
        for img in images:
            seg = Path(seg_dir) / (img.stem + self.seg_map_suffix)
            if not seg.is_file():
                unlabelled.append(img.name)
                continue
            data_list.append(dict(img_path=str(img), seg_map_path=str(seg), label_map=self.label_map,
                                  reduce_zero_label=self.reduce_zero_label, seg_fields=[]))
        if unlabelled:
            raise DataError(f"{len(unlabelled)} of {len(images)} images in {img_dir} have no label file "
                                    f"{seg_dir}/<name>{self.seg_map_suffix} (first: {unlabelled[:3]})")
        return data_list
