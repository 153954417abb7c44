# UperNet + MoCo ResNet-50 on ADE20K: mmseg's UperNet R50 recipe
# (mmseg::upernet/upernet_r50_4xb4-80k_ade20k-512x512.py: 512x512 crops, 80k iterations,
# batch 16 = 4 GPUs x 4, SGD lr 0.01 momentum 0.9 wd 5e-4, poly decay, SyncBN, whole-image test)
# with the torchvision ResNet-50 (7x7 stem, ResNetEncoder) instead of mmseg's deep-stem
# ResNetV1c, initialised from a MoCo checkpoint (the authors' .pth.tar or the project's).
_base_ = ["mmseg::upernet/upernet_r50_4xb4-80k_ade20k-512x512.py", "./_base_/sslkit.py"]

model = dict(
    pretrained=None,
    backbone=dict(
        type="ResNetEncoder",
        init_cfg=dict(type="Pretrained", checkpoint="pretrained/moco_v2_800ep_pretrain.pth.tar")))

sslkit_results = dict(backbone="resnet50", pretrain="moco_v2")
