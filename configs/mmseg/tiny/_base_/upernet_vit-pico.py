# UperNet on a pico MAE ViT (patch 8, width 96, 4 blocks: MAE_ARCHS["mae_vit_pico_patch8"]),
# built as the ViT-B recipe: all 4 blocks' maps -> Feature2Pyramid -> UPerHead, AdamW with
# layer-wise lr decay 0.65, drop path 0.1, sliding-window test. Plain BN (CPU, one process).
# The leaf configs set what depends on the data: crop size (= the ViT's img_size) and classes.
# With patch 8 the maps are at stride 8, so the pyramid rescales are (x2, x1, x0.5, x0.25)
# to give UPerHead strides 4..32 as ViT-B/16's (x4, x2, x1, x0.5) do.
norm_cfg = dict(type="BN", requires_grad=True)
model = dict(
    type="EncoderDecoder",
    data_preprocessor=dict(type="SegDataPreProcessor", mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375],
                           bgr_to_rgb=True, pad_val=0, seg_pad_val=255),
    backbone=dict(type="MAEViTEncoder", patch_size=8, embed_dims=96, num_layers=4,
                  num_heads=3, mlp_ratio=4, out_indices=(0, 1, 2, 3), drop_path_rate=0.1, init_cfg=None),
    neck=dict(type="Feature2Pyramid", embed_dim=96, rescales=[2, 1, 0.5, 0.25], norm_cfg=norm_cfg),
    decode_head=dict(type="UPerHead", in_channels=[96, 96, 96, 96], in_index=[0, 1, 2, 3], pool_scales=(1, 2, 3, 6),
                     channels=64, dropout_ratio=0.1, num_classes=150, norm_cfg=norm_cfg, align_corners=False,
                     loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0)),
    auxiliary_head=dict(type="FCNHead", in_channels=96, in_index=2, channels=32, num_convs=1, concat_input=False,
                        dropout_ratio=0.1, num_classes=150, norm_cfg=norm_cfg, align_corners=False,
                        loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=0.4)),
    train_cfg=dict(),
    test_cfg=dict(mode="slide"))  # crop_size / stride: in the leaf configs, with the crop size
optim_wrapper = dict(
    type="OptimWrapper",
    optimizer=dict(type="AdamW", lr=5e-4, betas=(0.9, 0.999), weight_decay=0.05),
    constructor="LearningRateDecayOptimizerConstructor",
    paramwise_cfg=dict(num_layers=4, decay_rate=0.65, decay_type="layer_wise"))
