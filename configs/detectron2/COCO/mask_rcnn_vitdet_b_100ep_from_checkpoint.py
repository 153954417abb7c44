"""ViTDet-B Mask R-CNN on COCO (``mask_rcnn_vitdet_b_100ep``: LSJ at 1024, batch 64, 100 epochs, AdamW with
layer-wise lr decay 0.7, drop path 0.1) for the published ViTs whose network MAE's recipe does not build: DINOv2
(with registers), CLIP, DINO, iBOT, I-JEPA ... files as they were released.

``model.backbone.net`` is the checkpoint's (``train.init_checkpoint``, --checkpoint), set when the recipe loads
(``transfer.detection.backbones.fit_vitdet_to_checkpoint``): width, depth, heads, patch size (14 resized to 16
as the ViTDet authors did for ViT-H), LayerScale, SwiGLU, CLIP's norm before the blocks and QuickGELU, LayerNorm
eps, register tokens; the input normalisation is the backbone's. Fitted to the file's depth: ViTDet's attention
pattern (4 global blocks evenly spaced, the rest windowed 14 x 14) and the layer-wise lr decay over its blocks
(the rate stays this recipe's 0.7, tuned for 12 blocks, as does the drop path); register tokens' lr decays as the
position embedding's and LayerScale gets no weight decay, as in timm's and DINOv2's fine-tuning. The pyramid's
strides (4-32) and everything after the backbone are the recipe's. No default checkpoint: the file names the
network (without one, the checkpoint --resume names, a run's, which records it).
"""
from .mask_rcnn_vitdet_b_100ep import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

train.init_checkpoint = ""
train.backbone_from_checkpoint = True
