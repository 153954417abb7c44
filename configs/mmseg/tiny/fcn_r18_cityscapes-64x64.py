# Tiny FCN + ResNet-18 (MoCo's FCN-16s structure) on Cityscapes, 64x64 crops, 40 iterations on a CPU: the
# CPU stand-in of fcn_r50-d16-moco_4xb4-90k_cityscapes-769x769.py (same data layout and evaluation, 19
# classes). Pretrained: --checkpoint PATH (a MoCo or torchvision ResNet-18 checkpoint); default: random init.
_base_ = ["./_base_/cpu_runtime.py", "./_base_/cityscapes_64x64.py", "./_base_/fcn_r18-d16.py"]

crop_size = (64, 64)
model = dict(data_preprocessor=dict(size=crop_size), decode_head=dict(num_classes=19))

sslkit_results = dict(task="cityscapes_seg", backbone="resnet18", pretrain="moco_v2")
