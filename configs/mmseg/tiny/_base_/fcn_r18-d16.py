# MoCo's FCN (configs/mmseg/_base_/fcn_r50-d16.py) on a torchvision-stem ResNet-18 (ResNetEncoder), for CPUs:
# conv5 at dilation 2 and stride 1 (total stride 16), two 3x3 convolutions with BN and ReLU and a 1x1
# classifier, plain BN (one process), SGD momentum 0.9 wd 1e-4. The head's dilation is 1, not 6: the
# tiny configs' 64x64 crops give 4x4 maps at stride 16 (the recipe's 513 crops give 33x33). The leaf
# configs set the crop size, the classes and the lr.
norm_cfg = dict(type="BN", requires_grad=True)
model = dict(
    type="EncoderDecoder",
    data_preprocessor=dict(type="SegDataPreProcessor", mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375],
                           bgr_to_rgb=True, pad_val=0, seg_pad_val=255),
    backbone=dict(type="ResNetEncoder", depth=18, out_indices=(0, 1, 2, 3), strides=(1, 2, 2, 1),
                  dilations=(1, 1, 1, 2), norm_cfg=norm_cfg, init_cfg=None),
    decode_head=dict(type="FCNHead", in_channels=512, in_index=3, channels=32, num_convs=2, kernel_size=3,
                     dilation=1, concat_input=False, dropout_ratio=0.0, num_classes=21, norm_cfg=norm_cfg,
                     align_corners=False,
                     loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0)),
    train_cfg=dict(),
    test_cfg=dict(mode="whole"))
optim_wrapper = dict(type="OptimWrapper", optimizer=dict(type="SGD", lr=0.01, momentum=0.9, weight_decay=1e-4))
