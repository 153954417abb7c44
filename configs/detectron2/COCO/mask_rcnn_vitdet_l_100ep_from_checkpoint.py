"""ViTDet-L Mask R-CNN on COCO (``mask_rcnn_vitdet_l_100ep``: drop path 0.4, layer-wise lr decay 0.8) for the
published ViTs whose network MAE's recipe does not build, as ``mask_rcnn_vitdet_b_100ep_from_checkpoint``: the
ViT's shape and options and the input normalisation from the checkpoint, ViTDet's attention pattern and the lr
decay fitted to its depth (the rate stays 0.8, tuned for 24 blocks). No default checkpoint.
"""
from .mask_rcnn_vitdet_l_100ep import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

train.init_checkpoint = ""
train.backbone_from_checkpoint = True
