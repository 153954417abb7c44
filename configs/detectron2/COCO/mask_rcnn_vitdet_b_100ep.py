"""ViTDet: Mask R-CNN with a plain ViT-B/16 from MAE on COCO, 100 epochs (Li et al. 2022).

Simple feature pyramid from the last map (scales 4, 2, 1, 0.5); window attention
(14 x 14) except blocks 2, 5, 8, 11; relative position terms from zero; the
224-grid position table interpolated; drop path 0.1; AdamW lr 1e-4, wd 0.1,
layer-wise lr decay 0.7; LSJ at 1024, batch 64, 184,375 iterations (100 epochs);
mixed precision. This is detectron2's own ViTDet recipe, reusing its ``ViT`` /
``SimpleFeaturePyramid``.
"""
from functools import partial

from detectron2 import model_zoo
from detectron2.config import LazyCall as L
from detectron2.modeling.backbone.vit import get_vit_lr_decay_rate
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler

from transfer.detection.backbones import ViT

from ..common.coco_loader_lsj import dataloader  # noqa: F401
from ..common.constants import MAE, imagenet_rgb

model = model_zoo.get_config("common/models/mask_rcnn_vitdet.py").model
model.update(imagenet_rgb())
# detectron2's ViT, whose activation checkpointing (model.backbone.net.use_act_checkpoint=True: less memory,
# about a third more backbone compute) runs without fairscale.
model.backbone.net._target_ = ViT
model.backbone.net.update(
    embed_dim=768, depth=12, num_heads=12, patch_size=16, drop_path_rate=0.1,
    window_size=14, window_block_indexes=[0, 1, 3, 4, 6, 7, 9, 10],  # global attention in 2, 5, 8, 11
    use_rel_pos=True, rel_pos_zero_init=True, pretrain_img_size=224, pretrain_use_cls_token=True,
    use_act_checkpoint=False,
)
model.backbone.scale_factors = (4.0, 2.0, 1.0, 0.5)

train = model_zoo.get_config("common/train.py").train
train.amp.enabled = True
train.ddp.fp16_compression = True
train.init_checkpoint = MAE.format("base")
train.max_iter = 184375  # 100 epochs = 184375 iterations x 64 images / 118k images

lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(values=[1.0, 0.1, 0.01], milestones=[163889, 177546],
                                         num_updates=train.max_iter),
    warmup_length=250 / train.max_iter,
    warmup_factor=0.001,
)

optimizer = model_zoo.get_config("common/optim.py").AdamW  # lr 1e-4, betas (0.9, 0.999), weight decay 0.1
optimizer.lr = 1e-4
optimizer.weight_decay = 0.1
optimizer.params.lr_factor_func = partial(get_vit_lr_decay_rate, num_layers=12, lr_decay_rate=0.7)
optimizer.params.overrides = {"pos_embed": {"weight_decay": 0.0}}
