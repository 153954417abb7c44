"""Self-supervised pretraining: MAE (``pretrain.mae``) and MoCo (``pretrain.moco``).

Importing the package is cheap; submodules import torch/timm when used.
"""
__version__ = "0.1.0"
