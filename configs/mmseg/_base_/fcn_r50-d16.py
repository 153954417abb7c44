# MoCo's semantic segmentation model (He et al. 2019, appendix, "Semantic segmentation on Cityscapes and VOC"),
# with mmseg's own FCN: the convolutional layers of R50 with the 3x3 convolutions of conv5 at dilation 2 and
# stride 1 (total stride 16, "FCN-16s"), then two 3x3 convolutions of 256 channels with BN and ReLU at
# dilation 6 (DeepLab's large field of view) and a 1x1 per-pixel classifier: FCNHead(num_convs=2,
# concat_input=False, dilation=6). No auxiliary head and no dropout: the paper's head has neither.
# The backbone is the torchvision ResNet-50 (7x7 stem, ResNetEncoder), which MoCo and torchvision files load.
# SGD momentum 0.9, weight decay 1e-4 (the paper's); the dataset configs set the lr, schedule and crop.
_base_ = ["mmseg::_base_/default_runtime.py", "./sslkit.py"]

norm_cfg = dict(type="SyncBN", requires_grad=True)
model = dict(
    type="EncoderDecoder",
    data_preprocessor=dict(type="SegDataPreProcessor", mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375],
                           bgr_to_rgb=True, pad_val=0, seg_pad_val=255),
    pretrained=None,
    backbone=dict(type="ResNetEncoder", depth=50, num_stages=4, out_indices=(0, 1, 2, 3),
                  strides=(1, 2, 2, 1), dilations=(1, 1, 1, 2), norm_cfg=norm_cfg, norm_eval=False,
                  init_cfg=dict(type="Pretrained", checkpoint="pretrained/moco_v1_200ep_pretrain.pth.tar")),
    decode_head=dict(type="FCNHead", in_channels=2048, in_index=3, channels=256, num_convs=2, kernel_size=3,
                     dilation=6, concat_input=False, dropout_ratio=0.0, num_classes=21, norm_cfg=norm_cfg,
                     align_corners=False,
                     loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0)),
    train_cfg=dict(),
    test_cfg=dict(mode="whole"))  # "inference is performed on the original image size"
optim_wrapper = dict(type="OptimWrapper", optimizer=dict(type="SGD", lr=0.01, momentum=0.9, weight_decay=1e-4),
                     clip_grad=None)
val_evaluator = dict(type="IoUMetric", iou_metrics=["mIoU"])
test_evaluator = val_evaluator
