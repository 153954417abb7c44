"""MoCo's Cityscapes instance segmentation recipe (He et al. 2019, Table 6; its appendix: Mask R-CNN R50-FPN
fine-tuned on the 2975 fine training images, evaluated on the 500 validation images), in the Mask R-CNN
paper's Cityscapes setting (He et al. 2017, Appendix A; detectron2's Cityscapes/mask_rcnn_R_50_FPN): 24k
iterations of batch 8, SGD lr 0.01 dropped x0.1 at 18k, training short side 800..1024 (max 2048), test 1024
(max 2048), 8 classes, the Cityscapes instance AP; with the MoCo FPN network (SyncBN in the backbone, the FPN
and the heads, all layers trained, RGB)."""
import detectron2.data.transforms as T
from detectron2.config import LazyCall as L
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler

from ..COCO.mask_rcnn_R_50_FPN_1x_moco import dataloader, model, optimizer, train
from ..common.cityscapes import cityscapes_loader

model.roi_heads.num_classes = 8
dataloader = cityscapes_loader(dataloader)
dataloader.train.total_batch_size = 8
dataloader.train.mapper.augmentations = [
    L(T.ResizeShortestEdge)(short_edge_length=tuple(range(800, 1025, 32)), sample_style="choice", max_size=2048),
    L(T.RandomFlip)(horizontal=True),
]
dataloader.test.mapper.augmentations = [L(T.ResizeShortestEdge)(short_edge_length=1024, max_size=2048)]

optimizer.lr = 0.01
train.max_iter = 24000
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(values=[1.0, 0.1], milestones=[18000], num_updates=24000),
    warmup_length=1000 / 24000,  # detectron2's default warm-up: 1000 iterations from 0.001
    warmup_factor=0.001,
)
