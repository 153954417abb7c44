"""MoCo's COCO keypoint recipe: Keypoint R-CNN R50-FPN, 2x schedule (180k iterations, batch 16, SGD lr 0.02, steps
at 120k and 160k), fine-tuned on train2017 person keypoints, evaluated on val2017 (He et al. 2019, Table 6 and
appendix A.2: "Mask R-CNN (keypoint version) with R50-FPN ... The schedule is 2x").

MoCo's fine-tuning normalisation (Sec. 4.2): SyncBN in the backbone, the FPN and the 4conv1fc box head, all
layers trained, RGB input; detectron2's keypoint head (eight 3x3 convs and a deconvolution, 17 heatmaps) has no
norm layers in any of its variants, so it is detectron2's as it is. Detectron2's keypoint settings: 1500
proposals per training image, smooth-L1 beta 0.5 for the boxes, images without a visible keypoint skipped in
training, train-time flips that swap left and right keypoints; scale [640, 800] in training, 800 at inference.
"""
from detectron2 import model_zoo

from ..common.constants import MOCO_V2
from ..common.moco_r50 import fpn

model = fpn()
# Keypoint R-CNN instead of the mask head: detectron2's keypoint pooler and head on p2-p5, one class (person).
[model.roi_heads.pop(k) for k in ("mask_in_features", "mask_pooler", "mask_head")]
_keypoint = model_zoo.get_config("common/models/keypoint_rcnn_fpn.py").model
model.roi_heads.update(num_classes=1, **{k: _keypoint.roi_heads[k] for k in (
    "keypoint_in_features", "keypoint_pooler", "keypoint_head")})
model.proposal_generator.post_nms_topk = _keypoint.proposal_generator.post_nms_topk  # (1500, 1000)
model.roi_heads.box_predictor.smooth_l1_beta = _keypoint.roi_heads.box_predictor.smooth_l1_beta  # 0.5

dataloader = model_zoo.get_config("common/data/coco_keypoint.py").dataloader
dataloader.train.mapper.image_format = "RGB"
optimizer = model_zoo.get_config("common/optim.py").SGD
lr_multiplier = model_zoo.get_config("common/coco_schedule.py").lr_multiplier_2x  # steps at 120k, 160k

train = model_zoo.get_config("common/train.py").train
train.init_checkpoint = MOCO_V2
train.max_iter = 180000
train.eval_period = 0
train.precise_bn = dict(enabled=True, num_iter=200)
