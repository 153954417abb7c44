"""ViTDet-B Mask R-CNN on LVIS v1 (Li et al. 2022; detectron2's projects/ViTDet/configs/LVIS): the COCO recipe
(configs/detectron2/COCO/mask_rcnn_vitdet_b_100ep.py) with repeat-factor sampling, sigmoid classification and
the federated loss, 300 detections from score 0.02, federated evaluation; 100 epochs of LVIS v1 = 156,250
iterations x 64 (steps at 138,889 and 150,463), AdamW lr 2e-4."""
from ..COCO.mask_rcnn_vitdet_b_100ep import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401
from ..common.lvis import lvis_heads, lvis_loader

dataloader = lvis_loader(dataloader, "v1")
model = lvis_heads(model, num_classes=1203, score_thresh=0.02, federated=True)

train.max_iter = 156250  # 100 epochs x 100k images / 64
train.eval_period = 30000
lr_multiplier.scheduler.update(milestones=[138889, 150463], num_updates=train.max_iter)
lr_multiplier.warmup_length = 250 / train.max_iter
optimizer.lr = 2e-4
