# PASCAL VOC 2012 with the augmented training set (mmseg's PascalVOCDataset: train on trainaug.txt with
# SBD's SegmentationClassAug labels, test on val.txt with SegmentationClass), the full recipe's pipeline
# scaled down 8x (500 px -> 64 px): random rescaling by [0.5, 2.0], 64x64 crops, flips.
dataset_type = "PascalVOCDataset"
data_root = "data/VOCdevkit/VOC2012"  # tools/train_seg.py --data-root
crop_size = (64, 64)
train_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadAnnotations"),
    dict(type="RandomResize", scale=(64, 64), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type="RandomCrop", crop_size=crop_size),
    dict(type="RandomFlip", prob=0.5),
    dict(type="PackSegInputs"),
]
test_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="Resize", scale=(64, 64), keep_ratio=True),
    dict(type="LoadAnnotations"),
    dict(type="PackSegInputs"),
]
train_dataloader = dict(
    batch_size=4, num_workers=0, sampler=dict(type="InfiniteSampler", shuffle=True),
    dataset=dict(type=dataset_type, data_root=data_root, pipeline=train_pipeline,
                 data_prefix=dict(img_path="JPEGImages", seg_map_path="SegmentationClassAug"),
                 ann_file="ImageSets/Segmentation/trainaug.txt"))
val_dataloader = dict(
    batch_size=1, num_workers=0, sampler=dict(type="DefaultSampler", shuffle=False),
    dataset=dict(type=dataset_type, data_root=data_root, pipeline=test_pipeline,
                 data_prefix=dict(img_path="JPEGImages", seg_map_path="SegmentationClass"),
                 ann_file="ImageSets/Segmentation/val.txt"))
test_dataloader = val_dataloader
