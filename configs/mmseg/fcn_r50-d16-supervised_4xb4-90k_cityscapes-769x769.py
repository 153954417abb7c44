# The supervised counterpart of fcn_r50-d16-moco_4xb4-90k_cityscapes-769x769.py: the same recipe, only the
# checkpoint differs (torchvision's ImageNet ResNet-50, IMAGENET1K_V1).
_base_ = ["./fcn_r50-d16-moco_4xb4-90k_cityscapes-769x769.py"]

model = dict(backbone=dict(init_cfg=dict(checkpoint="pretrained/resnet50-0676ba61.pth")))

sslkit_results = dict(pretrain="supervised")
