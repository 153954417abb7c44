"""CPU-sized ViTDet whose ViT is the checkpoint's: ``mask_rcnn_vitdet_pico`` with ``model.backbone.net`` (shape,
LayerScale, SwiGLU, CLIP's norm before the blocks and QuickGELU, LayerNorm eps, register tokens), the pyramid's
scales (strides 4-16 kept; patch 14 resized to 16 as the ViTDet authors did) and the input normalisation set
from ``train.init_checkpoint`` when the recipe loads (``transfer.detection.backbones.fit_vitdet_to_checkpoint``):
DINOv2 (with registers), CLIP, DINO, iBOT, I-JEPA, MAE ... files as they were released.
"""
from .mask_rcnn_vitdet_pico import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

train.backbone_from_checkpoint = True
