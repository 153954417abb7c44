# FCN + MoCo ResNet-50 on PASCAL VOC 2012 semantic segmentation, MoCo's recipe (He et al. 2019, Table 6 and
# its appendix): train on train_aug2012 (VOC 2012 train with SBD's labels, 10,582 images) for 30k iterations
# at batch 16 (4 GPUs x 4), 513x513 crops of the image rescaled by a random ratio in [0.5, 2.0] with
# horizontal flips (no photometric distortion: the paper names none), SGD lr 0.003 multiplied by 0.1 at
# 70% and 90% of training, whole-image test on val2012 (1,449 images), mIoU over the 21 classes.
# Data: --data-root is the VOC2012 folder (JPEGImages/, SegmentationClass/, SegmentationClassAug/,
# ImageSets/Segmentation/{trainaug,val}.txt; transfer/ladder/rungs/voc_seg.py says how to get them).
_base_ = ["./_base_/fcn_r50-d16.py"]

dataset_type = "PascalVOCDataset"
data_root = "data/VOCdevkit/VOC2012"  # tools/train_seg.py --data-root
crop_size = (513, 513)
train_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadAnnotations"),
    # VOC images are at most 500 px on their long side (nearly all exactly 500): fitting them in 500r x 500r
    # is the paper's "random scaling by a ratio r in [0.5, 2.0]" of the original image.
    dict(type="RandomResize", scale=(500, 500), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type="RandomCrop", crop_size=crop_size),  # smaller images are padded to the crop (label 255: ignored)
    dict(type="RandomFlip", prob=0.5),
    dict(type="PackSegInputs"),
]
test_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadAnnotations"),
    dict(type="PackSegInputs"),
]
train_dataloader = dict(
    batch_size=4, num_workers=4, persistent_workers=True, sampler=dict(type="InfiniteSampler", shuffle=True),
    dataset=dict(type=dataset_type, data_root=data_root, pipeline=train_pipeline,
                 data_prefix=dict(img_path="JPEGImages", seg_map_path="SegmentationClassAug"),
                 ann_file="ImageSets/Segmentation/trainaug.txt"))
val_dataloader = dict(
    batch_size=1, num_workers=4, persistent_workers=True, sampler=dict(type="DefaultSampler", shuffle=False),
    dataset=dict(type=dataset_type, data_root=data_root, pipeline=test_pipeline,
                 data_prefix=dict(img_path="JPEGImages", seg_map_path="SegmentationClass"),
                 ann_file="ImageSets/Segmentation/val.txt"))
test_dataloader = val_dataloader

model = dict(data_preprocessor=dict(size=crop_size), decode_head=dict(num_classes=21))
optim_wrapper = dict(optimizer=dict(lr=0.003))
max_iters = 30000
param_scheduler = [dict(type="MultiStepLR", by_epoch=False, begin=0, end=max_iters, gamma=0.1,
                        milestones=[int(0.7 * max_iters), int(0.9 * max_iters)])]
train_cfg = dict(type="IterBasedTrainLoop", max_iters=max_iters, val_interval=max_iters)
val_cfg = dict(type="ValLoop")
test_cfg = dict(type="TestLoop")
default_hooks = dict(
    logger=dict(type="LoggerHook", interval=50, log_metric_by_epoch=False),
    checkpoint=dict(type="CheckpointHook", by_epoch=False, interval=3000, max_keep_ckpts=2))

sslkit_results = dict(task="voc_seg", backbone="resnet50", pretrain="moco_v1")
