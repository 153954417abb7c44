"""MoCo's LVIS recipe (He et al. 2019, Table 6; its appendix: Mask R-CNN R50-FPN fine-tuned on LVIS v0.5 train,
evaluated on v0.5 val, following the LVIS paper's baseline): that baseline as detectron2 implements it
(``LVISv0.5-InstanceSegmentation/mask_rcnn_R_50_FPN_1x``): 1x schedule (90k iterations, batch 16, SGD lr 0.02,
steps at 60k, 80k), repeat-factor sampling (0.001), 300 detections per image from score 0.0001, federated
evaluation; with the MoCo FPN network (SyncBN in the backbone, the FPN and the heads, all layers trained, RGB).
The schedule is detectron2's baseline's: the MoCo repository ships no LVIS config to check it against."""
from ..COCO.mask_rcnn_R_50_FPN_1x_moco import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401
from ..common.lvis import lvis_heads, lvis_loader

dataloader = lvis_loader(dataloader, "v0.5")
model = lvis_heads(model, num_classes=1230, score_thresh=0.0001)
