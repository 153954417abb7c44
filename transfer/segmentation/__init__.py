"""mmsegmentation transfer: MAE ViTs and MoCo ResNets as mmseg encoders (UperNet on ADE20K).

The backbones are mmseg's own (``MAE``: the BEiT-style ViT with relative
position bias and layer scale behind the MAE paper's ADE20K number; ``ResNet``
with torchvision's stem); the project registers thin subclasses that read its
checkpoints, and converts weights into them:

* ``vit``: ``MAEViTEncoder`` + ``vit_to_mmseg`` (MAE / timm / mmseg ViT files);
* ``timm_vit``: ``MAETimmViT``, the published ViTs mmseg's ``MAE`` cannot compute (registers, SwiGLU, CLIP,
  no class token, BEiT) as the checkpoint's own timm network;
* ``resnet``: ``ResNetEncoder`` + ``resnet_to_mmseg`` (MoCo / torchvision files);
* ``convert``: ``tools/convert_checkpoint.py SRC OUT --to mmseg``;
* ``datasets``: ``SegFolderDataset``, any folder of images + label PNGs;
* ``checkpoint``: reading mmengine checkpoints under torch's weights-only loading;
* ``runner``: what ``tools/train_seg.py`` adds around mmengine's Runner
  (config edits, CPU fallbacks, ``results.json``).

Configs: ``configs/mmseg/`` (they import the modules above through
``custom_imports``). mmseg / mmcv / mmengine are imported when a submodule is
used, not by ``import transfer``.
"""
