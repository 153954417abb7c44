"""Published reference numbers, as data, each with its source.

Metrics are in percent. ``recipe`` holds what a run must match to be compared
with the number without a mark: the evaluation's schedule, batch and image size,
and the pretraining length (``pretrain_epochs``). ImageNet numbers are the best
epoch's (``top1_best``: the MAE code's "max accuracy", MoCo's ``best_acc1``), as
the authors report them; runs record the final epoch's (``top1``) too.
``weights`` names the supervised weights behind a baseline row where the
project's counterpart uses others (the report marks that difference).

``NOT_PUBLISHED`` lists what the shipped recipes produce that no paper or model
zoo reports, with the reason, so that the report says "none published" instead
of showing nothing.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

MAE_PAPER = "He et al. 2021, Masked Autoencoders Are Scalable Vision Learners (arXiv:2111.06377)"
MAE_README = "github.com/facebookresearch/mae README.md (fine-tuning results)"
MAE_LINPROBE = "github.com/facebookresearch/mae FINETUNE.md, linear probing, paper (TF/TPU) row"
MAE_README_ROBUSTNESS = ("github.com/facebookresearch/mae README.md, the fine-tuned weights on ImageNet-C / -A / -R / "
                         "-Sketch (detailed in the paper: " + MAE_PAPER + ", Table 3)")
VITDET_README = "github.com/facebookresearch/detectron2 projects/ViTDet/README.md, COCO Mask R-CNN"
VITDET_CASCADE = "github.com/facebookresearch/detectron2 projects/ViTDet/README.md, COCO Cascade Mask R-CNN"
VITDET_LVIS_README = "github.com/facebookresearch/detectron2 projects/ViTDet/README.md, LVIS Mask R-CNN"
MOCO_PAPER = "He et al. 2019, Momentum Contrast for Unsupervised Visual Representation Learning (arXiv:1911.05722)"
MOCO_V2_PAPER = "Chen et al. 2020, Improved Baselines with Momentum Contrastive Learning (arXiv:2003.04297)"
MOCO_V3_README = "github.com/facebookresearch/moco-v3 README.md / CONFIG.md (batch 4096)"
VITDET_PAPER = "Li et al. 2022, Exploring Plain Vision Transformer Backbones for Object Detection (arXiv:2203.16527)"
MMSEG_UPERNET = "github.com/open-mmlab/mmsegmentation configs/upernet/README.md, ADE20K, UPerNet R-50 512x512"
# The published families that pretrain.formats reads (issue 25): their READMEs (re-read here) and papers.
DINO_README = ("github.com/facebookresearch/dino README.md, pretrained models (ImageNet k-NN and linear; "
               "eval_linear.py: 100 epochs, 8 GPUs x 128)")
DINOV2_README = "github.com/facebookresearch/dinov2 README.md, pretrained models (ImageNet k-NN and linear)"
IBOT_README = ("github.com/bytedance/ibot README.md, pre-trained models, ImageNet-1K, block-wise masking "
               "(fine-tuning epochs: evaluation/README.md)")
IBOT_README_INTRO = "github.com/bytedance/ibot README.md, introduction (ViT-B/16; recipes: evaluation/README.md)"
BEIT_README = ("github.com/microsoft/unilm beit/README.md, fine-tuning on ImageNet-1k, the self-supervised pt22k "
               "checkpoints (recipes: beit/get_started_for_image_classification.md)")
BEIT_V2_README = ("github.com/microsoft/unilm beit2/get_started_for_image_classification.md, model zoo (pt1k) "
                  "and beit2/README.md")
BEIT_V2_ADE = "github.com/microsoft/unilm beit2/README.md, fine-tuning on ADE20K, UPerNet (pt1k)"
DATA2VEC_PAPER = ("Baevski et al. 2022, data2vec: A General Framework for Self-supervised Learning in Speech, Vision "
                  "and Language (arXiv:2202.03555)")
IJEPA_PAPER = ("Assran et al. 2023, Self-Supervised Learning from Images with a Joint-Embedding Predictive "
               "Architecture (arXiv:2301.08243)")
CLIP_PAPER = ("Radford et al. 2021, Learning Transferable Visual Models From Natural Language Supervision "
              "(arXiv:2103.00020)")
SWAV_README = "github.com/facebookresearch/swav README.md, model zoo (linear on ImageNet; eval_linear.py: 100 epochs)"
BARLOW_README = "github.com/facebookresearch/barlowtwins README.md, pretrained model (linear; evaluate.py: 100 epochs)"
VICREG_README = "github.com/facebookresearch/vicreg README.md, pre-trained models (linear; evaluate.py: 100 epochs)"
SIMCLR_README = "github.com/google-research/simclr README.md, pre-trained models (v1, ResNet50 (1x), its linear head)"
BYOL_README = ("github.com/google-deepmind/deepmind-research byol/README.md: the released ResNet-50 1x 'should "
               "evaluate to ~74.4%' (linear evaluation preset: 80 epochs)")

# Supervised weights behind baseline rows that the project's counterparts do not use.
MSRA_R50 = "msra_r50"  # Detectron's ImageNet R-50 (caffe2: BGR, stride in the 1x1 conv), the MoCo papers' baseline
RESNET_V1C = "resnet_v1c"  # mmseg's ResNetV1c (deep 3x3 stem) with open-mmlab's ImageNet weights
WEIGHTS = {
    MSRA_R50: "the MSRA R-50 (caffe2 layout: BGR, stride in the 1x1 conv)",
    RESNET_V1C: "mmseg's ResNetV1c (deep 3x3 stem)",
    "torchvision": "torchvision's ResNet (7x7 stem, stride in the 3x3 conv)",
}


@dataclass(frozen=True)
class Published:
    task: str
    backbone: str
    pretrain: str
    metrics: Dict[str, float]
    recipe: Dict = field(default_factory=dict)
    source: str = ""
    weights: Optional[str] = None  # a key of WEIGHTS where it matters (supervised ResNet baselines)
    checked: bool = True  # False: entered from the paper, not re-read against it here (the report says so)


_FT = {"epochs": 100, "batch": 1024, "img_size": 224, "pretrain_epochs": 1600}
_FT_LH = {**_FT, "epochs": 50}
_LIN_MAE = {"epochs": 90, "batch": 16384, "img_size": 224, "pretrain_epochs": 1600}
_LIN_MOCO = {"epochs": 100, "batch": 256, "img_size": 224, "pretrain_epochs": 200}
_VOC = {"iterations": 24000, "batch": 16, "img_size": 800, "pretrain_epochs": 200, "detector": "C4"}
_COCO_1X = {"iterations": 90000, "batch": 16, "img_size": 800, "pretrain_epochs": 200, "detector": "FPN"}
_COCO_2X = {**_COCO_1X, "iterations": 180000}
_COCO_C4_2X = {**_COCO_2X, "detector": "C4"}
_CITYSCAPES = {"iterations": 24000, "batch": 8, "img_size": 1024, "pretrain_epochs": 200, "detector": "FPN"}
_VITDET = {"iterations": 184375, "batch": 64, "img_size": 1024, "pretrain_epochs": 1600, "detector": "ViTDet"}
_ADE = {"iterations": 160000, "batch": 16, "crop_size": 512}
_ADE_MAE = {**_ADE, "pretrain_epochs": 1600}
_SUP = {"pretrain_epochs": 90}
_TABLE6 = {"batch": 1024, "img_size": 224, "pretrain_epochs": 1600}  # MAE Table 6 (Sec. A.5)
_LIN_MOCO_V3 = {"epochs": 90, "batch": 1024, "img_size": 224}  # main_lincls.py: SGD, cls token, no BN
# The published families' evaluations (issue 25). kNN: 224 px, ImageNet-1k train as the memory bank.
_KNN = {"img_size": 224}
_LIN_DINO = {"epochs": 100, "batch": 1024, "img_size": 224}  # DINO's eval_linear.py defaults, 8 GPUs
_LIN_DINOV2 = {"iterations": 12500, "img_size": 224}  # dinov2/eval/linear.py: 10 "epochs" of 1250 iterations
_LIN_RESNET = {"epochs": 100, "batch": 256, "img_size": 224}  # SwAV / Barlow Twins / VICReg linear evaluation
_FT_BEIT_B = {"epochs": 100, "batch": 1024, "img_size": 224}  # BEiT's run_class_finetuning.py, 8 GPUs
_FT_BEIT_L = {**_FT_BEIT_B, "epochs": 50}

PUBLISHED: List[Published] = [
    # MAE, ImageNet-1K (best epoch)
    Published("imagenet_finetune", "vit_base_patch16", "mae", {"top1_best": 83.6}, _FT, MAE_README),
    Published("imagenet_finetune", "vit_large_patch16", "mae", {"top1_best": 85.9}, _FT_LH, MAE_README),
    Published("imagenet_finetune", "vit_huge_patch14", "mae", {"top1_best": 86.9}, _FT_LH, MAE_README),
    Published("imagenet_linear", "vit_base_patch16", "mae", {"top1_best": 68.0}, _LIN_MAE, MAE_LINPROBE),
    Published("imagenet_linear", "vit_large_patch16", "mae", {"top1_best": 75.8}, _LIN_MAE, MAE_LINPROBE),
    Published("imagenet_linear", "vit_huge_patch14", "mae", {"top1_best": 76.6}, _LIN_MAE, MAE_LINPROBE),
    # MAE at 800 epochs (what configs/pretrain/mae_vit_*_in1k.yaml train): ViT-L, the paper's ablation default
    Published("imagenet_finetune", "vit_large_patch16", "mae", {"top1_best": 84.9},
              {**_FT_LH, "pretrain_epochs": 800}, MAE_PAPER + ", Table 1 (ViT-L, 800 epochs, decoder depth 8)"),
    Published("imagenet_linear", "vit_large_patch16", "mae", {"top1_best": 73.5},
              {**_LIN_MAE, "pretrain_epochs": 800}, MAE_PAPER + ", Table 1 (ViT-L, 800 epochs, decoder depth 8)"),
    # MAE, COCO (ViTDet Mask R-CNN, 100 epochs; ViT-H 75 epochs, from ViT-H/14 resized to patch 16)
    Published("coco_instance_seg", "vit_base_patch16", "mae", {"box_AP": 51.6, "mask_AP": 45.9}, _VITDET,
              VITDET_README),
    Published("coco_instance_seg", "vit_large_patch16", "mae", {"box_AP": 55.5, "mask_AP": 49.2}, _VITDET,
              VITDET_README),
    Published("coco_instance_seg", "vit_huge_patch14", "mae", {"box_AP": 56.7, "mask_AP": 50.2},
              {**_VITDET, "iterations": 138281}, VITDET_README + " (ViT-H/14, patch embedding resized to 16)"),
    # MAE, ADE20K (UperNet, Table 5)
    Published("ade20k_seg", "vit_base_patch16", "mae", {"mIoU": 48.1}, _ADE_MAE, MAE_PAPER + ", Table 5"),
    Published("ade20k_seg", "vit_large_patch16", "mae", {"mIoU": 53.6}, _ADE_MAE, MAE_PAPER + ", Table 5"),
    Published("ade20k_seg", "vit_base_patch16", "supervised", {"mIoU": 47.4}, _ADE,
              MAE_PAPER + ", Table 5 (supervised IN1K)"),
    Published("ade20k_seg", "vit_large_patch16", "supervised", {"mIoU": 49.9}, _ADE,
              MAE_PAPER + ", Table 5 (supervised IN1K)"),
    # MoCo, ImageNet linear (best epoch) and VOC07+12 Faster R-CNN R50-C4 (MoCo v2 paper, Tables 1 and 2)
    Published("imagenet_linear", "resnet50", "moco_v2", {"top1_best": 67.5}, _LIN_MOCO, MOCO_V2_PAPER + ", Table 1"),
    Published("imagenet_linear", "resnet50", "moco_v1", {"top1_best": 60.6}, _LIN_MOCO, MOCO_V2_PAPER + ", Table 1"),
    Published("imagenet_linear", "resnet50", "moco_v2", {"top1_best": 71.1}, {**_LIN_MOCO, "pretrain_epochs": 800},
              MOCO_V2_PAPER + ", Table 2 (800 epochs)"),
    Published("voc_det", "resnet50", "moco_v2", {"AP50": 82.4, "AP": 57.0, "AP75": 63.6}, _VOC,
              MOCO_V2_PAPER + ", Table 1"),
    Published("voc_det", "resnet50", "moco_v2", {"AP50": 82.5, "AP": 57.4, "AP75": 64.0},
              {**_VOC, "pretrain_epochs": 800}, MOCO_V2_PAPER + ", Table 2 (800 epochs)"),
    Published("voc_det", "resnet50", "moco_v1", {"AP50": 81.5, "AP": 55.9, "AP75": 62.6}, _VOC,
              MOCO_V2_PAPER + ", Table 1"),
    Published("voc_det", "resnet50", "supervised", {"AP50": 81.3, "AP": 53.5, "AP75": 58.8},
              {**_VOC, **_SUP}, MOCO_V2_PAPER + ", Table 1", weights=MSRA_R50),
    # MoCo v1 (IN-1M, 200 epochs) and its supervised baseline, COCO Mask R-CNN (MoCo paper, Table 5)
    Published("coco_instance_seg", "resnet50", "moco_v1", {"box_AP": 38.5, "mask_AP": 35.1},
              _COCO_1X, MOCO_PAPER + ", Table 5a (R50-FPN, 1x)"),
    Published("coco_instance_seg", "resnet50", "supervised", {"box_AP": 38.9, "mask_AP": 35.4},
              {**_COCO_1X, **_SUP}, MOCO_PAPER + ", Table 5a (R50-FPN, 1x)",
              weights=MSRA_R50),
    Published("coco_instance_seg", "resnet50", "moco_v1", {"box_AP": 40.8, "mask_AP": 36.9},
              _COCO_2X, MOCO_PAPER + ", Table 5b (R50-FPN, 2x)"),
    Published("coco_instance_seg", "resnet50", "supervised", {"box_AP": 40.6, "mask_AP": 36.8},
              {**_COCO_2X, **_SUP}, MOCO_PAPER + ", Table 5b (R50-FPN, 2x)",
              weights=MSRA_R50),
    Published("coco_instance_seg", "resnet50", "moco_v1", {"box_AP": 40.7, "mask_AP": 35.4},
              _COCO_C4_2X, MOCO_PAPER + ", Table 5d (R50-C4, 2x)"),
    Published("coco_instance_seg", "resnet50", "supervised", {"box_AP": 40.0, "mask_AP": 34.7},
              {**_COCO_C4_2X, **_SUP}, MOCO_PAPER + ", Table 5d (R50-C4, 2x)",
              weights=MSRA_R50),
    # MoCo v3, ImageNet-1K (ViTs 300 epochs; ViT-S with 12 heads), linear (main_lincls) and DeiT fine-tuning
    Published("imagenet_linear", "vit_small_patch16", "moco_v3", {"top1_best": 73.2},
              {**_LIN_MOCO_V3, "pretrain_epochs": 300}, MOCO_V3_README),
    Published("imagenet_linear", "vit_base_patch16", "moco_v3", {"top1_best": 76.7},
              {**_LIN_MOCO_V3, "pretrain_epochs": 300}, MOCO_V3_README),
    Published("imagenet_finetune", "vit_base_patch16", "moco_v3", {"top1_best": 83.2},
              {"epochs": 150, "batch": 1024, "img_size": 224, "pretrain_epochs": 300},
              MOCO_V3_README + " (DeiT's recipe, 150 epochs)"),
    Published("imagenet_linear", "resnet50", "moco_v3", {"top1_best": 68.9}, {**_LIN_MOCO_V3, "pretrain_epochs": 100},
              MOCO_V3_README),
    Published("imagenet_linear", "resnet50", "moco_v3", {"top1_best": 72.8}, {**_LIN_MOCO_V3, "pretrain_epochs": 300},
              MOCO_V3_README),
    Published("imagenet_linear", "resnet50", "moco_v3", {"top1_best": 74.6}, {**_LIN_MOCO_V3, "pretrain_epochs": 1000},
              MOCO_V3_README),
    # MoCo v3 ViTs in detection (ViTDet's pre-training ablation) and segmentation (MAE paper, Table 5)
    Published("coco_instance_seg", "vit_base_patch16", "moco_v3", {"box_AP": 47.9, "mask_AP": 42.7},
              {**_VITDET, "pretrain_epochs": 300}, VITDET_PAPER + ", Table 4 (ViT-B, IN-1K MoCo v3)"),
    Published("ade20k_seg", "vit_base_patch16", "moco_v3", {"mIoU": 47.3}, {**_ADE, "pretrain_epochs": 300},
              MAE_PAPER + ", Table 5 (MoCo v3)"),
    Published("ade20k_seg", "vit_large_patch16", "moco_v3", {"mIoU": 49.1}, {**_ADE, "pretrain_epochs": 300},
              MAE_PAPER + ", Table 5 (MoCo v3)"),
    # Supervised R50, ADE20K UperNet (mmsegmentation model zoo; ResNetV1c)
    Published("ade20k_seg", "resnet50", "supervised", {"mIoU": 40.70},
              {"iterations": 80000, "batch": 16, "crop_size": 512, **_SUP}, MMSEG_UPERNET + ", 80k",
              weights=RESNET_V1C),
    Published("ade20k_seg", "resnet50", "supervised", {"mIoU": 42.05},
              {"iterations": 160000, "batch": 16, "crop_size": 512, **_SUP}, MMSEG_UPERNET + ", 160k",
              weights=RESNET_V1C),
    # The published families (issue 25), under the labels and backbone names their readers give
    # (pretrain.formats; BEiT's exports are beit_*). ImageNet-1k throughout; k-NN as task "knn" on ImageNet.
    # DINO: the released teachers (README table, re-read here)
    *[Published(task, backbone, "dino", {metric: value}, recipe, DINO_README)
      for backbone, knn, linear in (("vit_small_patch16", 74.5, 77.0), ("vit_small_patch8", 78.3, 79.7),
                                    ("vit_base_patch16", 76.1, 78.2), ("vit_base_patch8", 77.4, 80.1),
                                    ("resnet50", 67.5, 75.3))
      for task, metric, value, recipe in (("knn", "top1", knn, _KNN),
                                          ("imagenet_linear", "top1_best", linear, _LIN_DINO))],
    # DINOv2 (README table, re-read here; S/B/L distilled from g). The _reg4 files are another backbone name
    # (pretrain.backbones.vit_shape: vit_small_patch14_reg4, ...).
    *[Published(task, backbone + ("_reg4" if reg else ""), "dinov2", {metric: value}, recipe,
                DINOV2_README + (", with registers (Darcet et al. 2024, arXiv:2309.16588)" if reg else ""))
      for backbone, reg, knn, linear in (("vit_small_patch14", False, 79.0, 81.1),
                                         ("vit_small_patch14", True, 79.1, 80.9),
                                         ("vit_base_patch14", False, 82.1, 84.5),
                                         ("vit_base_patch14", True, 82.0, 84.6),
                                         ("vit_large_patch14", False, 83.5, 86.3),
                                         ("vit_large_patch14", True, 83.8, 86.7),
                                         ("vit_giant2_patch14", False, 83.5, 86.5),
                                         ("vit_giant2_patch14", True, 83.7, 87.1))
      for task, metric, value, recipe in (("knn", "top1", knn, _KNN),
                                          ("imagenet_linear", "top1_best", linear, _LIN_DINOV2))],
    # iBOT, ImageNet-1K, block-wise masking (README table, re-read here; ViT-S/16: 800 epochs, the README's command
    # for it; fine-tuning: 200 / 100 / 50 epochs for S / B / L, evaluation/README.md)
    *[Published(task, backbone, "ibot", {metric: value}, {**recipe, **pre}, IBOT_README)
      for backbone, knn, linear, ft, ft_epochs, pre in (
          ("vit_small_patch16", 75.2, 77.9, 82.3, 200, {"pretrain_epochs": 800}),
          ("vit_base_patch16", 77.1, 79.5, 84.0, 100, {}),
          ("vit_large_patch16", 78.0, 81.0, 84.8, 50, {}))
      for task, metric, value, recipe in (
          ("knn", "top1", knn, _KNN), ("imagenet_linear", "top1_best", linear, {"img_size": 224}),
          ("imagenet_finetune", "top1_best", ft, {"epochs": ft_epochs, "img_size": 224}))],
    # iBOT ViT-B/16 in UperNet (160k x 16 at 512) and mmdet's Cascade Mask R-CNN with FPN (12 epochs x 16)
    Published("ade20k_seg", "vit_base_patch16", "ibot", {"mIoU": 50.0}, _ADE, IBOT_README_INTRO),
    Published("coco_instance_seg_cascade", "vit_base_patch16", "ibot", {"box_AP": 51.4, "mask_AP": 44.2},
              {"epochs": 12, "batch": 16, "detector": "Cascade Mask R-CNN, FPN (mmdet)"}, IBOT_README_INTRO),
    # BEiT v1: pretrained on ImageNet-22k, fine-tuned on ImageNet-1k (README, re-read here)
    Published("imagenet_finetune", "beit_base_patch16", "beit", {"top1_best": 83.7}, _FT_BEIT_B, BEIT_README),
    Published("imagenet_finetune", "beit_large_patch16", "beit", {"top1_best": 86.0}, _FT_BEIT_L, BEIT_README),
    # BEiT (ImageNet-1k, DALL-E's tokenizer) in MAE's Tables 4 and 5, ViT-B; the released v1 files are
    # ImageNet-22k's. Entered from the paper, not re-read here.
    Published("ade20k_seg", "beit_base_patch16", "beit", {"mIoU": 47.1}, _ADE, MAE_PAPER + ", Table 5 (BEiT)",
              checked=False),
    Published("coco_instance_seg", "beit_base_patch16", "beit", {"box_AP": 49.8, "mask_AP": 44.4},
              {"detector": "Mask R-CNN, FPN on a plain ViT (MAE Table 4)"}, MAE_PAPER + ", Table 4 (BEiT)",
              checked=False),
    # BEiT v2, pretrained on ImageNet-1k (300 and 1600 epochs), fine-tuned on ImageNet-1k; UperNet on ADE20K
    *[Published("imagenet_finetune", backbone, "beit_v2", {"top1_best": top1}, {**recipe, "pretrain_epochs": epochs},
                BEIT_V2_README)
      for backbone, recipe, epochs, top1 in (("beit_base_patch16", _FT_BEIT_B, 1600, 85.5),  # 1600 first: the
                                             ("beit_base_patch16", _FT_BEIT_B, 300, 85.0),  # pt1k release, the
                                             ("beit_large_patch16", _FT_BEIT_L, 1600, 87.3),  # match of a file
                                             ("beit_large_patch16", _FT_BEIT_L, 300, 86.6))],  # without its epoch
    Published("ade20k_seg", "beit_base_patch16", "beit_v2", {"mIoU": 53.1},
              {"iterations": 160000, "crop_size": 512, "pretrain_epochs": 1600}, BEIT_V2_ADE),
    Published("ade20k_seg", "beit_large_patch16", "beit_v2", {"mIoU": 56.7},
              {"iterations": 160000, "crop_size": 512, "pretrain_epochs": 1600}, BEIT_V2_ADE),
    # data2vec ViT-B (800 epochs; the fine-tuning command of facebookresearch/data2vec_vision beit/README.md)
    Published("imagenet_finetune", "beit_base_patch16", "data2vec", {"top1_best": 84.2},
              {**_FT_BEIT_B, "pretrain_epochs": 800}, DATA2VEC_PAPER + ", Table 1 (ViT-B)", checked=False),
    # I-JEPA: the target encoder's average-pooled tokens, linear (the README's released ViT-H models, 300 epochs)
    Published("imagenet_linear", "vit_huge_patch14", "ijepa", {"top1_best": 79.3},
              {"img_size": 224, "pretrain_epochs": 300}, IJEPA_PAPER + ", Table 1 (ViT-H/14)", checked=False),
    Published("imagenet_linear", "vit_huge_patch16", "ijepa", {"top1_best": 81.1},
              {"img_size": 448, "pretrain_epochs": 300}, IJEPA_PAPER + ", Table 1 (ViT-H/16 at 448 px)", checked=False),
    # CLIP (OpenAI): the linear probe (L-BFGS logistic regression on the image features), ImageNet column
    *[Published("imagenet_linear", backbone, "clip", {"top1_best": top1}, {"img_size": size},
                CLIP_PAPER + f", Table 10 (linear probe, {name})", checked=False)
      for backbone, size, name, top1 in (("vit_base_patch32", 224, "ViT-B/32", 76.1),
                                         ("vit_base_patch16", 224, "ViT-B/16", 80.2),
                                         ("vit_large_patch14", 224, "ViT-L/14", 83.9),
                                         ("vit_large_patch14", 336, "ViT-L/14@336px", 85.4))],
    # The self-supervised ResNet-50s, linear on ImageNet (their READMEs, re-read here)
    # (SwAV: the batch-4096 multi-crop models, 800 epochs first: torch.hub's, and the one a file without its epoch
    # is compared with)
    *[Published("imagenet_linear", "resnet50", "swav", {"top1_best": top1}, {**_LIN_RESNET, "pretrain_epochs": epochs},
                SWAV_README + f", {epochs} epochs, batch 4096, 2x224 + 6x96")
      for epochs, top1 in ((800, 75.3), (400, 74.6), (200, 73.9), (100, 72.1))],
    Published("imagenet_linear", "resnet50", "barlow_twins", {"top1_best": 73.3},
              {**_LIN_RESNET, "pretrain_epochs": 1000}, BARLOW_README + ", 1000 epochs, batch 2048"),
    Published("imagenet_linear", "resnet50", "vicreg", {"top1_best": 73.2}, {**_LIN_RESNET, "pretrain_epochs": 1000},
              VICREG_README + " (its multi-node command: 1000 epochs, batch 2048)"),
    Published("imagenet_linear", "resnet50", "simclr_v1", {"top1_best": 69.1}, {"img_size": 224}, SIMCLR_README),
    Published("imagenet_linear", "resnet50", "byol", {"top1_best": 74.4}, {"epochs": 80}, BYOL_README),
    # MoCo Table 6: COCO keypoint detection (rung keypoints)
    # Keypoint R-CNN R50-FPN, 2x (the schedule re-read in the paper's appendix A.2); the values are from the
    # paper's Table 6, an image in the copies searchable here: AP^kp 65.8 / 66.8 agree with a third-party summary,
    # the rest are unchecked.
    Published("coco_keypoints", "resnet50", "moco_v1", {"keypoint_AP": 66.8, "keypoint_AP50": 87.4,
                                                        "keypoint_AP75": 72.5},
              _COCO_2X, MOCO_PAPER + ", Table 6 (COCO keypoint detection, MoCo IN-1M)", checked=False),
    Published("coco_keypoints", "resnet50", "supervised", {"keypoint_AP": 65.8, "keypoint_AP50": 86.9,
                                                           "keypoint_AP75": 71.9},
              {**_COCO_2X, **_SUP}, MOCO_PAPER + ", Table 6 (COCO keypoint detection, super. IN-1M)",
              weights=MSRA_R50, checked=False),
    Published("coco_keypoints", "resnet50", "random", {"keypoint_AP": 65.9, "keypoint_AP50": 86.5,
                                                       "keypoint_AP75": 71.7},
              {k: v for k, v in _COCO_2X.items() if k != "pretrain_epochs"},
              MOCO_PAPER + ", Table 6 (COCO keypoint detection, random init.)", checked=False),
    # MoCo Table 6: LVIS v0.5 instance segmentation; ViTDet's LVIS rows (rung lvis)
    # (MoCo: its v1 model, IN-1M 200 epochs, and the supervised IN-1M R-50; R50-FPN, detectron2's LVIS v0.5 1x
    # baseline schedule; values entered from the paper's table, not re-read here)
    Published("lvis_v0.5_instance_seg", "resnet50", "moco_v1", {"mask_AP": 24.1, "mask_AP50": 37.4, "mask_AP75": 25.5},
              _COCO_1X, MOCO_PAPER + ", Table 6 (LVIS v0.5, R50-FPN)", checked=False),
    Published("lvis_v0.5_instance_seg", "resnet50", "supervised",
              {"mask_AP": 24.4, "mask_AP50": 37.8, "mask_AP75": 25.8}, {**_COCO_1X, **_SUP},
              MOCO_PAPER + ", Table 6 (LVIS v0.5, R50-FPN)", weights=MSRA_R50, checked=False),
    # ViTDet from MAE on LVIS v1 (100 epochs: 156,250 iterations x 64 at 1024; re-read from the README here)
    Published("lvis_v1_instance_seg", "vit_base_patch16", "mae", {"box_AP": 40.2, "mask_AP": 38.2},
              {**_VITDET, "iterations": 156250}, VITDET_LVIS_README),
    Published("lvis_v1_instance_seg", "vit_large_patch16", "mae", {"box_AP": 46.1, "mask_AP": 43.6},
              {**_VITDET, "iterations": 156250}, VITDET_LVIS_README),
    # MoCo Table 6: Cityscapes instance segmentation (rung cityscapes_instance)
    # (R50-FPN, 24k iterations x 8, test at 1024; values entered from the paper's table, not re-read here)
    Published("cityscapes_instance_seg", "resnet50", "moco_v1", {"mask_AP": 32.3, "mask_AP50": 59.3},
              _CITYSCAPES, MOCO_PAPER + ", Table 6 (Cityscapes instance seg., R50-FPN)", checked=False),
    Published("cityscapes_instance_seg", "resnet50", "supervised", {"mask_AP": 32.9, "mask_AP50": 59.6},
              {**_CITYSCAPES, **_SUP}, MOCO_PAPER + ", Table 6 (Cityscapes instance seg., R50-FPN)",
              weights=MSRA_R50, checked=False),
    # MoCo Table 6: VOC and Cityscapes semantic segmentation (rungs voc_seg, cityscapes_seg)
    # (FCN on R50 at stride 16, the appendix's recipe: VOC 30k iterations x 16 at 513 crops on train_aug2012,
    # Cityscapes 90k x 16 at 769 on train_fine; averages over 5 trials. Values entered from the paper's table, not
    # re-read here: the copies searchable here hold its text, not the table's numbers; VOC's MoCo 73.6 agrees with a
    # third-party summary of the paper.)
    Published("voc_seg", "resnet50", "moco_v1", {"mIoU": 73.6},
              {"iterations": 30000, "batch": 16, "crop_size": 513, "pretrain_epochs": 200},
              MOCO_PAPER + ", Table 6 (VOC semantic seg., FCN R50, MoCo IN-1M)", checked=False),
    Published("voc_seg", "resnet50", "supervised", {"mIoU": 74.4},
              {"iterations": 30000, "batch": 16, "crop_size": 513, **_SUP},
              MOCO_PAPER + ", Table 6 (VOC semantic seg., FCN R50, super. IN-1M)", weights=MSRA_R50, checked=False),
    Published("voc_seg", "resnet50", "random", {"mIoU": 39.5}, {"iterations": 30000, "batch": 16, "crop_size": 513},
              MOCO_PAPER + ", Table 6 (VOC semantic seg., FCN R50, random init.)", checked=False),
    Published("cityscapes_seg", "resnet50", "moco_v1", {"mIoU": 75.3},
              {"iterations": 90000, "batch": 16, "crop_size": 769, "pretrain_epochs": 200},
              MOCO_PAPER + ", Table 6 (Cityscapes semantic seg., FCN R50, MoCo IN-1M)", checked=False),
    Published("cityscapes_seg", "resnet50", "supervised", {"mIoU": 74.6},
              {"iterations": 90000, "batch": 16, "crop_size": 769, **_SUP},
              MOCO_PAPER + ", Table 6 (Cityscapes semantic seg., FCN R50, super. IN-1M)", weights=MSRA_R50,
              checked=False),
    Published("cityscapes_seg", "resnet50", "random", {"mIoU": 65.3},
              {"iterations": 90000, "batch": 16, "crop_size": 769},
              MOCO_PAPER + ", Table 6 (Cityscapes semantic seg., FCN R50, random init.)", checked=False),
    # ViTDet's Cascade Mask R-CNN rows (rung cascade)
    Published("coco_instance_seg_cascade", "vit_base_patch16", "mae", {"box_AP": 54.0, "mask_AP": 46.7}, _VITDET,
              VITDET_CASCADE),
    Published("coco_instance_seg_cascade", "vit_large_patch16", "mae", {"box_AP": 57.6, "mask_AP": 50.0}, _VITDET,
              VITDET_CASCADE),
    Published("coco_instance_seg_cascade", "vit_huge_patch14", "mae", {"box_AP": 58.7, "mask_AP": 51.0},
              {**_VITDET, "iterations": 138281}, VITDET_CASCADE + " (ViT-H/14, patch embedding resized to 16)"),
    # MAE Table 6: iNaturalist and Places fine-tuning (rungs inat*, places*)
    # Table 9's batch and 224 px (ViT-H: the 224 column, not H-448); the per-dataset lr and epochs are not
    # published (Sec. A.5: "adjusted for each individual dataset"), so a run's epochs always count as a difference.
    Published("inat2017_finetune", "vit_base_patch16", "mae", {"top1_best": 70.5}, _TABLE6, MAE_PAPER + ", Table 6"),
    Published("inat2017_finetune", "vit_large_patch16", "mae", {"top1_best": 75.7}, _TABLE6, MAE_PAPER + ", Table 6"),
    Published("inat2017_finetune", "vit_huge_patch14", "mae", {"top1_best": 79.3}, _TABLE6, MAE_PAPER + ", Table 6"),
    Published("inat2018_finetune", "vit_base_patch16", "mae", {"top1_best": 75.4}, _TABLE6, MAE_PAPER + ", Table 6"),
    Published("inat2018_finetune", "vit_large_patch16", "mae", {"top1_best": 80.1}, _TABLE6, MAE_PAPER + ", Table 6"),
    Published("inat2018_finetune", "vit_huge_patch14", "mae", {"top1_best": 83.0}, _TABLE6, MAE_PAPER + ", Table 6"),
    Published("inat2019_finetune", "vit_base_patch16", "mae", {"top1_best": 80.5}, _TABLE6, MAE_PAPER + ", Table 6"),
    Published("inat2019_finetune", "vit_large_patch16", "mae", {"top1_best": 83.4}, _TABLE6, MAE_PAPER + ", Table 6"),
    Published("inat2019_finetune", "vit_huge_patch14", "mae", {"top1_best": 85.7}, _TABLE6, MAE_PAPER + ", Table 6"),
    Published("places205_finetune", "vit_base_patch16", "mae", {"top1_best": 63.9}, _TABLE6, MAE_PAPER + ", Table 6"),
    Published("places205_finetune", "vit_large_patch16", "mae", {"top1_best": 65.8}, _TABLE6, MAE_PAPER + ", Table 6"),
    Published("places205_finetune", "vit_huge_patch14", "mae", {"top1_best": 65.9}, _TABLE6, MAE_PAPER + ", Table 6"),
    Published("places365_finetune", "vit_base_patch16", "mae", {"top1_best": 57.9}, _TABLE6, MAE_PAPER + ", Table 6"),
    Published("places365_finetune", "vit_large_patch16", "mae", {"top1_best": 59.4}, _TABLE6, MAE_PAPER + ", Table 6"),
    Published("places365_finetune", "vit_huge_patch14", "mae", {"top1_best": 59.8}, _TABLE6, MAE_PAPER + ", Table 6"),
    # MAE Table 3: robustness, ImageNet-A / -R / -Sketch / -C (rung robustness)
    # The ImageNet-1K fine-tuned weights above (recipe: their fine-tuning's epochs), unchanged, on the variants; the
    # MAE README's table (re-read here), which the paper's Table 3 details. in_c_mce: lower is better.
    Published("imagenet_robustness", "vit_base_patch16", "mae",
              {"in_c_mce": 51.7, "in_a_top1": 35.9, "in_r_top1": 48.3, "sketch_top1": 34.5},
              {"epochs": 100, "img_size": 224, "pretrain_epochs": 1600}, MAE_README_ROBUSTNESS),
    Published("imagenet_robustness", "vit_large_patch16", "mae",
              {"in_c_mce": 41.8, "in_a_top1": 57.1, "in_r_top1": 59.9, "sketch_top1": 45.3},
              {"epochs": 50, "img_size": 224, "pretrain_epochs": 1600}, MAE_README_ROBUSTNESS),
    Published("imagenet_robustness", "vit_huge_patch14", "mae",
              {"in_c_mce": 33.8, "in_a_top1": 68.2, "in_r_top1": 64.4, "sketch_top1": 49.6},
              {"epochs": 50, "img_size": 224, "pretrain_epochs": 1600}, MAE_README_ROBUSTNESS),
    Published("imagenet_robustness", "vit_huge_patch14", "mae",
              {"in_c_mce": 36.8, "in_a_top1": 76.7, "in_r_top1": 66.5, "sketch_top1": 50.9},
              {"epochs": 50, "img_size": 448, "pretrain_epochs": 1600}, MAE_README_ROBUSTNESS + ", ViT-H at 448 px"),
]

# (task, backbone, pretrain) that shipped recipes produce and nobody published, with the reason.
NOT_PUBLISHED: Dict[Tuple[str, str, str], str] = {
    ("lvis_v0.5_instance_seg", "resnet50", "moco_v2"): "MoCo's Table 6 reports LVIS for MoCo v1 only",
    ("cityscapes_instance_seg", "resnet50", "moco_v2"): "MoCo's Table 6 reports Cityscapes for MoCo v1 only",
    ("lvis_v1_instance_seg", "vit_base_patch16", "supervised"):
        "ViTDet's LVIS rows are MAE's; none for DeiT-B under this recipe",
    ("lvis_v1_instance_seg", "vit_large_patch16", "supervised"):
        "ViTDet's LVIS rows are MAE's; none for timm's IN-21k ViT-L under this recipe",
    ("coco_instance_seg", "resnet50", "moco_v2"):
        "the MoCo papers report COCO for MoCo v1 only (MoCo v2's paper: ImageNet and VOC)",
    ("ade20k_seg", "resnet50", "moco_v2"): "no MoCo paper reports ADE20K for a ResNet-50",
    ("coco_instance_seg", "vit_base_patch16", "supervised"):
        "ViTDet's supervised rows use other schedules; none for DeiT-B under this recipe",
    ("coco_instance_seg", "vit_large_patch16", "supervised"):
        "ViTDet's supervised rows use other schedules; none for timm's IN-21k ViT-L under this recipe",
    ("imagenet_linear", "resnet50", "supervised"): "a supervised ResNet-50 is not a linear-probe baseline",
    ("coco_keypoints", "resnet50", "moco_v2"): "MoCo's Table 6 reports COCO keypoints for MoCo v1 (IN-1M, IG-1B) only",
    ("voc_seg", "resnet50", "moco_v2"): "MoCo's Table 6 reports VOC semantic segmentation for MoCo v1 only",
    ("cityscapes_seg", "resnet50", "moco_v2"): "MoCo's Table 6 reports Cityscapes semantic segmentation for MoCo v1 only",
    ("coco_instance_seg_cascade", "vit_base_patch16", "supervised"):
        "ViTDet's Cascade rows are MAE ViTs and IN-21k supervised hierarchical backbones; none for DeiT-B",
    ("coco_instance_seg_cascade", "vit_large_patch16", "supervised"):
        "ViTDet's Cascade rows are MAE ViTs and IN-21k supervised hierarchical backbones; none for a plain ViT-L",
    # OpenCLIP's towers (pretrain.formats.clip, label openclip): its model zoo reports zero-shot accuracy only.
    **{(task, backbone, "openclip"): "OpenCLIP's README reports its towers' zero-shot ImageNet accuracy; no k-NN or "
                                     "linear-probe number of the released towers is entered here"
       for task in ("knn", "imagenet_linear")
       for backbone in ("vit_base_patch32", "vit_base_patch16", "vit_large_patch14", "vit_huge_patch14")},
    # MoCo Table 6's dense pose column: not supported here (docs/ladder.md), so no run can produce it.
    ("coco_densepose", "resnet50", "moco_v1"):
        "not supported: detectron2's DensePose project (the detectron2-densepose package) is on no package "
        "registry and installs only from a detectron2 source checkout, whose detectron2 it pins by git URL",
}


def published_for(task: str, backbone: str, pretrain: str) -> List[Published]:
    """The published rows of a run's label (task, backbone, pretraining)."""
    return [p for p in PUBLISHED if (p.task, p.backbone, p.pretrain) == (task, backbone, pretrain)]


# ----------------------------------------------------------------- the papers' ablations
@dataclass(frozen=True)
class Series:
    """A paper's values across the points of one of its ablations (a study's reference series):
    ``values`` maps a study point's label (``transfer.ladder.study.point_label``) to the paper's number, for the
    ladder rung ``rung`` and its metric. ``checked``: re-read against the paper's table for this entry;
    False marks values entered from the paper that no one has re-checked here."""
    name: str
    source: str
    rung: str
    metric: str
    values: Dict[str, float]
    checked: bool = False


_T1 = MAE_PAPER + ", Table 1 (ViT-L/16, 800 epochs)"
_T2 = MAE_PAPER + ", Table 2 (800 epochs, 128 TPU-v3 cores):"
# Table 2's points (configs/studies/mae_wallclock*.yaml): the encoder with mask tokens or MAE's, x decoder depth
_M8, _D8, _D1 = ("encoder_mask_tokens=true,decoder_depth=8", "encoder_mask_tokens=false,decoder_depth=8",
                 "encoder_mask_tokens=false,decoder_depth=1")


def _series(name, source, rung, metric, values, checked=False):
    return name, Series(name, source, rung, metric, values, checked)


STUDY_SERIES: Dict[str, Series] = dict([
    _series("mae_t1a_ft", _T1 + " (a) decoder depth, fine-tuning", "finetune", "top1",
            {"decoder_depth=1": 84.8, "decoder_depth=2": 84.9, "decoder_depth=4": 84.9, "decoder_depth=8": 84.9,
             "decoder_depth=12": 84.4}),
    _series("mae_t1a_lin", _T1 + " (a) decoder depth, linear probing", "linear", "top1",
            {"decoder_depth=1": 65.5, "decoder_depth=2": 70.0, "decoder_depth=4": 71.9, "decoder_depth=8": 73.5,
             "decoder_depth=12": 73.3}),
    _series("mae_t1b_ft", _T1 + " (b) decoder width, fine-tuning", "finetune", "top1",
            {"decoder_embed_dim=128": 84.9, "decoder_embed_dim=256": 84.8, "decoder_embed_dim=512": 84.9,
             "decoder_embed_dim=768": 84.4, "decoder_embed_dim=1024": 84.3}),
    _series("mae_t1b_lin", _T1 + " (b) decoder width, linear probing", "linear", "top1",
            {"decoder_embed_dim=128": 69.1, "decoder_embed_dim=256": 71.3, "decoder_embed_dim=512": 73.5,
             "decoder_embed_dim=768": 73.1, "decoder_embed_dim=1024": 73.1}),
    _series("mae_t1c_ft", _T1 + " (c) mask token, fine-tuning", "finetune", "top1",
            {"encoder_mask_tokens=true": 84.2, "encoder_mask_tokens=false": 84.9}),
    _series("mae_t1c_lin", _T1 + " (c) mask token, linear probing", "linear", "top1",
            {"encoder_mask_tokens=true": 59.6, "encoder_mask_tokens=false": 73.5}),
    _series("mae_t1d_ft", _T1 + " (d) reconstruction target, fine-tuning (dVAE tokens: 85.3, not run here)",
            "finetune", "top1", {"target=pixel": 84.9, "target=norm_pixel": 85.4, "target=pca": 84.6}),
    _series("mae_t1d_lin", _T1 + " (d) reconstruction target, linear probing (dVAE tokens: 71.6, not run here)",
            "linear", "top1", {"target=pixel": 73.5, "target=norm_pixel": 73.9, "target=pca": 72.3}),
    _series("mae_t1e_ft", _T1 + " (e) data augmentation, fine-tuning", "finetune", "top1",
            {"augmentation=none": 84.0, "augmentation=crop_fixed": 84.7, "augmentation=crop_rand": 84.9,
             "augmentation=crop_color": 84.3}),
    _series("mae_t1e_lin", _T1 + " (e) data augmentation, linear probing", "linear", "top1",
            {"augmentation=none": 65.7, "augmentation=crop_fixed": 73.1, "augmentation=crop_rand": 73.5,
             "augmentation=crop_color": 71.9}),
    _series("mae_t1f_ft", _T1 + " (f) mask sampling, fine-tuning", "finetune", "top1",
            {"mask_sampling=random,mask_ratio=0.75": 84.9, "mask_sampling=block,mask_ratio=0.5": 83.9,
             "mask_sampling=block,mask_ratio=0.75": 82.8, "mask_sampling=grid,mask_ratio=0.75": 84.0}),
    _series("mae_t1f_lin", _T1 + " (f) mask sampling, linear probing", "linear", "top1",
            {"mask_sampling=random,mask_ratio=0.75": 73.5, "mask_sampling=block,mask_ratio=0.5": 72.3,
             "mask_sampling=block,mask_ratio=0.75": 63.9, "mask_sampling=grid,mask_ratio=0.75": 66.0}),
    _series("mae_fig9_ft", MAE_PAPER + ", Figure 9 / Sec. 5 text (ViT-L/16): one tuned block, 73.5 -> 81.0; the "
            "other points are a plot only", "finetune", "top1", {"tune_blocks=1": 81.0}),
    _series("moco_momentum_lin", MOCO_PAPER + ", Sec. 4.1 momentum table (R-50, K = 4096, linear)", "linear",
            "top1", {"momentum=0.9": 55.2, "momentum=0.99": 57.8, "momentum=0.999": 59.0, "momentum=0.9999": 58.9}),
    # MAE Table 2: pretraining wall-clock (800 epochs, 128 TPU-v3 cores, TensorFlow) and its speed-up against the
    # encoder with mask tokens, decoder depth 8. Rung "pretrain": the pretraining's own measures, not a rung's.
    _series("mae_t2_vitl_speedup", _T2 + " ViT-L/16, speed-up against the encoder with [M], decoder depth 8",
            "pretrain", "speedup", {_M8: 1.0, _D8: 2.8, _D1: 3.7}),
    _series("mae_t2_vitl_hours", _T2 + " ViT-L/16, wall-clock hours", "pretrain", "hours",
            {_M8: 42.4, _D8: 15.4, _D1: 11.6}),
    _series("mae_t2_vitl_ft", _T2 + " ViT-L/16, fine-tuning (as Table 1a and 1c)", "finetune", "top1",
            {_M8: 84.2, _D8: 84.9, _D1: 84.8}),
    _series("mae_t2_vith_speedup", _T2 + " ViT-H/14, speed-up against the encoder with [M], decoder depth 8 "
            "(whose 119.6 h is the paper's estimate, not a full run)", "pretrain", "speedup",
            {_M8: 1.0, _D8: 3.5, _D1: 4.1}),
    _series("mae_t2_vith_hours", _T2 + " ViT-H/14, wall-clock hours (119.6 estimated)", "pretrain", "hours",
            {_M8: 119.6, _D8: 34.5, _D1: 29.3}),
])
