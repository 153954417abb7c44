"""MoCo's COCO FPN recipe, 2x schedule (180k iterations, steps at 120k, 160k)."""
from detectron2 import model_zoo

from .mask_rcnn_R_50_FPN_1x_moco import dataloader, model, optimizer, train  # noqa: F401

lr_multiplier = model_zoo.get_config("common/coco_schedule.py").lr_multiplier_2x
train.max_iter = 180000
