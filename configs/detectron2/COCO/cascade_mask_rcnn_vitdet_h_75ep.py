"""ViTDet-H Cascade Mask R-CNN from MAE: the Cascade ViTDet-B recipe with ViT-H (its patch embedding resized
14 -> 16 as in ``mask_rcnn_vitdet_h_75ep``), global blocks 7, 15, 23, 31, drop path 0.5, lr decay 0.9, weight
decay on norms and the position table too, 75 epochs (Li et al. 2022)."""
from functools import partial

from .cascade_mask_rcnn_vitdet_b_100ep import (  # noqa: F401
    MAE, dataloader, get_vit_lr_decay_rate, lr_multiplier, model, optimizer, train,
)

train.init_checkpoint = MAE.format("huge")
train.patch_embed_resize = "bicubic"  # the ViTDet authors' 14 -> 16 kernel resize ("pinv": FlexiViT's, a deviation)
model.backbone.net.update(
    embed_dim=1280, depth=32, num_heads=16, drop_path_rate=0.5,
    window_block_indexes=[i for i in range(32) if i not in (7, 15, 23, 31)],
)
optimizer.params.lr_factor_func = partial(get_vit_lr_decay_rate, num_layers=32, lr_decay_rate=0.9)
optimizer.params.overrides = {}
optimizer.params.weight_decay_norm = None

train.max_iter = train.max_iter * 3 // 4  # 100 -> 75 epochs: 138281 iterations
lr_multiplier.scheduler.milestones = [m * 3 // 4 for m in lr_multiplier.scheduler.milestones]
lr_multiplier.scheduler.num_updates = train.max_iter
