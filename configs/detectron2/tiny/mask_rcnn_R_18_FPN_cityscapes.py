"""CPU-sized MoCo Cityscapes recipe: the R18-FPN tiny Mask R-CNN at 128 px on Cityscapes' 8 instance classes,
scored by the Cityscapes instance AP (any Cityscapes tree by --train-dataset / --test-dataset cityscapes:ROOT:SPLIT)."""
from ..common.cityscapes import cityscapes_loader
from .mask_rcnn_R_18_FPN import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

model.roi_heads.num_classes = 8
dataloader = cityscapes_loader(dataloader)
