"""yacs configs: detectron2's, with the ROI head of the MoCo authors' recipes registered.

The project's recipes are LazyConfigs; yacs files are read for the MoCo authors'
own (their repository's ``detection/configs/``), which users hold and run:
ResNet C4 detectors whose keys detectron2's yacs defaults already cover (SyncBN,
SGD, multi-step schedule) but for ``MODEL.ROI_HEADS.NAME: Res5ROIHeadsExtraNorm``
(``transfer.detection.roi_heads``).
"""
from __future__ import annotations

from . import require_detectron2

require_detectron2()
from detectron2.config import CfgNode  # noqa: E402
from detectron2.config import get_cfg as d2_get_cfg  # noqa: E402

__all__ = ["get_cfg"]


def get_cfg() -> CfgNode:
    """detectron2's default yacs config, after registering the project's ROI head."""
    from . import roi_heads  # noqa: F401  (registration)

    return d2_get_cfg()
