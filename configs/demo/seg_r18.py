# The demo's segmentation transfer for ResNet-18 (tools/demo.py): the tiny UperNet on the
# synthetic scenes, with AdamW (a few hundred steps from a fresh head need an adaptive step
# size; SGD at lr 0.01-0.05 leaves every run predicting background) and batch 8.
_base_ = ["../mmseg/tiny/upernet_r18_folder-64x64.py"]

optim_wrapper = dict(_delete_=True, type="OptimWrapper",
                     optimizer=dict(type="AdamW", lr=1e-3, betas=(0.9, 0.999), weight_decay=0.01))
# The scenes are already crop-sized: flips only (the tiny config's 0.5-2x rescaling and
# photometric distortion slow learning down more than a few hundred steps can afford).
train_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadAnnotations"),
    dict(type="RandomFlip", prob=0.5),
    dict(type="PackSegInputs"),
]
train_dataloader = dict(batch_size=8, dataset=dict(pipeline=train_pipeline))
