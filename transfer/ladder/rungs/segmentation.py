"""ADE20K semantic segmentation with mmseg's UperNet: MAE's recipe for ViTs (Table 5), mmseg's for R-50; the published
ViTs mmseg's MAE backbone cannot hold take it with timm's network as the host (``checkpoint_recipes``)."""
from transfer.ladder.rung import Recipe, SegmentationRung, register

M = "configs/mmseg/"


@register
class Segmentation(SegmentationRung):
    name = "segmentation"
    order = 60
    data = "ade20k"
    suites = ("mae_transfer",)  # MAE Table 5
    metrics = {"ade20k_seg": "mIoU", "semantic_seg": "mIoU"}
    recipes = {
        "vit_base_patch16": Recipe(M + "upernet_mae-vit-b_8xb2-amp-160k_ade20k-512x512.py", 8, 125,
                                   "UperNet, 160k iterations x 16, ~0.35 s/iter on 8 GPUs (mmseg logs)"),
        "resnet50": Recipe(M + "upernet_r50-moco_4xb4-80k_ade20k-512x512.py", 4, 36,
                           "UperNet 80k x 16, ~0.4 s/iter on 4 GPUs (mmseg logs)"),
        # The demo's UperNet settings for the synthetic scenes.
        "vit_pico_patch8": Recipe("configs/demo/seg_vit.py", basis="minutes on a CPU"),
        "resnet18": Recipe("configs/demo/seg_r18.py", basis="minutes on a CPU"),
    }
    # The published ViTs (DINOv2, CLIP, BEiT, ...): the same recipes with timm's network of the checkpoint as the
    # host (MAETimmViT), the config fitted to the file's width and depth by tools/train_seg.py.
    checkpoint_recipes = {
        "vit_base_patch16": Recipe(M + "upernet_timm-vit-b_8xb2-amp-160k_ade20k-512x512.py", 8, 125,
                                   "UperNet, 160k iterations x 16, ~0.35 s/iter on 8 GPUs (MAE's ViT-B recipe: "
                                   "mmseg logs)"),
        "vit_pico_patch8": Recipe(M + "tiny/upernet_timm-vit_ade20k-64x64.py", basis="minutes on a CPU"),
    }

    layout = ("images/", "annotations/|labels/")
    layout_hint = "ADEChallengeData2016 (images/, annotations/) or the folder layout (images/, labels/, classes.txt)"

    def data_args(self, root):
        ade = (root / "images" / "validation").is_dir()
        return ["--data-root", str(root)], "ade20k_seg" if ade else "semantic_seg"
