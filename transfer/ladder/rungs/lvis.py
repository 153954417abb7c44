"""LVIS instance segmentation with detectron2, scored by LVIS's federated AP: MoCo's Table 6 (Mask R-CNN
R50-FPN on LVIS v0.5) and ViTDet's LVIS rows (ViT-B / ViT-L on LVIS v1)."""
from pathlib import Path
from typing import Optional

from pretrain.errors import DataError
from transfer.ladder.rung import DetectionRung, Recipe, from_checkpoint, register

D = "configs/detectron2/"
VERSIONS = ("v0.5", "v1")  # MoCo's Table 6 is v0.5, ViTDet's rows v1: different benchmarks, different tasks


@register
class Lvis(DetectionRung):
    name = "lvis"
    order = 63.6  # after the first six rungs, cheapest first: R-50 70 GPU-hours
    data = "lvis"
    suites = ("moco_table6",)
    metrics = {f"lvis_{v}_instance_seg": "mask_AP" for v in VERSIONS}
    table_metrics = ("mask_AP", "mask_AP50", "mask_AP75")  # MoCo's Table 6 columns
    recipes = {
        "vit_base_patch16": Recipe(D + "LVIS/mask_rcnn_vitdet_b_100ep.py", 64, 880,
                                   "ViTDet-B, 156,250 iterations x 64, 0.317 s/iter on 64 GPUs (ViTDet's README)"),
        "vit_large_patch16": Recipe(D + "LVIS/mask_rcnn_vitdet_l_100ep.py", 64, 1600,
                                    "ViTDet-L, 156,250 iterations x 64, 0.576 s/iter on 64 GPUs (ViTDet's README)"),
        "resnet50": Recipe(D + "LVIS/mask_rcnn_R_50_FPN_1x_moco.py", 8, 70,
                           "R50-FPN 1x, 90k iterations x 16, ~0.35 s/iter on 8 GPUs (estimate: COCO's FPN 1x "
                           "speed, 1230 classes)"),
        "vit_pico_patch8": Recipe(D + "tiny/mask_rcnn_vitdet_pico_lvis.py", basis="minutes on a CPU"),
        "resnet18": Recipe(D + "tiny/mask_rcnn_R_18_FPN_lvis.py", basis="minutes on a CPU"),
    }
    checkpoint_recipes = from_checkpoint(recipes, "vit_base_patch16", "vit_large_patch16", "vit_pico_patch8")

    layout = ("lvis_v0.5_train.json|lvis_v1_train.json", "lvis_v0.5_val.json|lvis_v1_val.json", "train2017/",
              "val2017/")
    layout_hint = ("LVIS's train and val jsons of one version beside COCO 2017's image folders (links will do): "
                   "lvis_v0.5_{train,val}.json (MoCo's Table 6) or lvis_v1_{train,val}.json (ViTDet's rows), "
                   "train2017/, val2017/")

    @staticmethod
    def version(root: Path) -> Optional[str]:
        """The LVIS version whose train and val jsons are both in ``root`` (v0.5 first: MoCo's Table 6)."""
        return next((v for v in VERSIONS if all((root / f"lvis_{v}_{s}.json").is_file() for s in ("train", "val"))),
                    None)

    def check_data(self, root):
        super().check_data(root)
        if self.version(root) is None:
            raise DataError(f"--data {self.data}={root}: the {self.name} rung needs the train and val json of one "
                            f"LVIS version ({self.layout_hint})")

    def data_args(self, root):
        version = self.version(root) or VERSIONS[0]
        return (["--train-dataset", f"lvis:{root / f'lvis_{version}_train.json'}:{root}",
                 "--test-dataset", f"lvis:{root / f'lvis_{version}_val.json'}:{root}"], f"lvis_{version}_instance_seg")
