"""CPU-sized MoCo C4 recipe: Mask R-CNN R18-C4 at 128 px (res5 of basic blocks in the box head, extra norm
after it), all layers trained with BN, RGB input; loads ``moco_v2_r18_cpu`` / torchvision ResNet-18 checkpoints."""
from detectron2.config import LazyCall as L
from detectron2.data import transforms as T
from detectron2.modeling.backbone import ResNet
from detectron2.modeling.backbone.resnet import BasicBlock

from ..COCO.mask_rcnn_R_50_C4_2x_moco import dataloader, optimizer, train
from ..common.moco_r50 import c4
from .common import image_size, lr_multiplier, tiny_loader, tiny_train  # noqa: F401

model = c4(norm="BN")
model.backbone.stages.update(depth=18)
model.backbone.stages.pop("stride_in_1x1")  # basic blocks have a single stride
model.proposal_generator.update(batch_size_per_image=64, pre_nms_topk=(600, 300), post_nms_topk=(300, 100))
model.proposal_generator.head.update(in_channels=256, num_anchors=12)
model.proposal_generator.anchor_generator.sizes = [[16, 32, 64, 128]]
# res5 runs once per region: few regions, pooled at 8 x 8 (4 x 4 after res5), keep it CPU-sized
model.roi_heads.batch_size_per_image = 16
model.roi_heads.pooler.output_size = 8
model.roi_heads.box_predictor.test_score_thresh = 0.0  # AP ranks every detection; short runs score low
model.roi_heads.res5 = L(ResNet.make_stage)(block_class=BasicBlock, num_blocks=2, stride_per_block=[2, 1],
                                            in_channels=256, out_channels=512, norm="BN")
model.roi_heads.mask_head.conv_dims = [64]

dataloader = tiny_loader(dataloader)
dataloader.train.mapper.augmentations[0].update(short_edge_length=(96, 112, 128), max_size=image_size)
dataloader.test.mapper.augmentations = [L(T.ResizeShortestEdge)(short_edge_length=image_size, max_size=image_size)]

train = tiny_train(train)
optimizer.lr = 0.02
