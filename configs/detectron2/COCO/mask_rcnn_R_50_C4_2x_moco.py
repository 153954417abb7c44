"""MoCo's COCO recipe: Mask R-CNN R50-C4, 2x schedule (180k iterations, batch 16, SGD lr 0.02), SyncBN in the
backbone and the head, an extra norm after res5, all layers trained, RGB input (He et al. 2020, Table 5)."""
from detectron2 import model_zoo

from ..common.constants import MOCO_V2
from ..common.moco_r50 import c4

model = c4()
dataloader = model_zoo.get_config("common/data/coco.py").dataloader  # scales 640-800, test 800
dataloader.train.mapper.image_format = "RGB"
optimizer = model_zoo.get_config("common/optim.py").SGD  # lr 0.02, momentum 0.9, wd 1e-4 (none on norms)
lr_multiplier = model_zoo.get_config("common/coco_schedule.py").lr_multiplier_2x  # steps at 120k, 160k

train = model_zoo.get_config("common/train.py").train
train.init_checkpoint = MOCO_V2
train.max_iter = 180000
train.eval_period = 0  # at the end
train.precise_bn = dict(enabled=True, num_iter=200)  # BN statistics recomputed before evaluation
