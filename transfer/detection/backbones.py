"""Backbone parts the LazyConfigs take beyond detectron2's: a max-pooled top level on another feature
(the tiny ViTDet's pyramid ends at p4), and detectron2's ViT with activation checkpointing that needs no
fairscale."""
from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from . import require_detectron2

require_detectron2()
from detectron2.modeling.backbone.fpn import LastLevelMaxPool  # noqa: E402
from detectron2.modeling.backbone.vit import ViT as Detectron2ViT  # noqa: E402
from detectron2.modeling.backbone.vit import get_abs_pos  # noqa: E402

__all__ = ["last_level_max_pool", "ViT"]


class ViT(Detectron2ViT):
    """detectron2's ViTDet backbone (same arguments, modules and state dict), whose ``use_act_checkpoint``
    checkpoints every block with ``torch.utils.checkpoint`` (non-reentrant: the recomputation replays drop
    path's random numbers). detectron2's own flag wraps the blocks with fairscale, which is not among
    this project's requirements. Set it with ``model.backbone.net.use_act_checkpoint=True``: less activation
    memory (ViTDet-L/H at 1024 px on smaller GPUs) for about a third more backbone compute."""

    def __init__(self, *args, use_act_checkpoint: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.use_act_checkpoint = use_act_checkpoint

    def forward(self, x):
        x = self.patch_embed(x)
        if self.pos_embed is not None:
            x = x + get_abs_pos(self.pos_embed, self.pretrain_use_cls_token, (x.shape[1], x.shape[2]))
        for blk in self.blocks:
            x = checkpoint(blk, x, use_reentrant=False) if self.use_act_checkpoint and torch.is_grad_enabled() \
                else blk(x)
        return {self._out_features[0]: x.permute(0, 3, 1, 2)}


def last_level_max_pool(in_feature: str = "p5") -> LastLevelMaxPool:
    """detectron2's extra max-pooled level, on top of ``in_feature`` (its default, p5, suits strides 4-32)."""
    top_block = LastLevelMaxPool()
    top_block.in_feature = in_feature
    return top_block
