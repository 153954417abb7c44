"""Weighted kNN on the frozen backbone's global features (k = 20, T = 0.07: InstDisc / DINO's protocol)."""
from transfer.ladder.rung import FrozenFeatureRung, Recipe, register

_CPU = Recipe(basis="minutes on a CPU", args=("--img-size", "64", "--batch", "64"))


@register
class KNN(FrozenFeatureRung):
    name = "knn"
    order = 10
    tool = "tools/knn_eval.py"
    data = "imagenet"
    metrics = {"knn": "top1"}
    suites = ("quick", "standard")
    resume_flag = None  # one pass over the features: nothing to resume
    recipes = {
        "vit_base_patch16": Recipe(gpus=1, gpu_hours=0.2, basis="1.33 M images, one forward each, ~2,000 img/s (bf16)"),
        "vit_large_patch16": Recipe(gpus=1, gpu_hours=0.6, basis="as ViT-B, ~3x the FLOPs"),
        "resnet50": Recipe(gpus=1, gpu_hours=0.2, basis="1.33 M images, data-bound"),
        "vit_pico_patch8": _CPU,
        "resnet18": _CPU,
    }

    layout = ("train/", "val/")
    layout_hint = "class folders: train/<class>/*.jpg, val/<class>/"

    def data_args(self, root):
        return ["--train", str(root / "train"), "--val", str(root / "val")], "knn"
