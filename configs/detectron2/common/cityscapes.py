"""Cityscapes instance segmentation in detectron2's recipes: the 8 instance classes, the fine training and
validation sets (detectron2's ``cityscapes_fine_instance_seg_*`` under ``$DETECTRON2_DATASETS``, or
``cityscapes:ROOT:SPLIT``: ``transfer.detection.formats``), and the Cityscapes instance-level AP
(``cityscapesscripts``, through detectron2's evaluator)."""
from detectron2.config import LazyCall as L

from transfer.detection.formats import CityscapesInstanceEvaluator


def cityscapes_loader(dataloader):
    dataloader.train.dataset.names = "cityscapes_fine_instance_seg_train"
    dataloader.test.dataset.names = "cityscapes_fine_instance_seg_val"
    dataloader.evaluator = L(CityscapesInstanceEvaluator)(dataset_name="${..test.dataset.names}")
    return dataloader
