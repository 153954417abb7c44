# UperNet on a torchvision-stem ResNet-18 (ResNetEncoder), built as the R50 recipe: the four
# stages (strides 4..32) -> UPerHead (+ FCN auxiliary head on stage 3), SGD lr 0.01 momentum 0.9
# wd 5e-4. Plain BN (CPU, one process); the width is torchvision's, so MoCo / torchvision
# ResNet-18 checkpoints load. The leaf configs set the crop size and the classes.
norm_cfg = dict(type="BN", requires_grad=True)
model = dict(
    type="EncoderDecoder",
    data_preprocessor=dict(type="SegDataPreProcessor", mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375],
                           bgr_to_rgb=True, pad_val=0, seg_pad_val=255),
    backbone=dict(type="ResNetEncoder", depth=18, out_indices=(0, 1, 2, 3), norm_cfg=norm_cfg, init_cfg=None),
    decode_head=dict(type="UPerHead", in_channels=[64, 128, 256, 512], in_index=[0, 1, 2, 3], pool_scales=(1, 2, 3, 6),
                     channels=64, dropout_ratio=0.1, num_classes=150, norm_cfg=norm_cfg, align_corners=False,
                     loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0)),
    auxiliary_head=dict(type="FCNHead", in_channels=256, in_index=2, channels=32, num_convs=1, concat_input=False,
                        dropout_ratio=0.1, num_classes=150, norm_cfg=norm_cfg, align_corners=False,
                        loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=0.4)),
    train_cfg=dict(),
    test_cfg=dict(mode="whole"))
optim_wrapper = dict(type="OptimWrapper", optimizer=dict(type="SGD", lr=0.01, momentum=0.9, weight_decay=0.0005))
