# UperNet on a published ViT that mmseg's MAE backbone cannot hold (DINOv2 with registers / SwiGLU, CLIP's
# ln_pre + QuickGELU + LayerNorm eps, I-JEPA without a class token, BEiT v1 / v2 and data2vec), on ADE20K:
# the MAE paper's ViT-B recipe (upernet_mae-vit-b_8xb2-amp-160k_ade20k-512x512.py, mmseg's own) with one
# difference, the host: MAETimmViT (transfer/segmentation/timm_vit.py) builds the checkpoint's own timm
# network inside mmseg, so --checkpoint PATH is required.
#   Same as MAE's: 512x512 crops, 160k iterations, batch 16 (8 GPUs x 2), AdamW lr 1e-4, weight decay 0.05,
#   layer-wise lr decay 0.65 (block i: lr * 0.65 ** (depth - i), embeddings 0.65 ** (depth + 1)), drop path 0.1,
#   mixed precision, maps of blocks 3/5/7/11 -> Feature2Pyramid (x4, x2, x1, x0.5) -> UPerHead, auxiliary FCN
#   head on the third map, sliding-window test (512 crops, stride 341).
#   The shape is the checkpoint's: the widths and depth below are ViT-B's, and tools/train_seg.py fits them to
#   the file before the build (transfer.segmentation.runner.fit_to_checkpoint, each change printed and kept in
#   the run's config): the width of the backbone, the neck and both heads, the maps at the same relative depths
#   (24 blocks: 7/11/15/23, as the ViT-L recipes), layer decay over its blocks, the input normalisation the
#   checkpoint was trained with (CLIP's own mean / std).
#   What the host itself changes: the blocks are the checkpoint's as pretrained. mmseg's MAE adds a relative
#   position bias to every block (zero at the start, trained) and LayerScale at 1.0 to blocks without it; here
#   there is neither unless the checkpoint has them (BEiT's tables, DINOv2's LayerScale). The absolute position
#   table is resampled to each input's grid (bicubic, timm's) instead of once to 32x32 at load; a patch-14 ViT
#   sees a 512 crop padded to 518 (a 37x37 grid).
_base_ = ["./upernet_mae-vit-b_8xb2-amp-160k_ade20k-512x512.py"]
custom_imports = dict(imports=["transfer.segmentation.vit", "transfer.segmentation.resnet",
                               "transfer.segmentation.datasets", "transfer.segmentation.timm_vit"],
                      allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,
        type="MAETimmViT",
        embed_dims=768,  # ViT-B's; the checkpoint's width after fitting (the neck and heads follow)
        out_indices=(3, 5, 7, 11),
        img_size=(512, 512),  # BEiT's relative position tables are resampled to this grid
        drop_path_rate=0.1,
        init_cfg=None))  # --checkpoint PATH: the network and its weights

sslkit_results = dict(backbone="vit_timm", pretrain=None)  # both the checkpoint's (its ViT, its label): fitted
