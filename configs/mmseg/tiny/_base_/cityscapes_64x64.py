# Cityscapes (mmseg's CityscapesDataset: leftImg8bit/<split>/<city>/*_leftImg8bit.png with
# gtFine/<split>/<city>/*_gtFine_labelTrainIds.png, 19 classes), the full recipe's pipeline scaled down
# 16x (2048x1024 -> 128x64): random rescaling by [0.5, 2.0], 64x64 crops, flips.
dataset_type = "CityscapesDataset"
data_root = "data/cityscapes"  # tools/train_seg.py --data-root
crop_size = (64, 64)
train_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadAnnotations"),
    dict(type="RandomResize", scale=(128, 64), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type="RandomCrop", crop_size=crop_size),
    dict(type="RandomFlip", prob=0.5),
    dict(type="PackSegInputs"),
]
test_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="Resize", scale=(128, 64), keep_ratio=True),
    dict(type="LoadAnnotations"),
    dict(type="PackSegInputs"),
]
train_dataloader = dict(
    batch_size=4, num_workers=0, sampler=dict(type="InfiniteSampler", shuffle=True),
    dataset=dict(type=dataset_type, data_root=data_root, pipeline=train_pipeline,
                 data_prefix=dict(img_path="leftImg8bit/train", seg_map_path="gtFine/train")))
val_dataloader = dict(
    batch_size=1, num_workers=0, sampler=dict(type="DefaultSampler", shuffle=False),
    dataset=dict(type=dataset_type, data_root=data_root, pipeline=test_pipeline,
                 data_prefix=dict(img_path="leftImg8bit/val", seg_map_path="gtFine/val")))
test_dataloader = val_dataloader
