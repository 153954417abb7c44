"""The supervised counterpart of the MoCo LVIS recipe: torchvision's ImageNet ResNet-50."""
from ..common.constants import TORCHVISION_R50
from .mask_rcnn_R_50_FPN_1x_moco import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

train.init_checkpoint = TORCHVISION_R50
