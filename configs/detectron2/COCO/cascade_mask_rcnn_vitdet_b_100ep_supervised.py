"""The supervised counterpart of Cascade ViTDet-B: the same recipe from DeiT-B (ImageNet-1k supervised)."""
from ..common.constants import DEIT_B
from .cascade_mask_rcnn_vitdet_b_100ep import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

train.init_checkpoint = DEIT_B
