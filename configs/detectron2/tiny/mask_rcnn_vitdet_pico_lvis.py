"""CPU-sized ViTDet LVIS recipe: the ViT-pico tiny ViTDet with LVIS v1's sampling, sigmoid classification and
federated loss, detections and federated evaluation (any LVIS json by --train-dataset / --test-dataset)."""
from ..common.lvis import lvis_heads, lvis_loader
from .mask_rcnn_vitdet_pico import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

dataloader = lvis_loader(dataloader, "v1")
model = lvis_heads(model, num_classes=1203, score_thresh=0.0, federated=True)
# The federated loss samples negative classes up to 50 (of LVIS's 1203); a json of a few categories has fewer.
model.roi_heads.box_predictor.fed_loss_num_classes = 4
