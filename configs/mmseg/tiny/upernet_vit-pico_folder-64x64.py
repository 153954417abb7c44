# Tiny UperNet + MAE ViT-pico/8 on a folder of images + label PNGs
# (SegFolderDataset; the heads follow its class list), 64x64 crops, 40 iterations on a CPU.
# Pretrained: --checkpoint PATH (a mae_vit_pico_patch8 MAE checkpoint); default: random init.
_base_ = ["./_base_/cpu_runtime.py", "./_base_/folder_64x64.py", "./_base_/upernet_vit-pico.py"]

crop_size = (64, 64)
num_classes = 6
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(img_size=crop_size),
    decode_head=dict(num_classes=num_classes),
    auxiliary_head=dict(num_classes=num_classes),
    test_cfg=dict(crop_size=crop_size, stride=(43, 43)))

sslkit_results = dict(task="semantic_seg", backbone="vit_pico_patch8", pretrain="mae")
