"""CPU-sized Cascade ViTDet: the Cascade Mask R-CNN of ``cascade_mask_rcnn_vitdet_b_100ep`` on ViT-pico/8 at 128 px,
with the backbone, pyramid, RPN, mask head and schedule of ``mask_rcnn_vitdet_pico``; the three box stages
narrower (two 64-channel convs and a 256-wide fc each, LayerNorm), their IoUs and box weights the recipe's."""
from ..COCO.cascade_mask_rcnn_vitdet_b_100ep import model
from .mask_rcnn_vitdet_pico import dataloader, lr_multiplier, optimizer, train  # noqa: F401
from .mask_rcnn_vitdet_pico import model as _pico

model.update(backbone=_pico.backbone, proposal_generator=_pico.proposal_generator)
model.roi_heads.update(batch_size_per_image=_pico.roi_heads.batch_size_per_image, mask_head=_pico.roi_heads.mask_head)
for _stage in range(len(model.roi_heads.box_heads)):  # (names with "_": not config keys)
    model.roi_heads.box_heads[_stage].update(conv_dims=[64, 64], fc_dims=[256])
    model.roi_heads.box_heads[_stage].input_shape.channels = 64
    model.roi_heads.box_predictors[_stage].input_shape.channels = 256
    model.roi_heads.box_predictors[_stage].test_score_thresh = 0.0  # AP ranks every detection; short runs score low
