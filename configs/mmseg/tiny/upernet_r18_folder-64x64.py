# Tiny UperNet + ResNet-18 (torchvision stem) on a folder of images + label PNGs
# (SegFolderDataset; the heads follow its class list), 64x64 crops, 40 iterations on a CPU.
# Pretrained: --checkpoint PATH (a MoCo or torchvision ResNet-18 checkpoint); default: random init.
_base_ = ["./_base_/cpu_runtime.py", "./_base_/folder_64x64.py", "./_base_/upernet_r18.py"]

crop_size = (64, 64)
num_classes = 6
model = dict(
    data_preprocessor=dict(size=crop_size),
    decode_head=dict(num_classes=num_classes),
    auxiliary_head=dict(num_classes=num_classes))

sslkit_results = dict(task="semantic_seg", backbone="resnet18", pretrain="moco_v2")
