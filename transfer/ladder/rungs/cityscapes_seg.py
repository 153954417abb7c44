"""Cityscapes semantic segmentation with mmseg's FCN on R-50, MoCo's recipe (He et al. 2019, Table 6):
trained on train_fine, mIoU over Cityscapes' 19 evaluation classes on val."""
from transfer.ladder.rung import Recipe, SegmentationRung, register

M = "configs/mmseg/"


@register
class CityscapesSegmentation(SegmentationRung):
    name = "cityscapes_seg"
    order = 62.5
    data = "cityscapes"  # the folder the cityscapes_instance rung reads too (gtFine holds both label kinds)
    suites = ("moco_table6",)
    metrics = {"cityscapes_seg": "mIoU"}
    # The MoCo paper has no ViT row for it (its Table 6 is R-50 only), hence no ViT recipe.
    recipes = {
        "resnet50": Recipe(M + "fcn_r50-d16-moco_4xb4-90k_cityscapes-769x769.py", 4, 36,
                           "FCN R50 (stride 16), 90k iterations x 16 at 769x769, ~0.35 s/iter on 4 GPUs "
                           "(estimate: 2.25x the pixels of the VOC recipe's crops)"),
        "resnet18": Recipe(M + "tiny/fcn_r18_cityscapes-64x64.py", basis="minutes on a CPU"),
    }

    # The labels are the 19 train ids (255: ignored) that cityscapesscripts' createTrainIdLabelImgs (or mmseg's
    # tools/dataset_converters/cityscapes.py) writes next to gtFine's own files.
    layout = ("leftImg8bit/train/", "leftImg8bit/val/", "gtFine/train/", "gtFine/val/")
    layout_hint = ("Cityscapes: leftImg8bit/{train,val}/<city>/*_leftImg8bit.png and gtFine/{train,val}/<city>/"
                   "*_gtFine_labelTrainIds.png (made by cityscapesscripts' createTrainIdLabelImgs or mmseg's "
                   "tools/dataset_converters/cityscapes.py)")

    def data_args(self, root):
        return ["--data-root", str(root)], "cityscapes_seg"
