"""ImageNet linear probing: MAE's protocol for ViTs (BN without affine, LARS, batch 16384), MoCo's for
ResNets (SGD, lr 30, batch 256)."""
from transfer.ladder.rung import ClassificationRung, Recipe, register

C = "configs/classification/"


@register
class Linear(ClassificationRung):
    name = "linear"
    order = 20
    data = "imagenet"
    metrics = {"imagenet_linear": "top1"}
    suites = ("quick", "standard")
    recipes = {
        "vit_base_patch16": Recipe(C + "mae_vit_base_linear.yaml", 32, 13,
                                   "90 epochs of 1.28 M, frozen encoder, ~2,500 img/s/GPU forward"),
        "vit_large_patch16": Recipe(C + "mae_vit_large_linear.yaml", 32, 40, "as ViT-B, ~3x the FLOPs"),
        "resnet50": Recipe(C + "moco_r50_linear.yaml", 8, 18, "100 epochs of 1.28 M, ~2,000 img/s/GPU, data-bound"),
        "vit_pico_patch8": Recipe(C + "mae_vit_pico_linear_cpu.yaml", basis="minutes on a CPU"),
        "resnet18": Recipe(C + "moco_r18_linear_cpu.yaml", basis="minutes on a CPU"),
    }
