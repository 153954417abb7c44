# Any folder of images + label PNGs (SegFolderDataset: images/<split>/, labels/<split>/,
# classes.txt) at 64x64 crops, e.g. the synthetic scenes of pretrain.synthetic or CamVid.
# tools/train_seg.py --data-root / --classes / --ignore-label set the folder, and the
# heads' num_classes follow the class list.
dataset_type = "SegFolderDataset"
data_root = "data/synthetic_seg"  # tools/train_seg.py --data-root
crop_size = (64, 64)
train_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadAnnotations"),
    dict(type="RandomResize", scale=(256, 64), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type="RandomCrop", crop_size=crop_size, cat_max_ratio=0.75),
    dict(type="RandomFlip", prob=0.5),
    dict(type="PhotoMetricDistortion"),
    dict(type="PackSegInputs"),
]
test_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="Resize", scale=(256, 64), keep_ratio=True),
    dict(type="LoadAnnotations"),
    dict(type="PackSegInputs"),
]
train_dataloader = dict(
    batch_size=4, num_workers=0, sampler=dict(type="InfiniteSampler", shuffle=True),
    dataset=dict(type=dataset_type, data_root=data_root, split="train", pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1, num_workers=0, sampler=dict(type="DefaultSampler", shuffle=False),
    dataset=dict(type=dataset_type, data_root=data_root, split="val", pipeline=test_pipeline))
test_dataloader = val_dataloader
