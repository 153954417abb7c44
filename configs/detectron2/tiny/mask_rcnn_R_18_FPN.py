"""CPU-sized MoCo FPN recipe: Mask R-CNN R18-FPN at 128 px, BN in the backbone, the FPN and the heads, all layers
trained, RGB input; loads ``moco_v2_r18_cpu`` / torchvision ResNet-18 checkpoints."""
from detectron2.config import LazyCall as L
from detectron2.data import transforms as T

from ..COCO.mask_rcnn_R_50_FPN_1x_moco import dataloader, optimizer, train
from ..common.moco_r50 import fpn
from .common import image_size, lr_multiplier, tiny_loader, tiny_train  # noqa: F401

model = fpn(norm="BN")
model.backbone.bottom_up.stages.update(depth=18)
model.backbone.bottom_up.stages.pop("stride_in_1x1")
model.backbone.out_channels = 64
model.proposal_generator.update(batch_size_per_image=64, pre_nms_topk=(600, 300), post_nms_topk=(300, 100))
model.proposal_generator.head.in_channels = 64
model.proposal_generator.anchor_generator.sizes = [[16], [32], [64], [128], [256]]
model.roi_heads.batch_size_per_image = 64
model.roi_heads.box_predictor.test_score_thresh = 0.0  # AP ranks every detection; short runs score low
model.roi_heads.box_head.update(conv_dims=[64, 64], fc_dims=[256])
model.roi_heads.box_head.input_shape.channels = 64
model.roi_heads.box_predictor.input_shape.channels = 256
model.roi_heads.mask_head.update(conv_dims=[64, 64])
model.roi_heads.mask_head.input_shape.channels = 64

dataloader = tiny_loader(dataloader)
dataloader.train.mapper.augmentations[0].update(short_edge_length=(96, 112, 128), max_size=image_size)
dataloader.test.mapper.augmentations = [L(T.ResizeShortestEdge)(short_edge_length=image_size, max_size=image_size)]

train = tiny_train(train)
optimizer.lr = 0.02
