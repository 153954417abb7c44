"""ViTDet's Cascade Mask R-CNN with a plain ViT-B/16 from MAE on COCO, 100 epochs (Li et al. 2022; detectron2's
projects/ViTDet ``cascade_mask_rcnn_vitdet_b_100ep``).

The Mask R-CNN recipe (``mask_rcnn_vitdet_b_100ep``: backbone, simple feature pyramid, LSJ at 1024, batch 64,
184,375 iterations, AdamW with layer-wise lr decay) with three cascaded box stages instead of one: each a
4conv1fc head with LayerNorm, class-agnostic box regression whose target weights tighten stage by stage
((10, 5), (20, 10), (30, 15)), trained on proposals matched at IoU 0.5, 0.6 and 0.7.
"""
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.matcher import Matcher
from detectron2.modeling.roi_heads import CascadeROIHeads, FastRCNNConvFCHead, FastRCNNOutputLayers

from .mask_rcnn_vitdet_b_100ep import (  # noqa: F401
    MAE, dataloader, get_vit_lr_decay_rate, lr_multiplier, model, optimizer, train,
)

STAGE_IOUS = (0.5, 0.6, 0.7)
STAGE_BOX_WEIGHTS = ((10, 5), (20, 10), (30, 15))  # (x, y), (w, h) weights of each stage's box deltas

for key in ("box_head", "box_predictor", "proposal_matcher"):  # Mask R-CNN's single stage
    model.roi_heads.pop(key)
model.roi_heads.update(
    _target_=CascadeROIHeads,
    box_heads=[L(FastRCNNConvFCHead)(input_shape=ShapeSpec(channels=256, height=7, width=7),
                                     conv_dims=[256] * 4, fc_dims=[1024], conv_norm="LN")
               for _ in STAGE_IOUS],
    box_predictors=[L(FastRCNNOutputLayers)(input_shape=ShapeSpec(channels=1024), test_score_thresh=0.05,
                                            box2box_transform=L(Box2BoxTransform)(weights=(xy, xy, wh, wh)),
                                            cls_agnostic_bbox_reg=True, num_classes="${...num_classes}")
                    for xy, wh in STAGE_BOX_WEIGHTS],
    proposal_matchers=[L(Matcher)(thresholds=[iou], labels=[0, 1], allow_low_quality_matches=False)
                       for iou in STAGE_IOUS],
)
