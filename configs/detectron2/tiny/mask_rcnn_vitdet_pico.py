"""CPU-sized ViTDet: Mask R-CNN on ViT-pico/8 (width 96, depth 4, 3 heads: ``mae_vit_pico_patch8``) at 128 px.

ViTDet's design at small scale: the pyramid is built from the last map only
(scales 2, 1, 0.5 of the stride-8 map give strides 4, 8, 16, and max-pooling 32),
window attention (8 x 8) except in blocks 1 and 3, zero-initialised relative
position terms, the position table of the pretraining grid (64 px) interpolated,
AdamW with layer-wise lr decay, LSJ at 128.
"""
from functools import partial

import detectron2.data.transforms as T
from detectron2.config import LazyCall as L

from transfer.detection.backbones import last_level_max_pool

from ..COCO.mask_rcnn_vitdet_b_100ep import dataloader, get_vit_lr_decay_rate, model, optimizer, train
from .common import image_size, lr_multiplier, tiny_loader, tiny_train  # noqa: F401

model.backbone.net.update(
    img_size=image_size, patch_size=8, embed_dim=96, depth=4, num_heads=3, drop_path_rate=0.0,
    window_size=8, window_block_indexes=[0, 2], pretrain_img_size=64,
)
model.backbone.update(scale_factors=(2.0, 1.0, 0.5), out_channels=64, square_pad=image_size)
model.backbone.top_block = L(last_level_max_pool)(in_feature="p4")  # max-pooled to p5
model.proposal_generator.update(in_features=["p2", "p3", "p4", "p5"], batch_size_per_image=64,
                                pre_nms_topk=(600, 300), post_nms_topk=(300, 100))
model.proposal_generator.head.in_channels = 64
model.proposal_generator.anchor_generator.update(sizes=[[16], [32], [64], [128]], strides=[4, 8, 16, 32])
model.roi_heads.batch_size_per_image = 64
model.roi_heads.box_predictor.test_score_thresh = 0.0  # AP ranks every detection; short runs score low
model.roi_heads.box_head.update(conv_dims=[64, 64], fc_dims=[256])
model.roi_heads.box_head.input_shape.channels = 64
model.roi_heads.box_predictor.input_shape.channels = 256
model.roi_heads.mask_head.update(conv_dims=[64, 64])
model.roi_heads.mask_head.input_shape.channels = 64

dataloader = tiny_loader(dataloader)
dataloader.train.mapper.augmentations[1].update(target_height=image_size, target_width=image_size)
dataloader.train.mapper.augmentations[2].crop_size = (image_size, image_size)
dataloader.test.mapper.augmentations = [L(T.ResizeShortestEdge)(short_edge_length=image_size, max_size=image_size)]

train = tiny_train(train)
optimizer.lr = 4e-4
optimizer.params.lr_factor_func = partial(get_vit_lr_decay_rate, num_layers=4, lr_decay_rate=0.75)
