"""PASCAL VOC 2012 semantic segmentation with mmseg's FCN on R-50, MoCo's recipe (He et al. 2019, Table 6):
trained on the augmented training set, mIoU over VOC's 21 classes on val."""
from transfer.ladder.rung import Recipe, SegmentationRung, register

M = "configs/mmseg/"


@register
class VOCSegmentation(SegmentationRung):
    name = "voc_seg"
    order = 61.5
    data = "voc"
    suites = ("moco_table6",)
    metrics = {"voc_seg": "mIoU"}
    # The MoCo paper has no ViT row for it (its Table 6 is R-50 only), hence no ViT recipe.
    recipes = {
        "resnet50": Recipe(M + "fcn_r50-d16-moco_4xb4-30k_voc12aug-513x513.py", 4, 7,
                           "FCN R50 (stride 16), 30k iterations x 16 at 513x513, ~0.2 s/iter on 4 GPUs "
                           "(estimate: a fifth of UperNet R50's FLOPs)"),
        "resnet18": Recipe(M + "tiny/fcn_r18_voc12aug-64x64.py", basis="minutes on a CPU"),
    }

    # The VOC2012 folder of VOCdevkit. The train_aug set is one list and one label folder: trainaug.txt is the
    # 10,582 images of VOC 2012 train and SBD train+val less VOC 2012 val (mmseg's
    # tools/dataset_converters/voc_aug.py writes it as aug.txt), SegmentationClassAug/ their label PNGs (SBD's
    # .mat files converted; 0..20, 255 unlabelled); val.txt and SegmentationClass/ are VOC's own.
    layout = ("JPEGImages/", "SegmentationClass/", "SegmentationClassAug/", "ImageSets/Segmentation/trainaug.txt",
              "ImageSets/Segmentation/val.txt")
    layout_hint = ("VOCdevkit/VOC2012 with SBD's augmented labels: JPEGImages/, SegmentationClass/, "
                   "SegmentationClassAug/, ImageSets/Segmentation/{trainaug,val}.txt; mmseg's "
                   "tools/dataset_converters/voc_aug.py makes SegmentationClassAug/ and the list (as aug.txt: "
                   "copy it to trainaug.txt)")

    def data_args(self, root):
        return ["--data-root", str(root)], "voc_seg"
