"""The published ViTs mmseg's own backbones cannot hold, as mmseg encoders: timm's network inside mmseg.

mmseg's ``MAE`` backbone (``transfer.segmentation.vit.MAEViTEncoder``) has LayerScale and per-block relative
position bias, but no register tokens, no SwiGLU MLP, no norm before the blocks (CLIP's ``ln_pre``), only
nn.GELU, a fixed class token and LayerNorm eps; its BEiT backbone raises on BEiT's shared relative position
table (mmseg#3287) and builds its q / v biases, tables and LayerScale its own way. A backbone export
(``pretrain.backbones.read_backbone``) already names the timm network that computes it: timm's
``VisionTransformer`` with the export's options (DINOv2 with registers and SwiGLU, CLIP, I-JEPA, DINO, iBOT),
or timm's ``Beit`` (BEiT v1 / v2, data2vec: the shared table expanded into every block by the reader).
``MAETimmViT`` builds that network from the checkpoint and returns UperNet's maps:

* the blocks' outputs at ``out_indices`` (ViT-B: 3, 5, 7, 11, as MAE's mmseg recipe takes them), the prefix
  tokens (class token, registers) kept through the blocks and dropped from the maps; the final norm is not
  applied (the recipe's ``final_norm=False``): it is dropped by design and listed;
* any patch size (14 included): the input is padded to a multiple of the patch and the position table
  resampled to the grid at each forward (timm's ``dynamic_img_size``; BEiT: its tables resampled once to the
  configured ``img_size`` by timm's ``set_input_size``);
* every source tensor is used, dropped by design (heads, mask tokens: the reader's list; the final norm), or
  a mismatch that stops the run (``CheckpointFormatError``), in one report.

The modules keep mmseg's MAE names (``patch_embed``, ``cls_token``, ``pos_embed``, ``layers.i``) and the class
name holds "MAE": mmseg's ``LearningRateDecayOptimizerConstructor`` finds the blocks by those names
(``get_layer_id_for_vit``). The register tokens and CLIP's ``norm_pre`` get the rate it gives names it does not
know (the heads' full rate, not the embeddings' lowest): its name lists are fixed.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from mmengine.logging import print_log
from mmengine.model import BaseModule
from mmseg.registry import MODELS
from timm.models.vision_transformer import VisionTransformer

from pretrain.backbones import BackboneExport, read_backbone
from pretrain.checkpoint import CheckpointFormatError
from pretrain.errors import ConfigError
from transfer.beit import resample_beit  # shared with the classifiers
from transfer.convert import ConversionReport, compare_keys
from transfer.segmentation.checkpoint import load_checkpoint_file

__all__ = ["MAETimmViT", "build_timm_vit", "timm_vit_to_host"]


def build_timm_vit(export: BackboneExport, drop_path_rate: float = 0.0, img_size: Optional[int] = None) -> nn.Module:
    """The export's timm network, random weights: ``VisionTransformer`` with the export's options at its own image
    size (the position table resampled to each input's grid), or ``Beit`` for a BEiT export at ``img_size``
    (default: its own; its relative position tables are of that grid)."""
    if export.family != "vit":
        raise CheckpointFormatError(f"{export.provenance.source}: a {export.arch} ({export.provenance.layout}), "
                                    f"not a ViT: the ResNet configs (configs/mmseg/*r50*) take it")
    from transfer.backbone import export_network  # the frozen rungs' ViT: the same network

    # dynamic_img_pad: a crop not a multiple of the patch (64 px at patch 14) is padded at its right / bottom.
    return export_network(export, img_size, drop_path_rate, dynamic_img_pad=True)


def timm_vit_to_host(export: BackboneExport, target: Dict[str, torch.Tensor], source: str = "<dict>",
                     target_name: str = "MAETimmViT") -> Tuple[Dict[str, torch.Tensor], ConversionReport]:
    """An export's timm-named tensors under ``MAETimmViT``'s names (``blocks.i`` -> ``layers.i``), with the
    report: the reader's dropped keys and the final norm dropped by design; every other difference from
    ``target`` (a key it lacks, one it has and the file not, another shape) mismatched."""
    sd, dropped = {}, list(export.dropped)
    for k, v in export.state_dict.items():
        if k.startswith("norm."):  # the maps are taken before it (final_norm=False, as MAE's recipe)
            dropped.append(k)
        elif k.startswith("blocks."):
            sd["layers." + k[len("blocks."):]] = v
        else:
            sd[k] = v
    notes = list(export.notes)
    if any(k.startswith("norm.") for k in export.state_dict):
        notes.append("final norm dropped: the maps are the blocks' outputs (final_norm=False)")
    # BEiT's relative position index is a function of the grid (timm rebuilds it; the reader leaves it out).
    design, bad = compare_keys(sd, target, lambda k: k.endswith("relative_position_index"))
    report = ConversionReport(source, export.provenance.layout, target_name, converted=len(sd),
                              dropped=sorted(dropped), missing_by_design=design, mismatched=bad, notes=notes)
    return sd, report


@MODELS.register_module()
class MAETimmViT(BaseModule):
    """A backbone export's timm ViT (or BEiT) as an mmseg backbone; the network is the checkpoint's.

    ``init_cfg=dict(type='Pretrained', checkpoint=PATH)`` (what ``tools/train_seg.py --checkpoint`` sets) is
    required: the shape and options are read from PATH at build, its weights loaded at ``init_weights``.
    ``embed_dims``: the width the config's neck and heads take; ``tools/train_seg.py`` fits the config to the
    checkpoint first (``runner.fit_to_checkpoint``: widths, out_indices, layer decay); built directly, a
    checkpoint of another width is refused. ``img_size``: the crop size (BEiT's relative position tables are resampled to
    its grid; a ViT resamples its position table to each input's grid). ``out_indices``: the blocks whose
    outputs are the maps. ``variant``: the network of a checkpoint holding several (DINO's ``student``,
    I-JEPA's ``context``; None: the one its paper evaluates).
    """

    def __init__(self, embed_dims: int, out_indices: Sequence[int] = (3, 5, 7, 11), img_size=None,
                 drop_path_rate: float = 0.0, init_cfg: Optional[dict] = None, allow_pickle: bool = False,
                 variant: Optional[str] = None):
        if not (isinstance(init_cfg, dict) and init_cfg.get("type") == "Pretrained" and init_cfg.get("checkpoint")):
            raise ConfigError("MAETimmViT builds the network its checkpoint describes: give --checkpoint PATH "
                              "(a DINOv2, CLIP, BEiT, ... file); for a random plain ViT use a MAEViTEncoder config")
        super().__init__(init_cfg=init_cfg)
        path = init_cfg["checkpoint"]
        self.allow_pickle, self.variant = allow_pickle, variant
        export = read_backbone(load_checkpoint_file(path, allow_pickle=allow_pickle), path=str(path), variant=variant)
        if export.family == "vit" and export.shape["embed_dim"] != embed_dims:
            raise ConfigError(f"{path} is a ViT of width {export.shape['embed_dim']}, the config's neck and heads "
                              f"take {embed_dims}: run the config through tools/train_seg.py, which fits it to the "
                              f"checkpoint, or set its widths to {export.shape['embed_dim']}")
        self.beit = bool(export.shape.get("beit"))
        if self.beit:  # a square crop (mmseg's crop_size: (64, 64)); the tables are made for its grid
            size = export.shape["img_size"] if img_size is None else img_size
            if not isinstance(size, int):
                if len(set(size)) != 1:
                    raise ConfigError(f"MAETimmViT takes BEiT files at a square crop, not {tuple(size)}")
                size = int(size[0])
            self.img_size = size
        vit = build_timm_vit(export, drop_path_rate, self.img_size if self.beit else None)
        self.num_layers = len(vit.blocks)
        self.out_indices = [out_indices] if isinstance(out_indices, int) else list(out_indices)
        bad = [i for i in self.out_indices if not 0 <= i < self.num_layers]
        if bad:
            raise ConfigError(f"out_indices {bad} outside the {self.num_layers} blocks of {path}")
        if self.beit and getattr(vit, "rel_pos_bias", None) is not None:  # the reader expands it: never here
            raise CheckpointFormatError(f"{path}: a shared relative position table left unexpanded")
        # timm's modules under mmseg's MAE names (layer-wise lr decay), each used as timm's forward uses it.
        self.patch_embed, self.pos_drop = vit.patch_embed, vit.pos_drop
        self.cls_token, self.pos_embed = vit.cls_token, vit.pos_embed
        self.layers = vit.blocks
        if not self.beit:
            self.reg_token, self.patch_drop, self.norm_pre = vit.reg_token, vit.patch_drop, vit.norm_pre
            self.no_embed_class, self.dynamic_img_size = vit.no_embed_class, vit.dynamic_img_size
            self.num_prefix_tokens = vit.num_prefix_tokens
        else:
            self.num_prefix_tokens = 1
        self.source = str(path)
        self._export: Optional[BackboneExport] = export  # loaded at init_weights, then released

    # ------------------------------------------------------------------ loading
    def init_weights(self):
        """The checkpoint's weights (never mmengine's non-strict Pretrained loading); raises on a mismatch."""
        if self._export is None:
            self._export = read_backbone(load_checkpoint_file(self.source, allow_pickle=self.allow_pickle),
                                         path=self.source, variant=self.variant)
        self.load_export(self._export)
        self._export = None

    def load_export(self, export: BackboneExport) -> ConversionReport:
        """Load an export's tensors (copied into this module's parameters), printing the report."""
        if self.beit:
            export = resample_beit(export, self.img_size)
        sd, report = timm_vit_to_host(export, self.state_dict(), source=self.source,
                                      target_name=f"{type(self).__name__} ({export.arch}, {self.num_layers} blocks, "
                                                  f"{'timm Beit' if self.beit else 'timm VisionTransformer'})")
        print_log(report.format(), logger="current")
        if not report.ok:
            raise CheckpointFormatError(f"{self.source} does not fit {type(self).__name__}: {report.mismatched[:8]}")
        missing, _ = self.load_state_dict(sd, strict=False)
        assert set(missing) == set(report.missing_by_design), missing  # compare_keys saw the same keys
        return report

    # ------------------------------------------------------------------ forward
    def forward(self, inputs: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        if self.beit:
            x = self.patch_embed(inputs)
            hw = self.patch_embed.grid_size
            x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
            if self.pos_embed is not None:
                x = x + self.pos_embed
            x = self.pos_drop(x)
        else:
            x = self.patch_embed(inputs)  # NHWC (dynamic_img_size), padded to a multiple of the patch
            hw = x.shape[1:3]
            x = VisionTransformer._pos_embed(self, x)  # timm's own: prefix tokens, table resampled to the grid
            x = self.norm_pre(self.patch_drop(x))
        outs = []
        for i, block in enumerate(self.layers):
            x = block(x, shared_rel_pos_bias=None) if self.beit else block(x)
            if i in self.out_indices:
                out = x[:, self.num_prefix_tokens:]  # class token and registers: not in the maps
                outs.append(out.reshape(out.shape[0], hw[0], hw[1], -1).permute(0, 3, 1, 2).contiguous())
        return tuple(outs)
