# FCN + MoCo ResNet-50 on Cityscapes semantic segmentation, MoCo's recipe (He et al. 2019, Table 6 and its
# appendix): train on train_fine (2,975 images) for 90k iterations at batch 16 (4 GPUs x 4), 769x769 crops of
# the image rescaled by a random ratio in [0.5, 2.0] with horizontal flips (no photometric distortion: the
# paper names none), SGD lr 0.01 multiplied by 0.1 at 70% and 90% of training, whole-image test (2048x1024)
# on val (500 images), mIoU over the 19 evaluation classes (mmseg's CityscapesDataset and IoUMetric).
# Data: --data-root is the Cityscapes folder (leftImg8bit/{train,val}/<city>/, gtFine/{train,val}/<city>/
# with *_gtFine_labelTrainIds.png; transfer/ladder/rungs/cityscapes_seg.py says how to make them).
_base_ = ["./_base_/fcn_r50-d16.py"]

dataset_type = "CityscapesDataset"
data_root = "data/cityscapes"  # tools/train_seg.py --data-root
crop_size = (769, 769)
train_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadAnnotations"),
    # Every Cityscapes image is 2048x1024: this is the paper's random scaling of the original by r in [0.5, 2].
    dict(type="RandomResize", scale=(2048, 1024), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type="RandomCrop", crop_size=crop_size),
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
                 data_prefix=dict(img_path="leftImg8bit/train", seg_map_path="gtFine/train")))
val_dataloader = dict(
    batch_size=1, num_workers=4, persistent_workers=True, sampler=dict(type="DefaultSampler", shuffle=False),
    dataset=dict(type=dataset_type, data_root=data_root, pipeline=test_pipeline,
                 data_prefix=dict(img_path="leftImg8bit/val", seg_map_path="gtFine/val")))
test_dataloader = val_dataloader

model = dict(data_preprocessor=dict(size=crop_size), decode_head=dict(num_classes=19))
optim_wrapper = dict(optimizer=dict(lr=0.01))
max_iters = 90000
param_scheduler = [dict(type="MultiStepLR", by_epoch=False, begin=0, end=max_iters, gamma=0.1,
                        milestones=[int(0.7 * max_iters), int(0.9 * max_iters)])]
train_cfg = dict(type="IterBasedTrainLoop", max_iters=max_iters, val_interval=max_iters)
val_cfg = dict(type="ValLoop")
test_cfg = dict(type="TestLoop")
default_hooks = dict(
    logger=dict(type="LoggerHook", interval=50, log_metric_by_epoch=False),
    checkpoint=dict(type="CheckpointHook", by_epoch=False, interval=9000, max_keep_ckpts=2))

sslkit_results = dict(task="cityscapes_seg", backbone="resnet50", pretrain="moco_v1")
