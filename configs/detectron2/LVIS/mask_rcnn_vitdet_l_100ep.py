"""ViTDet-L Mask R-CNN on LVIS v1 from MAE: as ViTDet-B with ViT-L/16, global blocks 5, 11, 17, 23, drop path
0.4, lr decay 0.8 (detectron2's projects/ViTDet/configs/LVIS/mask_rcnn_vitdet_l_100ep.py)."""
from functools import partial

from detectron2.modeling.backbone.vit import get_vit_lr_decay_rate

from ..common.constants import MAE
from .mask_rcnn_vitdet_b_100ep import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

train.init_checkpoint = MAE.format("large")
model.backbone.net.update(
    embed_dim=1024, depth=24, num_heads=16, drop_path_rate=0.4,
    window_block_indexes=[i for i in range(24) if i not in (5, 11, 17, 23)],
)
optimizer.params.lr_factor_func = partial(get_vit_lr_decay_rate, num_layers=24, lr_decay_rate=0.8)
