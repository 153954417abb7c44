"""What MAE's Table 6 rungs share (He et al. 2021, Sec. 5 and A.5): end-to-end fine-tuning of the pretrained ViT
on another classification dataset, "following the setting in Table 9" (the ImageNet fine-tuning recipe) with the lr
and epochs "adjusted for each individual dataset", values the paper does not give. So each dataset's configs are
the ImageNet ones (configs/classification/mae_vit_{base,large,huge}_finetune.yaml: 224 px, ViT-B 100 epochs, L / H
50) with the dataset's classes and results task. ``inat.py`` and ``places.py`` register one rung per dataset."""
from __future__ import annotations

from typing import Dict

from transfer.ladder.rung import ClassificationRung, Recipe

C = "configs/classification/"

# backbone -> (config's size word, GPUs, epochs, images/s per GPU forward + backward at 224 px): the GPUs and
# epochs of the ImageNet recipe; the throughput of the ImageNet finetune rung's estimates (ViT-B ~400 img/s; its
# ViT-L 160 GPU-hours for 50 x 1.28 M images is ~110) and, for ViT-H/14, ~9.5x ViT-B's FLOPs per image.
FINETUNE = {
    "vit_base_patch16": ("base", 32, 100, 400),
    "vit_large_patch16": ("large", 32, 50, 110),
    "vit_huge_patch14": ("huge", 64, 50, 40),
}


def transfer_recipes(dataset: str, train_images: int) -> Dict[str, Recipe]:
    """The Table 6 recipes for one dataset (``configs/classification/mae_vit_<size>_finetune_<dataset>.yaml``),
    priced as training images x epochs / throughput, and the CPU-sized fine-tuning for the ViT-pico."""
    recipes = {
        backbone: Recipe(f"{C}mae_vit_{size}_finetune_{dataset}.yaml", gpus,
                         round(train_images * epochs / rate / 3600),
                         f"{epochs} epochs of {train_images / 1e6:.2f} M images, ~{rate} img/s/GPU forward + backward")
        for backbone, (size, gpus, epochs, rate) in FINETUNE.items()
    }
    # The ImageNet rung's CPU recipe: the same protocol at 64 px, its classes counted from the data's folders.
    recipes["vit_pico_patch8"] = Recipe(C + "mae_vit_pico_finetune_cpu.yaml", basis="minutes on a CPU")
    return recipes


class MAETransferRung(ClassificationRung):
    """One dataset of Table 6: a subclass declares ``name``, ``data``, ``order``, ``classes``, its one task in
    ``metrics`` and ``recipes = transfer_recipes(...)``; ``source`` says how the dataset's own release becomes
    class folders. ``tools/train_cls.py`` writes the task through ``data.task`` (also in the shipped configs, so
    that the CPU recipe, shared by every dataset, names it too)."""
    suites = ("mae_transfer",)
    table_metrics = ("top1_best",)  # the paper reports the best epoch's top-1, as for ImageNet
    classes: int  # the dataset's classes: model.num_classes of its configs
    source: str = ""

    @property
    def task(self) -> str:
        return next(iter(self.metrics))

    @property
    def layout_hint(self) -> str:
        return (f"class folders train/<class>/*.jpg and val/<class>/*.jpg, {self.classes} classes for the "
                f"shipped recipes ({self.source} written out as folders)")

    def data_args(self, root):
        return [f"data.path={root}", f"data.task={self.task}"], self.task
