"""ImageNet end-to-end fine-tuning: MAE's recipe (AdamW, layer decay, RandAug, mixup / cutmix)."""
from transfer.ladder.rung import ClassificationRung, Recipe, register

C = "configs/classification/"


@register
class Finetune(ClassificationRung):
    name = "finetune"
    order = 40
    data = "imagenet"
    metrics = {"imagenet_finetune": "top1"}
    suites = ("standard",)
    recipes = {
        "vit_base_patch16": Recipe(C + "mae_vit_base_finetune.yaml", 32, 90,
                                   "100 epochs of 1.28 M, ~400 img/s/GPU forward + backward"),
        "vit_large_patch16": Recipe(C + "mae_vit_large_finetune.yaml", 32, 160, "50 epochs, ~3x ViT-B's FLOPs"),
        "vit_pico_patch8": Recipe(C + "mae_vit_pico_finetune_cpu.yaml", basis="minutes on a CPU"),
    }
