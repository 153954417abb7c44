"""CPU-sized MoCo keypoint recipe: Keypoint R-CNN R18-FPN at 128 px, BN in the backbone, the FPN and the box head,
all layers trained, RGB input; loads ``moco_v2_r18_cpu`` / torchvision ResNet-18 checkpoints."""
from detectron2.config import LazyCall as L
from detectron2.data import transforms as T

from ..COCO.keypoint_rcnn_R_50_FPN_2x_moco import dataloader, model, optimizer, train
from .common import image_size, lr_multiplier, tiny_loader, tiny_train  # noqa: F401
from .mask_rcnn_R_18_FPN import model as _tiny_fpn

# The tiny R18-FPN's backbone, RPN and box head; the keypoint head narrower (two 64-channel convs).
model.update(backbone=_tiny_fpn.backbone, proposal_generator=_tiny_fpn.proposal_generator)
for key in ("batch_size_per_image", "box_head", "box_predictor"):
    model.roi_heads[key] = _tiny_fpn.roi_heads[key]
model.roi_heads.box_predictor.smooth_l1_beta = 0.5
model.roi_heads.keypoint_head.update(conv_dims=[64, 64])
model.roi_heads.keypoint_head.input_shape.channels = 64

dataloader = tiny_loader(dataloader)
dataloader.train.mapper.augmentations[0].update(short_edge_length=(96, 112, 128), max_size=image_size)
dataloader.test.mapper.augmentations = [L(T.ResizeShortestEdge)(short_edge_length=image_size, max_size=image_size)]

train = tiny_train(train)
optimizer.lr = 0.02
