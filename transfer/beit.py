"""BEiT's network for the transfer rungs: timm's ``Beit`` of a BEiT export (``pretrain.formats.beit``: BEiT v1 / v2,
data2vec, the shared relative position table already expanded into every block), and the export at another input
size, resampled as timm's ``Beit.set_input_size`` resamples a model.

Framework-free (timm and the export only), so the classifiers (``transfer.classification.vit``), the frozen
backbone (``transfer.backbone``) and mmseg's host (``transfer.segmentation.timm_vit``) build the same network here.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Mapping, Optional

from timm.models.beit import Beit

from pretrain.backbones import BackboneExport
from pretrain.formats.beit import beit_model_args

__all__ = ["beit_network", "resample_beit"]


def beit_network(shape: Mapping[str, Any], img_size: Optional[int] = None, **kwargs) -> Beit:
    """timm's ``Beit`` of a BEiT export's ``shape``, random weights, at ``img_size`` (default: the pretraining's;
    the relative position tables are of that grid). ``kwargs`` override ``beit_model_args``' (``global_pool``,
    ``num_classes``, ``use_fc_norm``) or add to them (``drop_path_rate``)."""
    return Beit(**(beit_model_args(shape, img_size) | kwargs))


def resample_beit(export: BackboneExport, img_size: int) -> BackboneExport:
    """A BEiT export with its relative position tables (and position table) resampled to ``img_size``'s grid as
    timm's ``Beit.set_input_size`` does; the same export when it is its own size."""
    if img_size == export.shape["img_size"]:
        return export
    beit = beit_network(export.shape)
    beit.load_state_dict(export.state_dict, strict=True)
    beit.set_input_size(img_size=img_size)
    resampled = beit.state_dict()
    grid = img_size // export.shape["patch_size"]
    return replace(export, state_dict={k: resampled[k] for k in export.state_dict},
                   notes=export.notes + [f"relative position tables resampled from the {export.shape['img_size']} px "
                                         f"grid to the {img_size} px one ({grid}x{grid}; timm set_input_size)"])
