"""COCO person keypoint detection with detectron2: MoCo's Keypoint R-CNN R50-FPN, 2x (MoCo paper, Table 6)."""
from transfer.ladder.rung import DetectionRung, Recipe, register

D = "configs/detectron2/"


@register
class Keypoints(DetectionRung):
    name = "keypoints"
    order = 63.7
    data = "coco"
    suites = ("moco_table6",)
    metrics = {"coco_keypoints": "keypoint_AP"}  # OKS AP on val2017 person keypoints
    table_metrics = ("keypoint_AP", "keypoint_AP50", "keypoint_AP75")  # Table 6's AP^kp, AP^kp_50, AP^kp_75
    recipes = {
        "resnet50": Recipe(D + "COCO/keypoint_rcnn_R_50_FPN_2x_moco.py", 8, 160,
                           "Keypoint R50-FPN 2x, 180k iterations x 16; detectron2's R50-FPN keypoint 0.315 s/iter "
                           "on 8 V100s, ~1.3x for SyncBN and the 4conv1fc head: ~0.4 s/iter"),
        "resnet18": Recipe(D + "tiny/keypoint_rcnn_R_18_FPN.py", basis="minutes on a CPU"),
    }

    layout = ("annotations/person_keypoints_train2017.json", "annotations/person_keypoints_val2017.json",
              "train2017/", "val2017/")
    layout_hint = "COCO 2017's layout with its person keypoint annotations"

    def data_args(self, root):
        ann = root / "annotations"
        return (["--train-json", str(ann / "person_keypoints_train2017.json"),
                 "--train-images", str(root / "train2017"),
                 "--test-json", str(ann / "person_keypoints_val2017.json"), "--test-images", str(root / "val2017")],
                "coco_keypoints")
