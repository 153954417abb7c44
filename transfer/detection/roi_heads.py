"""The C4 box head of the MoCo detection recipes: detectron2's ``Res5ROIHeads`` plus a norm after res5.

MoCo fine-tunes with normalisation everywhere (SyncBN in the backbone and the
head) and adds one more norm layer at the end of the res5 stage, which runs in
the box head in C4 models: its output feeds the box predictor and the mask head
directly, without the normalisation the other stages' outputs get from the
next block's first conv (MoCo paper, Sec. 4.2; the authors' ``train_net.py``).
"""
from __future__ import annotations

from . import require_detectron2

require_detectron2()
from detectron2.config import configurable  # noqa: E402
from detectron2.layers import get_norm  # noqa: E402
from detectron2.modeling.backbone.resnet import BasicBlock, ResNet  # noqa: E402
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, Res5ROIHeads  # noqa: E402
from torch import nn  # noqa: E402

__all__ = ["Res5ROIHeadsExtraNorm"]


@ROI_HEADS_REGISTRY.register()
class Res5ROIHeadsExtraNorm(Res5ROIHeads):
    """``Res5ROIHeads`` whose res5 ends with a norm layer (``res5.norm``), trained from scratch.

    yacs: ``MODEL.ROI_HEADS.NAME: Res5ROIHeadsExtraNorm``; the norm is
    ``MODEL.RESNETS.NORM``. For ResNet-18/34 backbones (CPU-sized variants) res5
    is built of basic blocks, as in those networks, instead of bottlenecks.
    LazyConfig: pass ``res5_norm`` with the other ``Res5ROIHeads`` arguments.
    """

    @configurable
    def __init__(self, *, res5_norm: str = "BN", **kwargs):
        super().__init__(**kwargs)
        self.res5.add_module("norm", get_norm(res5_norm, _out_channels(self.res5)))

    @classmethod
    def from_config(cls, cfg, input_shape):
        return {**super().from_config(cfg, input_shape), "res5_norm": cfg.MODEL.RESNETS.NORM}

    @classmethod
    def _build_res5_block(cls, cfg):
        if cfg.MODEL.RESNETS.DEPTH >= 50:
            return super()._build_res5_block(cfg)
        out_channels = cfg.MODEL.RESNETS.RES2_OUT_CHANNELS * 8
        num_blocks = {18: 2, 34: 3}[cfg.MODEL.RESNETS.DEPTH]
        blocks = ResNet.make_stage(BasicBlock, num_blocks, stride_per_block=[2] + [1] * (num_blocks - 1),
                                   in_channels=out_channels // 2, out_channels=out_channels,
                                   norm=cfg.MODEL.RESNETS.NORM)
        return nn.Sequential(*blocks), out_channels


def _out_channels(res5: nn.Module) -> int:
    return [m for m in res5 if hasattr(m, "out_channels")][-1].out_channels
