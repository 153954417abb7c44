"""ViTDet-H from MAE: ViT-H with its patch embedding resized 14 -> 16, global blocks 7, 15, 23, 31, drop path
0.5, lr decay 0.9, 75 epochs (Li et al. 2022).

The authors' MAE ViT-H/14 loads directly: the checkpointer resizes the patch
embedding to 16 x 16 by bicubic interpolation of the kernel, as the ViTDet authors
made ``mae_pretrain_vit_huge_p14to16.pth`` for the published 56.7 / 50.2, and the
position table to the 14 x 14 grid of 224 px (or convert once with
``tools/convert_checkpoint.py ... --to detectron2 --patch-size 16``).
``train.patch_embed_resize="pinv"`` takes FlexiViT's pseudo-inverse resize instead:
a deviation from the published recipe.
As ViTDet-H, weight decay applies to norms and the position table too.
"""
from functools import partial

from .mask_rcnn_vitdet_b_100ep import (  # noqa: F401
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
