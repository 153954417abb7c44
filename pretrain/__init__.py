"""Self-supervised pretraining: one file per method in ``pretrain.methods`` (MAE, MoCo v1/v2, MoCo v3),
the trainer they share (``pretrain.trainer``), and the backbone every method exports
(``pretrain.backbones``).

Importing the package is cheap; submodules import torch/timm when used.
"""
__version__ = "0.1.0"
