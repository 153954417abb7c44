"""COCO instance segmentation with ViTDet's Cascade Mask R-CNN (detectron2's projects/ViTDet Cascade rows)."""
from transfer.ladder.rung import DetectionRung, Recipe, from_checkpoint, register

D = "configs/detectron2/"
# ViTDet's README: training time per iteration on 64 GPUs (batch 64); GPU-hours = iterations x time x 64 / 3600.
_BASIS = "{}, {:,} iterations x 64, {} s/iter on 64 GPUs (ViTDet's README)"


@register
class Cascade(DetectionRung):
    name = "cascade"
    order = 66.3
    data = "coco"
    metrics = {"coco_instance_seg_cascade": "mask_AP"}
    table_metrics = ("box_AP", "mask_AP")
    recipes = {
        "vit_base_patch16": Recipe(D + "COCO/cascade_mask_rcnn_vitdet_b_100ep.py", 64, 1190,
                                   _BASIS.format("Cascade ViTDet-B", 184375, 0.362)),
        "vit_large_patch16": Recipe(D + "COCO/cascade_mask_rcnn_vitdet_l_100ep.py", 64, 2110,
                                    _BASIS.format("Cascade ViTDet-L", 184375, 0.643)),
        "vit_huge_patch14": Recipe(D + "COCO/cascade_mask_rcnn_vitdet_h_75ep.py", 64, 2800,
                                   _BASIS.format("Cascade ViTDet-H (75 epochs)", 138281, 1.137)),
        "vit_pico_patch8": Recipe(D + "tiny/cascade_mask_rcnn_vitdet_pico.py", basis="minutes on a CPU"),
    }
    checkpoint_recipes = from_checkpoint(recipes, "vit_base_patch16", "vit_large_patch16", "vit_pico_patch8")

    layout = ("annotations/instances_train2017.json", "annotations/instances_val2017.json", "train2017/", "val2017/")
    layout_hint = "COCO 2017's layout"

    def data_args(self, root):
        ann = root / "annotations"
        return (["--train-json", str(ann / "instances_train2017.json"),
                 "--test-json", str(ann / "instances_val2017.json")], "coco_instance_seg_cascade")
