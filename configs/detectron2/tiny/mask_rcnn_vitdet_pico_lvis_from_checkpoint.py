"""CPU-sized ``mask_rcnn_vitdet_pico_lvis`` whose ViT is the checkpoint's, as ``mask_rcnn_vitdet_pico_from_checkpoint``:
the ViT's shape and options, the pyramid's scales and the input normalisation from ``train.init_checkpoint``
when the recipe loads (``transfer.detection.backbones.fit_vitdet_to_checkpoint``)."""
from .mask_rcnn_vitdet_pico_lvis import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

train.backbone_from_checkpoint = True
