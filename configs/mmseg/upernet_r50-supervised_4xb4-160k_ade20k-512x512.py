# The supervised counterpart of upernet_r50-moco_4xb4-160k_ade20k-512x512.py: the same recipe,
# only the checkpoint differs (torchvision's ImageNet ResNet-50, IMAGENET1K_V1).
_base_ = ["./upernet_r50-moco_4xb4-160k_ade20k-512x512.py"]

model = dict(backbone=dict(init_cfg=dict(checkpoint="pretrained/resnet50-0676ba61.pth")))

sslkit_results = dict(pretrain="supervised")
