"""Datasets for the segmentation transfer: ADE20K (reduce_zero_label) and any folder of label PNGs."""
import importlib.util

import numpy as np
import pytest
from PIL import Image

from conftest import shared_data

# mmseg is looked up, not imported: collection stays light.
pytestmark = [pytest.mark.skipif(importlib.util.find_spec("mmseg") is None,
                                 reason="mmsegmentation is not installed (tools/setup_env.sh installs it)"),
              pytest.mark.filterwarnings("ignore::UserWarning")]


LOAD = [dict(type="LoadImageFromFile"), dict(type="LoadAnnotations"), dict(type="PackSegInputs")]


def folder_dataset(**kw):
    from mmengine.registry import init_default_scope
    from mmseg.registry import DATASETS

    import transfer.segmentation.datasets  # noqa: F401  (registers SegFolderDataset)

    init_default_scope("mmseg")
    return DATASETS.build(dict(type="SegFolderDataset", pipeline=LOAD, **kw))


def write_flat_folder(root, labels):
    """A CamVid-like folder: images/ and labels/ without split subfolders."""
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for i, lab in enumerate(labels):
        Image.fromarray(np.full(lab.shape + (3,), 80 + i, np.uint8)).save(root / "images" / f"f{i}.png")
        Image.fromarray(lab.astype(np.uint8)).save(root / "labels" / f"f{i}.png")


def test_synthetic_folder_with_splits_and_classes_file(tmp_path):
    from pretrain.synthetic import CLASSES, render_scene, scene_rng, write_segmentation_dataset

    write_segmentation_dataset(tmp_path, "train", 3, size=(32, 40))
    write_segmentation_dataset(tmp_path, "val", 2, size=(32, 40), seed=1)
    ds = folder_dataset(data_root=str(tmp_path), split="val")
    assert ds.metainfo["classes"] == ("background",) + CLASSES and len(ds) == 2
    sample = ds[1]
    want = render_scene(scene_rng(1, 1), (32, 40)).semantic
    assert np.array_equal(sample["data_samples"].gt_sem_seg.data[0].numpy(), want)  # labels read unchanged
    assert len(folder_dataset(data_root=str(tmp_path), split="train")) == 3


def test_flat_folder_ignore_labels_become_255(tmp_path):
    lab = np.array([[0, 1, 11], [2, 11, 1]])
    write_flat_folder(tmp_path, [lab, lab[::-1]])
    ds = folder_dataset(data_root=str(tmp_path), split="train", classes=["a", "b", "c"], ignore_labels=[11])
    assert len(ds) == 2 and ds.metainfo["classes"] == ("a", "b", "c")
    got = ds[0]["data_samples"].gt_sem_seg.data[0].numpy()
    assert np.array_equal(got, np.where(lab == 11, 255, lab))


def test_folder_errors_say_what_is_missing(tmp_path):
    lab = np.zeros((4, 4), int)
    write_flat_folder(tmp_path, [lab, lab])
    (tmp_path / "labels" / "f1.png").unlink()
    from pretrain.errors import DataError, InputNotFound

    # user errors (pretrain.errors): tools/train_seg.py ends them in one line
    with pytest.raises(DataError, match="1 of 2 images .* have no label file"):
        folder_dataset(data_root=str(tmp_path), classes=["x"])
    with pytest.raises(InputNotFound, match="class list .*classes.txt not found"):
        folder_dataset(data_root=str(tmp_path))
    with pytest.raises(InputNotFound, match="no image folder"):
        folder_dataset(data_root=str(tmp_path / "nowhere"), classes=["x"])


def test_heads_follow_the_folder_class_list(tmp_path):
    from conftest import REPO
    from transfer.segmentation.runner import load_seg_config, match_num_classes, set_data

    (tmp_path / "classes.txt").write_text("sky\nroad\ncar\n")
    cfg = load_seg_config(REPO / "configs/mmseg/tiny/upernet_r18_folder-64x64.py")
    set_data(cfg, data_root=tmp_path)
    assert match_num_classes(cfg) == 3
    assert cfg.model.decode_head.num_classes == cfg.model.auxiliary_head.num_classes == 3
    assert {cfg[f"{s}_dataloader"].dataset.data_root for s in ("train", "val", "test")} == {str(tmp_path)}
    ade = load_seg_config(REPO / "configs/mmseg/tiny/upernet_r18_ade20k-64x64.py")
    with pytest.raises(ValueError, match="SegFolderDataset"):
        set_data(ade, classes=["a"])


def test_ade20k_sample_reduce_zero_label():
    from mmengine.registry import init_default_scope
    from mmseg.registry import DATASETS

    root = shared_data("ade20k_sample") / "ADEChallengeData2016"
    init_default_scope("mmseg")
    pipeline = [dict(type="LoadImageFromFile"), dict(type="LoadAnnotations", reduce_zero_label=True),
                dict(type="PackSegInputs")]
    ds = DATASETS.build(dict(type="ADE20KDataset", data_root=str(root), pipeline=pipeline,
                             data_prefix=dict(img_path="images/validation", seg_map_path="annotations/validation")))
    assert len(ds) == 3 and len(ds.metainfo["classes"]) == 150
    raw = np.array(Image.open(ds.get_data_info(0)["seg_map_path"]))
    got = ds[0]["data_samples"].gt_sem_seg.data[0].numpy()
    assert np.array_equal(got, np.where(raw == 0, 255, raw.astype(np.int64) - 1))  # 0 = unlabelled, 1..150 -> 0..149


def test_camvid_folder_reads_with_void_ignored():
    root = shared_data("camvid_val")
    names = "Sky,Building,Pole,Road,Pavement,Tree,SignSymbol,Fence,Car,Pedestrian,Bicyclist".split(",")
    ds = folder_dataset(data_root=str(root), split="val", classes=names, ignore_labels=[11])
    assert len(ds) == 101
    raw = np.array(Image.open(ds.get_data_info(0)["seg_map_path"]))
    assert raw.max() <= 11 and (raw == 11).any()
    got = ds[0]["data_samples"].gt_sem_seg.data[0].numpy()
    assert np.array_equal(got, np.where(raw == 11, 255, raw))
