"""A linear head (BN + 1x1 conv) on the frozen backbone's patch features: DINOv2's linear ADE20K probe."""
from transfer.ladder.rung import FrozenFeatureRung, Recipe, register

# DINOv2's linear ADE20K probe: 40k x 16, evaluated at the end; short CPU runs need a larger lr.
_GPU_ARGS = ("--iters", "40000", "--batch", "16", "--crop", "512", "--eval-every", "0")
_CPU = Recipe(basis="minutes on a CPU", args=("--iters", "300", "--batch", "8", "--crop", "64", "--lr", "1e-2"))


@register
class DenseProbe(FrozenFeatureRung):
    name = "dense_probe"
    order = 30
    tool = "tools/dense_probe.py"
    data = "ade20k"
    metrics = {"ade20k_dense_probe": "mIoU", "dense_probe": "mIoU"}
    suites = ("quick", "standard")
    recipes = {
        "vit_base_patch16": Recipe(gpus=1, gpu_hours=0.5, basis="40k iterations x 16 crops of 512, frozen forward",
                                   args=_GPU_ARGS),
        "vit_large_patch16": Recipe(gpus=1, gpu_hours=1.5, basis="as ViT-B, ~3x the FLOPs", args=_GPU_ARGS),
        "resnet50": Recipe(gpus=1, gpu_hours=0.4, basis="40k x 16 at 512, frozen forward", args=_GPU_ARGS),
        "vit_pico_patch8": _CPU,
        "resnet18": _CPU,
    }

    layout = ("images/", "annotations/|labels/")
    layout_hint = "ADEChallengeData2016 (images/, annotations/) or the folder layout (images/, labels/, classes.txt)"

    def data_args(self, root):
        ade = (root / "images" / "validation").is_dir()  # ADE20K's layout, else the project's folder layout
        return (["--data-root", str(root), "--dataset", "ade20k" if ade else "folder"],
                "ade20k_dense_probe" if ade else "dense_probe")
