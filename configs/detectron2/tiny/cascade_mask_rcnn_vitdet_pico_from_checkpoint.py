"""CPU-sized ``cascade_mask_rcnn_vitdet_pico`` whose ViT is the checkpoint's, as
``mask_rcnn_vitdet_pico_from_checkpoint``: the ViT's shape and options, the pyramid's scales and the input
normalisation from ``train.init_checkpoint`` when the recipe loads
(``transfer.detection.backbones.fit_vitdet_to_checkpoint``)."""
from .cascade_mask_rcnn_vitdet_pico import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

train.backbone_from_checkpoint = True
