"""CPU-sized MoCo LVIS recipe: the R18-FPN tiny Mask R-CNN with LVIS's sampling, detections and federated
evaluation (LVIS v0.5 names; any LVIS json by --train-dataset / --test-dataset lvis:JSON)."""
from ..common.lvis import lvis_heads, lvis_loader
from .mask_rcnn_R_18_FPN import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

dataloader = lvis_loader(dataloader, "v0.5")
model = lvis_heads(model, num_classes=1230, score_thresh=0.0)  # AP ranks every detection; short runs score low
