"""The supervised counterpart of MoCo's keypoint recipe: torchvision's ImageNet ResNet-50."""
from ..common.constants import TORCHVISION_R50
from .keypoint_rcnn_R_50_FPN_2x_moco import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

train.init_checkpoint = TORCHVISION_R50
