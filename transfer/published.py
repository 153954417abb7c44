"""Published reference numbers, as data, each with its source.

Metrics are in percent. ``recipe`` holds what a run must match to be compared
with the number without a mark: the evaluation's schedule, batch and image size,
and the pretraining length (``pretrain_epochs``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List

MAE_PAPER = "He et al. 2021, Masked Autoencoders Are Scalable Vision Learners (arXiv:2111.06377)"
MAE_README = "github.com/facebookresearch/mae README.md (fine-tuning results)"
MAE_LINPROBE = "github.com/facebookresearch/mae FINETUNE.md, linear probing, paper (TF/TPU) row"
VITDET_README = "github.com/facebookresearch/detectron2 projects/ViTDet/README.md, COCO Mask R-CNN"
MOCO_V2_PAPER = "Chen et al. 2020, Improved Baselines with Momentum Contrastive Learning (arXiv:2003.04297), Table 1"
MMSEG_UPERNET = "github.com/open-mmlab/mmsegmentation configs/upernet/README.md, ADE20K, UPerNet R-50 512x512"


@dataclass(frozen=True)
class Published:
    task: str
    backbone: str
    pretrain: str
    metrics: Dict[str, float]
    recipe: Dict = field(default_factory=dict)
    source: str = ""


_FT = {"epochs": 100, "batch": 1024, "img_size": 224, "pretrain_epochs": 1600}
_FT_LH = {**_FT, "epochs": 50}
_LIN_MAE = {"epochs": 90, "batch": 16384, "img_size": 224, "pretrain_epochs": 1600}
_LIN_MOCO = {"epochs": 100, "batch": 256, "img_size": 224, "pretrain_epochs": 200}
_VOC = {"iterations": 24000, "batch": 16, "pretrain_epochs": 200}
_VITDET = {"iterations": 184375, "batch": 64, "img_size": 1024, "pretrain_epochs": 1600}
_ADE = {"iterations": 160000, "batch": 16, "crop_size": 512}
_ADE_MAE = {**_ADE, "pretrain_epochs": 1600}

PUBLISHED: List[Published] = [
    # MAE, ImageNet-1K
    Published("imagenet_finetune", "vit_base_patch16", "mae", {"top1": 83.6}, _FT, MAE_README),
    Published("imagenet_finetune", "vit_large_patch16", "mae", {"top1": 85.9}, _FT_LH, MAE_README),
    Published("imagenet_finetune", "vit_huge_patch14", "mae", {"top1": 86.9}, _FT_LH, MAE_README),
    Published("imagenet_linear", "vit_base_patch16", "mae", {"top1": 68.0}, _LIN_MAE, MAE_LINPROBE),
    Published("imagenet_linear", "vit_large_patch16", "mae", {"top1": 75.8}, _LIN_MAE, MAE_LINPROBE),
    Published("imagenet_linear", "vit_huge_patch14", "mae", {"top1": 76.6}, _LIN_MAE, MAE_LINPROBE),
    # MAE, COCO (ViTDet Mask R-CNN, 100 epochs; ViT-H 75 epochs)
    Published("coco_instance_seg", "vit_base_patch16", "mae", {"box_AP": 51.6, "mask_AP": 45.9}, _VITDET,
              VITDET_README),
    Published("coco_instance_seg", "vit_large_patch16", "mae", {"box_AP": 55.5, "mask_AP": 49.2}, _VITDET,
              VITDET_README),
    Published("coco_instance_seg", "vit_huge_patch14", "mae", {"box_AP": 56.7, "mask_AP": 50.2},
              {**_VITDET, "iterations": 138281}, VITDET_README),
    # MAE, ADE20K (UperNet, Table 5)
    Published("ade20k_seg", "vit_base_patch16", "mae", {"mIoU": 48.1}, _ADE_MAE, MAE_PAPER + ", Table 5"),
    Published("ade20k_seg", "vit_large_patch16", "mae", {"mIoU": 53.6}, _ADE_MAE, MAE_PAPER + ", Table 5"),
    Published("ade20k_seg", "vit_base_patch16", "supervised", {"mIoU": 47.4}, _ADE,
              MAE_PAPER + ", Table 5 (supervised IN1K)"),
    Published("ade20k_seg", "vit_large_patch16", "supervised", {"mIoU": 49.9}, _ADE,
              MAE_PAPER + ", Table 5 (supervised IN1K)"),
    # MoCo, ImageNet linear and VOC07+12 Faster R-CNN R50-C4 (MoCo v2 paper, Table 1)
    Published("imagenet_linear", "resnet50", "moco_v2", {"top1": 67.5}, _LIN_MOCO, MOCO_V2_PAPER),
    Published("imagenet_linear", "resnet50", "moco_v1", {"top1": 60.6}, _LIN_MOCO, MOCO_V2_PAPER),
    Published("voc_det", "resnet50", "moco_v2", {"AP50": 82.4, "AP": 57.0, "AP75": 63.6}, _VOC, MOCO_V2_PAPER),
    Published("voc_det", "resnet50", "moco_v1", {"AP50": 81.5, "AP": 55.9, "AP75": 62.6}, _VOC, MOCO_V2_PAPER),
    Published("voc_det", "resnet50", "supervised", {"AP50": 81.3, "AP": 53.5, "AP75": 58.8},
              {**_VOC, "pretrain_epochs": 90}, MOCO_V2_PAPER),
    # Supervised R50, ADE20K UperNet (mmsegmentation model zoo)
    Published("ade20k_seg", "resnet50", "supervised", {"mIoU": 40.70},
              {"iterations": 80000, "batch": 16, "crop_size": 512, "pretrain_epochs": 90}, MMSEG_UPERNET + ", 80k"),
    Published("ade20k_seg", "resnet50", "supervised", {"mIoU": 42.05},
              {"iterations": 160000, "batch": 16, "crop_size": 512, "pretrain_epochs": 90}, MMSEG_UPERNET + ", 160k"),
]
