"""MoCo's COCO FPN recipe: Mask R-CNN R50-FPN, 1x schedule (90k iterations, batch 16, SGD lr 0.02), SyncBN in
the backbone, the FPN and the heads, all layers trained, RGB input (He et al. 2020, Table 5)."""
from detectron2 import model_zoo

from ..common.constants import MOCO_V2
from ..common.moco_r50 import fpn

model = fpn()
dataloader = model_zoo.get_config("common/data/coco.py").dataloader
dataloader.train.mapper.image_format = "RGB"
optimizer = model_zoo.get_config("common/optim.py").SGD
lr_multiplier = model_zoo.get_config("common/coco_schedule.py").lr_multiplier_1x  # steps at 60k, 80k

train = model_zoo.get_config("common/train.py").train
train.init_checkpoint = MOCO_V2
train.max_iter = 90000
train.eval_period = 0
train.precise_bn = dict(enabled=True, num_iter=200)
