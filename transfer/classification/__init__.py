"""ImageNet-protocol evaluation: MAE linear probing and fine-tuning, MoCo linear classification.

``tools/train_cls.py CONFIG`` runs a protocol named by the config (``mae_linear``,
``mae_finetune``, ``moco_linear``); ``ClassificationTrainer`` is the same from Python.
Models are timm's ``VisionTransformer`` and torchvision's ResNets with the papers'
heads; pretrained weights enter as the backbone export (``pretrain.backbones.read_backbone``),
so every pretraining method's files and the supervised ones (timm / DeiT / torchvision) work.

Modules: ``config`` (schemas), ``vit`` / ``resnet`` (models, weight loading, layer-wise
lr decay), ``data`` (folders, timm augmentations, mixup), ``protocols``
(the registry), ``engine`` (loop, evaluation, checkpoints, results).
"""
import importlib

_EXPORTS = {
    "load_cls_config": "config", "PROTOCOL_SCHEMAS": "config", "PROTOCOLS": "protocols",
    "build_optimizer": "protocols", "layer_id_for_vit": "vit",
    "param_groups_layer_decay": "vit", "ClassificationTrainer": "engine",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):  # torch, timm and the data stack load on first use, not on import
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
