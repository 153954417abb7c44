"""ViTDet as a yacs-configurable detectron2 backbone.

detectron2 implements ViTDet (its ``ViT`` and ``SimpleFeaturePyramid``) for
LazyConfigs only. ``build_vitdet_backbone``, registered in ``BACKBONE_REGISTRY``,
builds those same modules from yacs keys (``MODEL.VIT``, ``MODEL.SFP``; see
``transfer.detection.config``), so one checkpoint loads into either config
style under the same names (``backbone.net.*``). ResNets need no such builder:
detectron2's ``build_resnet_backbone`` / ``build_resnet_fpn_backbone`` already
build the networks of the MoCo recipes.
"""
from __future__ import annotations

import math
from functools import partial

from torch import nn

from . import require_detectron2

require_detectron2()
from detectron2.modeling import BACKBONE_REGISTRY, SimpleFeaturePyramid, ViT  # noqa: E402
from detectron2.modeling.backbone.fpn import LastLevelMaxPool  # noqa: E402

__all__ = ["build_vitdet_backbone", "global_blocks_to_window_blocks", "last_level_max_pool"]


def last_level_max_pool(in_feature: str = "p5") -> LastLevelMaxPool:
    """detectron2's extra max-pooled level, on top of ``in_feature`` (its default, p5, suits strides 4-32)."""
    top_block = LastLevelMaxPool()
    top_block.in_feature = in_feature
    return top_block


def global_blocks_to_window_blocks(depth: int, global_blocks) -> list:
    """ViTDet names the blocks with global attention; detectron2's ViT takes the windowed ones."""
    bad = [i for i in global_blocks if not 0 <= i < depth]
    if bad:
        raise ValueError(f"global attention blocks {bad} out of range for a ViT of depth {depth}")
    return [i for i in range(depth) if i not in set(global_blocks)]


@BACKBONE_REGISTRY.register()
def build_vitdet_backbone(cfg, input_shape):
    """detectron2's ViT + SimpleFeaturePyramid (+ max-pool top level) from ``MODEL.VIT`` / ``MODEL.SFP``."""
    v, sfp = cfg.MODEL.VIT, cfg.MODEL.SFP
    net = ViT(
        img_size=v.IMG_SIZE, patch_size=v.PATCH_SIZE, in_chans=input_shape.channels, embed_dim=v.EMBED_DIM,
        depth=v.DEPTH, num_heads=v.NUM_HEADS, mlp_ratio=v.MLP_RATIO, qkv_bias=True, drop_path_rate=v.DROP_PATH_RATE,
        norm_layer=partial(nn.LayerNorm, eps=1e-6), window_size=v.WINDOW_SIZE,
        window_block_indexes=global_blocks_to_window_blocks(v.DEPTH, v.GLOBAL_BLOCKS),
        use_rel_pos=v.USE_REL_POS, pretrain_img_size=v.PRETRAIN_IMG_SIZE, out_feature="last_feat",
    )
    # The top level is max-pooled from the coarsest pyramid level (p5 -> p6 for ViTDet's scales).
    top_block = last_level_max_pool(f"p{int(math.log2(v.PATCH_SIZE / min(sfp.SCALE_FACTORS)))}")
    return SimpleFeaturePyramid(net, "last_feat", out_channels=sfp.OUT_CHANNELS, scale_factors=tuple(sfp.SCALE_FACTORS),
                                top_block=top_block, norm=sfp.NORM, square_pad=sfp.SQUARE_PAD)
