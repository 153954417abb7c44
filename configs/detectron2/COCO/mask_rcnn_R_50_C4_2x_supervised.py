"""The supervised counterpart of the MoCo C4 recipe: torchvision's ImageNet ResNet-50 (same pixel format)."""
from ..common.constants import TORCHVISION_R50
from .mask_rcnn_R_50_C4_2x_moco import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

train.init_checkpoint = TORCHVISION_R50
