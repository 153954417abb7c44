"""Pixel formats, and where the published recipes' initial checkpoints come from.

The pixel formats are functions because a LazyConfig keeps every dict it imports.

The checkpoints are the authors' files; ``tools/train_net.py`` converts them in
memory (or pass a file converted by ``tools/convert_checkpoint.py``, or the
project's own checkpoint, with ``--checkpoint``).
"""


def imagenet_rgb() -> dict:
    """RGB in 0-255, ImageNet mean / std: MAE, MoCo, DeiT, torchvision (the authors' detection configs)."""
    return dict(input_format="RGB", pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375])


def inception_rgb() -> dict:
    """RGB in 0-255, mean = std = 0.5 * 255: timm's 'augreg' ViTs (ImageNet-21k supervised)."""
    return dict(input_format="RGB", pixel_mean=[127.5, 127.5, 127.5], pixel_std=[127.5, 127.5, 127.5])


MAE = "https://dl.fbaipublicfiles.com/mae/pretrain/mae_pretrain_vit_{}.pth"  # base | large | huge (patch 14)
MOCO_V2 = "https://dl.fbaipublicfiles.com/moco/moco_checkpoints/moco_v2_800ep/moco_v2_800ep_pretrain.pth.tar"
TORCHVISION_R50 = "https://download.pytorch.org/models/resnet50-0676ba61.pth"  # IMAGENET1K_V1
DEIT_B = "https://dl.fbaipublicfiles.com/deit/deit_base_patch16_224-b5f2ef4d.pth"
TIMM_VIT_L_IN21K = ("https://huggingface.co/timm/vit_large_patch16_224.augreg_in21k_ft_in1k/resolve/main/"
                    "model.safetensors")
