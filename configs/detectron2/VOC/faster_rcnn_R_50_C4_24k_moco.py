"""MoCo's VOC recipe: Faster R-CNN R50-C4 on VOC 2007+2012 trainval, 24k iterations (batch 16, SGD lr 0.02,
steps at 18k, 22k, 100 warm-up iterations), SyncBN and the extra norm after res5, all layers trained, RGB input;
evaluated on VOC 2007 test (AP50, AP, AP75; He et al. 2020, Table 2)."""
from detectron2 import model_zoo
from detectron2.config import LazyCall as L
from detectron2.data import transforms as T
from detectron2.evaluation import PascalVOCDetectionEvaluator
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler

from ..common.constants import MOCO_V2
from ..common.moco_r50 import c4

model = c4(mask=False)
model.roi_heads.num_classes = 20

dataloader = model_zoo.get_config("common/data/coco.py").dataloader
dataloader.train.dataset.names = ["voc_2007_trainval", "voc_2012_trainval"]
dataloader.train.mapper.update(image_format="RGB", use_instance_mask=False)
dataloader.train.mapper.augmentations = [
    L(T.ResizeShortestEdge)(short_edge_length=tuple(range(480, 801, 32)), sample_style="choice", max_size=1333),
    L(T.RandomFlip)(horizontal=True),
]
dataloader.test.dataset.names = "voc_2007_test"
dataloader.evaluator = L(PascalVOCDetectionEvaluator)(dataset_name="${..test.dataset.names}")

optimizer = model_zoo.get_config("common/optim.py").SGD
train = model_zoo.get_config("common/train.py").train
train.init_checkpoint = MOCO_V2
train.max_iter = 24000
train.eval_period = 0
train.precise_bn = dict(enabled=True, num_iter=200)
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(values=[1.0, 0.1, 0.01], milestones=[18000, 22000], num_updates=24000),
    warmup_length=100 / 24000,
    warmup_factor=0.001,
)
