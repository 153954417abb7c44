"""yacs keys for the project's detectron2 recipes, and the builders that read them.

detectron2's yacs defaults cover the MoCo recipes (ResNet, C4 / FPN, SyncBN,
SGD, multi-step schedule). ViTDet needs a few more, added by
``add_sslkit_config``:

* ``MODEL.VIT`` / ``MODEL.SFP``: the ViT and its simple feature pyramid
  (``build_vitdet_backbone``);
* ``SOLVER.OPTIMIZER`` (``SGD`` | ``AdamW``), ``SOLVER.BETAS``,
  ``SOLVER.LAYER_DECAY`` (layer-wise lr decay of the ViT blocks; 1.0 = none):
  AdamW groups are detectron2's ``get_default_optimizer_params`` with
  ``get_vit_lr_decay_rate``, no weight decay on norms and the position table,
  as the ViTDet B / L LazyConfigs;
* ``INPUT.LSJ``: large-scale jitter (flip, resize by 0.1-2.0, crop to a square)
  as ViTDet's ``coco_loader_lsj``.

``get_cfg()`` is detectron2's with these keys, after registering the project's
backbone and ROI head.
"""
from __future__ import annotations

from functools import partial

import torch

from . import require_detectron2

require_detectron2()
from detectron2.config import CfgNode as CN  # noqa: E402
from detectron2.config import get_cfg as d2_get_cfg  # noqa: E402

__all__ = ["add_sslkit_config", "get_cfg", "build_optimizer", "build_train_mapper"]


def add_sslkit_config(cfg: CN) -> CN:
    cfg.MODEL.VIT = CN()
    cfg.MODEL.VIT.IMG_SIZE = 1024  # input size; global blocks' relative position tables are made for it
    cfg.MODEL.VIT.PATCH_SIZE = 16
    cfg.MODEL.VIT.PATCH_EMBED_RESIZE = "bicubic"  # a pretrained patch size of another size: bicubic | pinv
    cfg.MODEL.VIT.EMBED_DIM = 768
    cfg.MODEL.VIT.DEPTH = 12
    cfg.MODEL.VIT.NUM_HEADS = 12
    cfg.MODEL.VIT.MLP_RATIO = 4.0
    cfg.MODEL.VIT.DROP_PATH_RATE = 0.1
    cfg.MODEL.VIT.WINDOW_SIZE = 14
    cfg.MODEL.VIT.GLOBAL_BLOCKS = [2, 5, 8, 11]  # the rest attend within windows
    cfg.MODEL.VIT.USE_REL_POS = True  # initialised at zero
    cfg.MODEL.VIT.PRETRAIN_IMG_SIZE = 224  # the grid of the pretrained position table (interpolated)
    cfg.MODEL.SFP = CN()
    cfg.MODEL.SFP.SCALE_FACTORS = [4.0, 2.0, 1.0, 0.5]
    cfg.MODEL.SFP.OUT_CHANNELS = 256
    cfg.MODEL.SFP.NORM = "LN"
    cfg.MODEL.SFP.SQUARE_PAD = 1024

    cfg.SOLVER.OPTIMIZER = "SGD"
    cfg.SOLVER.BETAS = (0.9, 0.999)
    cfg.SOLVER.LAYER_DECAY = 1.0

    cfg.INPUT.LSJ = CN()
    cfg.INPUT.LSJ.ENABLED = False
    cfg.INPUT.LSJ.IMAGE_SIZE = 1024
    cfg.INPUT.LSJ.MIN_SCALE = 0.1
    cfg.INPUT.LSJ.MAX_SCALE = 2.0
    return cfg


def get_cfg() -> CN:
    """detectron2's default yacs config with the project's keys; registers its backbone and ROI head."""
    from . import backbones, roi_heads  # noqa: F401  (registration)

    return add_sslkit_config(d2_get_cfg())


def build_optimizer(cfg: CN, model: torch.nn.Module) -> torch.optim.Optimizer:
    """``SOLVER.OPTIMIZER``: SGD as detectron2 builds it, or AdamW with ViT layer-wise lr decay."""
    from detectron2.modeling.backbone.vit import get_vit_lr_decay_rate
    from detectron2.solver import build_optimizer as d2_build_optimizer
    from detectron2.solver.build import get_default_optimizer_params, maybe_add_gradient_clipping

    s = cfg.SOLVER
    if s.OPTIMIZER == "SGD":
        return d2_build_optimizer(cfg, model)
    if s.OPTIMIZER != "AdamW":
        raise ValueError(f"SOLVER.OPTIMIZER must be SGD or AdamW, got {s.OPTIMIZER!r}")
    lr_factor = (partial(get_vit_lr_decay_rate, lr_decay_rate=s.LAYER_DECAY, num_layers=cfg.MODEL.VIT.DEPTH)
                 if s.LAYER_DECAY != 1.0 else None)
    params = get_default_optimizer_params(model, base_lr=s.BASE_LR, weight_decay=s.WEIGHT_DECAY,
                                          weight_decay_norm=s.WEIGHT_DECAY_NORM, lr_factor_func=lr_factor,
                                          overrides={"pos_embed": {"weight_decay": 0.0}})
    return maybe_add_gradient_clipping(cfg, torch.optim.AdamW)(params, lr=s.BASE_LR, betas=tuple(s.BETAS),
                                                               weight_decay=s.WEIGHT_DECAY)


def build_train_mapper(cfg: CN):
    """detectron2's ``DatasetMapper``; with ``INPUT.LSJ.ENABLED``, large-scale jitter as ViTDet."""
    import detectron2.data.transforms as T
    from detectron2.data import DatasetMapper

    if not cfg.INPUT.LSJ.ENABLED:
        return DatasetMapper(cfg, is_train=True)
    size = cfg.INPUT.LSJ.IMAGE_SIZE
    augs = [T.RandomFlip(horizontal=True),  # flip first, as ViTDet
            T.ResizeScale(min_scale=cfg.INPUT.LSJ.MIN_SCALE, max_scale=cfg.INPUT.LSJ.MAX_SCALE,
                          target_height=size, target_width=size),
            T.FixedSizeCrop(crop_size=(size, size), pad=False)]
    return DatasetMapper(cfg, is_train=True, augmentations=augs, recompute_boxes=True)
