"""The MoCo detection recipes' networks (MoCo paper, Sec. 4.2 and appendix; the authors' detectron2 configs).

All layers fine-tuned (``freeze_at=0``), synchronized BN in the backbone and the
heads, RGB input normalised with ImageNet mean / std in 0-255 units, torchvision
stride placement (``stride_in_1x1=False``). C4: the box head's res5 ends with an
extra norm (``Res5ROIHeadsExtraNorm``); naive SyncBN as the authors'. FPN:
SyncBN in the FPN and in 4conv1fc box / mask heads (detectron2's SyncBN recipe).
"""
from detectron2 import model_zoo

from transfer.detection.roi_heads import Res5ROIHeadsExtraNorm

from .constants import imagenet_rgb


def c4(norm="naiveSyncBN", mask=True):
    model = model_zoo.get_config("common/models/mask_rcnn_c4.py").model
    model.update(imagenet_rgb())
    model.backbone.freeze_at = 0
    model.backbone.stem.norm = model.backbone.stages.norm = norm
    model.backbone.stages.stride_in_1x1 = False
    model.roi_heads._target_ = Res5ROIHeadsExtraNorm
    model.roi_heads.res5_norm = model.roi_heads.res5.norm = norm
    model.roi_heads.res5.stride_in_1x1 = False
    if not mask:
        model.roi_heads.mask_head = None
    return model


def fpn(norm="SyncBN"):
    model = model_zoo.get_config("common/models/mask_rcnn_fpn.py").model
    model.update(imagenet_rgb())
    bottom_up = model.backbone.bottom_up
    bottom_up.freeze_at = 0
    bottom_up.stem.norm = bottom_up.stages.norm = norm
    bottom_up.stages.stride_in_1x1 = False
    model.backbone.norm = norm
    model.roi_heads.box_head.update(conv_dims=[256, 256, 256, 256], fc_dims=[1024], conv_norm=norm)
    model.roi_heads.mask_head.conv_norm = norm
    return model
