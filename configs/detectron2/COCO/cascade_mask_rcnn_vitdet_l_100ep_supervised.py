"""The supervised counterpart of Cascade ViTDet-L: the same recipe from timm's ViT-L/16 (ImageNet-21k supervised,
'augreg'), which expects its pixels normalised with mean = std = 127.5."""
from ..common.constants import TIMM_VIT_L_IN21K, inception_rgb
from .cascade_mask_rcnn_vitdet_l_100ep import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

train.init_checkpoint = TIMM_VIT_L_IN21K
model.update(inception_rgb())
