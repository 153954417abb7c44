"""Cityscapes instance segmentation with detectron2, MoCo's recipe (He et al. 2019, Table 6): Mask R-CNN R50-FPN
trained on the fine training set, scored by the Cityscapes instance AP (cityscapesscripts) on val."""
from transfer.ladder.rung import DetectionRung, Recipe, register

D = "configs/detectron2/"


@register
class CityscapesInstance(DetectionRung):
    name = "cityscapes_instance"
    order = 63.5  # after the first six rungs, cheapest first: R-50 21 GPU-hours
    data = "cityscapes"  # the folder the cityscapes_seg rung reads too (gtFine holds both label kinds)
    suites = ("moco_table6",)
    metrics = {"cityscapes_instance_seg": "mask_AP"}
    table_metrics = ("mask_AP", "mask_AP50")  # MoCo's Table 6 columns
    # The MoCo paper has no ViT row for it (its Table 6 is R-50 only), hence no ViT recipe.
    recipes = {
        "resnet50": Recipe(D + "Cityscapes/mask_rcnn_R_50_FPN_moco.py", 8, 21,
                           "R50-FPN, 24k iterations x 8 at 1024-2048 px, ~0.4 s/iter on 8 GPUs (estimate)"),
        "resnet18": Recipe(D + "tiny/mask_rcnn_R_18_FPN_cityscapes.py", basis="minutes on a CPU"),
    }

    layout = ("leftImg8bit/train/", "leftImg8bit/val/", "gtFine/train/", "gtFine/val/")
    layout_hint = ("Cityscapes: leftImg8bit/{train,val}/<city>/*_leftImg8bit.png and gtFine/{train,val}/<city>/"
                   "*_gtFine_{polygons.json,instanceIds.png,labelIds.png}, as the dataset is distributed")

    def data_args(self, root):
        return (["--train-dataset", f"cityscapes:{root}:train", "--test-dataset", f"cityscapes:{root}:val"],
                "cityscapes_instance_seg")
