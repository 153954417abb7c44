# As upernet_r50-moco_4xb4-80k_ade20k-512x512.py, on mmseg's 160k schedule
# (mmseg::upernet/upernet_r50_4xb4-160k_ade20k-512x512.py).
_base_ = ["mmseg::upernet/upernet_r50_4xb4-160k_ade20k-512x512.py", "./_base_/sslkit.py"]

model = dict(
    pretrained=None,
    backbone=dict(
        type="ResNetEncoder",
        init_cfg=dict(type="Pretrained", checkpoint="pretrained/moco_v2_800ep_pretrain.pth.tar")))

sslkit_results = dict(backbone="resnet50", pretrain="moco_v2")
