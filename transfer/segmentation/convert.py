"""``tools/convert_checkpoint.py SRC OUT --to mmseg``: MAE ViTs and MoCo / torchvision ResNets -> mmseg.

The output is a plain state dict that mmseg's own backbones load by name
(``MAE`` / ``ResNet`` with ``init_cfg=dict(type='Pretrained', checkpoint=OUT)``),
as do the project's ``MAEViTEncoder`` / ``ResNetEncoder`` (which also read the
unconverted files). The conversions themselves sit beside the encoders, in
``vit.py`` and ``resnet.py``; this module picks one and checks the result
against a freshly built mmseg backbone of the checkpoint's shape.
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

from pretrain.checkpoint import describe_state_dict, save_atomic, unwrap_state_dict
from transfer.convert import ConversionReport

__all__ = ["convert"]



def convert(source, output=None, allow_pickle: bool = False, img_size: Union[int, Tuple[int, int], None] = None,
            final_norm: bool = False, patch_size: Optional[int] = None, **_) -> ConversionReport:
    """Convert ``source`` (a path or a loaded checkpoint) to mmseg names; write ``output`` when all keys fit.

    ViTs: ``img_size`` resizes the absolute position table to that input size
    (default: keep the pretraining grid; the encoders resize when they load);
    ``final_norm`` keeps the final LayerNorm as mmseg's ``ln1``.
    """
    if patch_size is not None:
        raise ValueError("--patch-size is for detectron2's ViTDet; mmseg's MAE keeps the pretrained patch size")
    from transfer.segmentation.checkpoint import load_checkpoint_file

    raw = load_checkpoint_file(source, allow_pickle=allow_pickle) if not isinstance(source, dict) else source
    name = str(source) if not isinstance(source, dict) else "<dict>"
    if _family(raw, name) == "vit":
        sd, report = _convert_vit(raw, name, img_size, final_norm)
    else:
        sd, report = _convert_resnet(raw, name)
    if output and report.ok:
        report.output = str(save_atomic(sd, output))
    return report


def _family(raw, name: str) -> str:
    """vit | resnet: an mmseg file by its names, anything else by its backbone export."""
    from pretrain.backbones import read_backbone

    sd = unwrap_state_dict(raw)
    if describe_state_dict(sd) == "mmseg-vit":
        return "vit"
    if any(k.startswith("backbone.layer1.") for k in sd):  # a trained mmseg segmentor's ResNet
        return "resnet"
    return read_backbone(raw, path=name).family


def _convert_vit(raw, name, img_size, final_norm):
    from mmseg.models.backbones import MAE

    from pretrain.backbones import read_backbone
    from transfer.segmentation.vit import mmseg_vit_kwargs, vit_to_mmseg

    sd = unwrap_state_dict(raw)
    if describe_state_dict(sd) == "mmseg-vit":
        info = _mmseg_vit_info(sd)
    else:
        export = read_backbone(raw, path=name)
        info = {"arch": export.arch, **export.shape}
    kwargs = mmseg_vit_kwargs(info)
    heads = kwargs["num_heads"] or "?"
    kwargs["num_heads"] = kwargs["num_heads"] or 1  # shapes do not depend on it
    size = img_size or info["img_size"]
    size = (size, size) if isinstance(size, int) else tuple(size)
    grid = (size[0] // kwargs["patch_size"], size[1] // kwargs["patch_size"])
    # Built on the CPU (mmseg's MAE cannot be built on the meta device): seconds, even for ViT-H.
    target = MAE(img_size=size, init_values=1.0, final_norm=final_norm,
                 norm_cfg=dict(type="LN", eps=1e-6), **kwargs).state_dict()
    label = (f"mmseg MAE ({info.get('arch') or 'custom'}: {kwargs['embed_dims']} wide, {kwargs['num_layers']} "
             f"layers, {heads} heads, patch {kwargs['patch_size']}, grid {grid})")
    return vit_to_mmseg(raw, target, grid=grid if img_size else None, final_norm=final_norm, source=name,
                        target_name=label)


def _mmseg_vit_info(sd):
    """Shape of an mmseg-named ViT (heads from the relative position table, else width / 64)."""
    from transfer.segmentation.vit import _grid_of

    sd = {k[len("backbone."):] if k.startswith("backbone.") else k: v for k, v in sd.items()}
    w = sd["patch_embed.projection.weight"]
    table = sd.get("layers.0.attn.relative_position_bias_table")
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("layers."))
    return {"arch": None, "patch_size": w.shape[-1], "embed_dim": w.shape[0], "depth": depth,
            "num_heads": table.shape[1] if table is not None else None,  # not in the shapes otherwise
            "img_size": _grid_of(sd["pos_embed"])[0] * w.shape[-1],
            "mlp_ratio": sd["layers.0.ffn.layers.0.0.weight"].shape[0] / w.shape[0]}


def _convert_resnet(raw, name):
    from mmseg.models.backbones import ResNet

    from transfer.segmentation.resnet import resnet_backbone, resnet_depth, resnet_to_mmseg

    depth = resnet_depth(resnet_backbone(raw))
    target = ResNet(depth=depth, style="pytorch").state_dict()
    return resnet_to_mmseg(raw, target, source=name, target_name=f"mmseg ResNet (depth {depth}, torchvision stem)")
