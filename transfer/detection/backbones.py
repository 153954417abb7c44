"""Backbone parts the LazyConfigs take beyond detectron2's: a max-pooled top level on another feature
(the tiny ViTDet's pyramid ends at p4)."""
from __future__ import annotations

from . import require_detectron2

require_detectron2()
from detectron2.modeling.backbone.fpn import LastLevelMaxPool  # noqa: E402

__all__ = ["last_level_max_pool"]


def last_level_max_pool(in_feature: str = "p5") -> LastLevelMaxPool:
    """detectron2's extra max-pooled level, on top of ``in_feature`` (its default, p5, suits strides 4-32)."""
    top_block = LastLevelMaxPool()
    top_block.in_feature = in_feature
    return top_block
