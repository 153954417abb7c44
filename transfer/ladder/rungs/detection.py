"""COCO instance segmentation with detectron2: ViTDet Mask R-CNN for ViTs, MoCo's R50-C4 2x for ResNets."""
from transfer.ladder.rung import DetectionRung, Recipe, from_checkpoint, register

D = "configs/detectron2/"


@register
class Detection(DetectionRung):
    name = "detection"
    order = 50
    data = "coco"
    suites = ("mae_transfer",)  # MAE Table 4
    metrics = {"coco_instance_seg": "mask_AP"}
    table_metrics = ("box_AP", "mask_AP")
    recipes = {
        "vit_base_patch16": Recipe(D + "COCO/mask_rcnn_vitdet_b_100ep.py", 64, 1030,
                                   "ViTDet-B, 184,375 iterations x 64, 0.314 s/iter on 64 GPUs (ViTDet's report)"),
        "vit_large_patch16": Recipe(D + "COCO/mask_rcnn_vitdet_l_100ep.py", 64, 2900, "as ViT-B, ~3x the FLOPs"),
        "resnet50": Recipe(D + "COCO/mask_rcnn_R_50_C4_2x_moco.py", 8, 200,
                           "R50-C4 2x, 180k iterations x 16, ~0.5 s/iter on 8 GPUs"),
        "vit_pico_patch8": Recipe(D + "tiny/mask_rcnn_vitdet_pico.py", basis="minutes on a CPU"),
        "resnet18": Recipe(D + "tiny/mask_rcnn_R_18_C4.py", basis="minutes on a CPU"),
    }
    checkpoint_recipes = from_checkpoint(recipes, "vit_base_patch16", "vit_large_patch16", "vit_pico_patch8")

    layout = ("annotations/instances_train2017.json", "annotations/instances_val2017.json", "train2017/", "val2017/")
    layout_hint = "COCO 2017's layout"

    def data_args(self, root):
        ann = root / "annotations"
        return (["--train-json", str(ann / "instances_train2017.json"),
                 "--test-json", str(ann / "instances_val2017.json")], "coco_instance_seg")
