# Tiny UperNet on a published ViT that mmseg's MAE backbone cannot hold (DINOv2 with registers / SwiGLU,
# CLIP's ln_pre + QuickGELU, I-JEPA without a class token, BEiT): MAETimmViT builds the checkpoint's own timm
# network (transfer/segmentation/timm_vit.py), so --checkpoint PATH is required; its shape and options come
# from the file. The widths and depth here are the tests' tiny 4-block files' (128); tools/train_seg.py fits
# them to the file (width in the backbone, neck and heads, out_indices at the same relative depths, layer decay
# over its blocks: transfer.segmentation.runner.fit_to_checkpoint). ADE20K at 64x64 crops, 40 iterations on a
# CPU, the ViT-B recipe's four maps (all 4 blocks here) -> Feature2Pyramid (x4, x2, x1, x0.5 of a stride-14/16
# map) -> UPerHead, AdamW with layer-wise lr decay over the blocks (the "MAE" in the class name and its layers.i
# names).
_base_ = ["./_base_/cpu_runtime.py", "./_base_/ade20k_64x64.py"]
custom_imports = dict(imports=["transfer.segmentation.vit", "transfer.segmentation.resnet",
                               "transfer.segmentation.datasets", "transfer.segmentation.timm_vit"],
                      allow_failed_imports=False)

crop_size = (64, 64)
num_classes = 150
embed_dims = 128
num_layers = 4
norm_cfg = dict(type="BN", requires_grad=True)
model = dict(
    type="EncoderDecoder",
    data_preprocessor=dict(type="SegDataPreProcessor", mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375],
                           bgr_to_rgb=True, pad_val=0, seg_pad_val=255, size=crop_size),
    backbone=dict(type="MAETimmViT", embed_dims=embed_dims, out_indices=(0, 1, 2, 3), img_size=crop_size,
                  drop_path_rate=0.1, init_cfg=None),
    neck=dict(type="Feature2Pyramid", embed_dim=embed_dims, rescales=[4, 2, 1, 0.5], norm_cfg=norm_cfg),
    decode_head=dict(type="UPerHead", in_channels=[embed_dims] * 4, in_index=[0, 1, 2, 3], pool_scales=(1, 2, 3, 6),
                     channels=64, dropout_ratio=0.1, num_classes=num_classes, norm_cfg=norm_cfg, align_corners=False,
                     loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0)),
    auxiliary_head=dict(type="FCNHead", in_channels=embed_dims, in_index=2, channels=32, num_convs=1,
                        concat_input=False, dropout_ratio=0.1, num_classes=num_classes, norm_cfg=norm_cfg,
                        align_corners=False,
                        loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=0.4)),
    train_cfg=dict(),
    test_cfg=dict(mode="slide", crop_size=crop_size, stride=(43, 43)))
optim_wrapper = dict(
    type="OptimWrapper",
    optimizer=dict(type="AdamW", lr=5e-4, betas=(0.9, 0.999), weight_decay=0.05),
    constructor="LearningRateDecayOptimizerConstructor",
    paramwise_cfg=dict(num_layers=num_layers, decay_rate=0.65, decay_type="layer_wise"))

sslkit_results = dict(task="ade20k_seg", backbone="vit_timm", pretrain=None)  # the backbone: the file's ViT, fitted
