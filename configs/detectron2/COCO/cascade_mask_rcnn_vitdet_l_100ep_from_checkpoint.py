"""Cascade ViTDet-L on COCO (``cascade_mask_rcnn_vitdet_l_100ep``) for the published ViTs whose network MAE's
recipe does not build, as ``mask_rcnn_vitdet_l_100ep_from_checkpoint``: the ViT's shape and options and the
input normalisation from the checkpoint, ViTDet's attention pattern and the lr decay fitted to its depth (the
rate stays the recipe's). No default checkpoint.
"""
from .cascade_mask_rcnn_vitdet_l_100ep import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

train.init_checkpoint = ""
train.backbone_from_checkpoint = True
