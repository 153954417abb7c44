"""CPU-sized Keypoint R-CNN on ViTDet: ViT-pico/8 with the simple feature pyramid of ``mask_rcnn_vitdet_pico`` (LSJ
at 128 px, AdamW with layer-wise lr decay) and the keypoint head of ``keypoint_rcnn_R_18_FPN`` on p2-p5 instead of
the mask head; COCO person keypoints (flipped left-right in training, images without a visible keypoint skipped).

No paper publishes keypoints for a plain ViT, so the keypoints rung has no ViT recipe: this is the keypoint
head on ViTDet's pyramid at CPU size, for ``tools/train_net.py`` directly.
"""
from detectron2 import model_zoo

from .keypoint_rcnn_R_18_FPN import model as _keypoint
from .mask_rcnn_vitdet_pico import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

[model.roi_heads.pop(k) for k in ("mask_in_features", "mask_pooler", "mask_head")]
model.roi_heads.update(num_classes=1, **{k: _keypoint.roi_heads[k] for k in (
    "keypoint_in_features", "keypoint_pooler", "keypoint_head")})
model.roi_heads.box_predictor.smooth_l1_beta = 0.5

# The keypoint data of detectron2's COCO keypoint loader, through the LSJ mapper (boxes from the keypoint boxes,
# not recomputed from masks: there are none).
_keypoint_data = model_zoo.get_config("common/data/coco_keypoint.py").dataloader
dataloader.train.dataset.update(names=_keypoint_data.train.dataset.names, min_keypoints=1)
dataloader.test.dataset.names = _keypoint_data.test.dataset.names
dataloader.train.mapper.update(use_instance_mask=False, recompute_boxes=False, use_keypoint=True,
                               keypoint_hflip_indices=_keypoint_data.train.mapper.keypoint_hflip_indices)
