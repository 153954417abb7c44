# The demo's segmentation transfer for the MAE ViT-pico/8 (tools/demo.py): the tiny UperNet
# on the synthetic scenes (AdamW with layer-wise decay, as the ViT-B recipe), batch 8, and
# flips only: the scenes are already crop-sized, and the tiny config's 0.5-2x rescaling and
# photometric distortion slow learning down more than a few hundred steps can afford.
_base_ = ["../mmseg/tiny/upernet_vit-pico_folder-64x64.py"]

train_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadAnnotations"),
    dict(type="RandomFlip", prob=0.5),
    dict(type="PackSegInputs"),
]
train_dataloader = dict(batch_size=8, dataset=dict(pipeline=train_pipeline))
# A few hundred steps for a head trained from scratch: 4x the tiny config's step size.
optim_wrapper = dict(optimizer=dict(lr=2e-3))
