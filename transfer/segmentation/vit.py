"""MAE ViTs as mmseg encoders: mmseg's own ``MAE`` backbone, loading the project's checkpoints.

mmseg's ``MAE`` (BEiT-derived) is the backbone behind the MAE paper's ADE20K
number (UperNet, 48.1 mIoU for ViT-B): a ViT with a relative position bias per
block (initialised at zero, since MAE pretrains without one) and layer scale.
``MAEViTEncoder`` is that class, unchanged in its forward, with two differences
of setup:

* layer scale starts at 1.0 (``init_values``): with gamma = 1 a block computes
  exactly what the pretrained timm block did; the paper's fine-tuning recipe
  (``mmseg::mae/...ade20k-512x512.py``) uses the same value;
* a ``Pretrained`` init_cfg is read through ``vit_to_mmseg``, so every ViT
  backbone export (``pretrain.backbones.read_backbone``: MAE and MoCo v3 files, the
  authors' or the project's, timm / DeiT ViTs) and already-converted mmseg files load, with a report that separates what is
  missing by design (relative position terms) from real mismatches, which
  raise. mmseg's own loader would load a MAE file with ``strict=False`` and,
  the names not matching, silently keep the random weights.

The qkv projection keeps its full bias: mmseg's MAE builds its layers with
``bias=True`` (unlike BEiT's q/v-only bias), so the conversion is a renaming.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
from mmengine.logging import print_log
from torch.utils.checkpoint import checkpoint
from mmseg.models.backbones import MAE
from mmseg.registry import MODELS

from pretrain.backbones import VIT_OPTIONS, read_backbone
from pretrain.checkpoint import CheckpointFormatError, describe_state_dict, strip_prefix, unwrap_state_dict
from pretrain.pos_embed import resize_pos_embed
from transfer.convert import ConversionReport, compare_keys
from transfer.segmentation.checkpoint import load_checkpoint_file

__all__ = ["MAEViTEncoder", "vit_to_mmseg", "mmseg_vit_kwargs", "RELATIVE_POSITION_KEYS"]

# timm block names -> mmseg MAE layer names (prefix of the rest of the key).
_BLOCK_NAMES: Tuple[Tuple[str, str], ...] = (
    ("norm1.", "ln1."),
    ("attn.qkv.", "attn.qkv."),
    ("attn.proj.", "attn.proj."),
    ("norm2.", "ln2."),
    ("mlp.fc1.", "ffn.layers.0.0."),
    ("mlp.fc2.", "ffn.layers.1."),
    ("ls1.gamma", "gamma_1"),  # timm layer scale (DeiT III ...), absent from MAE
    ("ls2.gamma", "gamma_2"),
)
# Target keys no ViT pretraining provides: trained from zero during transfer (MAE paper, A.4).
RELATIVE_POSITION_KEYS = ("attn.relative_position_bias_table", "attn.relative_position_index")


def _is_relative_position_key(key: str) -> bool:
    return key.endswith(RELATIVE_POSITION_KEYS)


def _timm_to_mmseg_names(sd: Dict[str, torch.Tensor], final_norm: bool) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """Rename a timm-named ViT encoder; returns (renamed, dropped by design).

    Keys with no mmseg counterpart are kept under their timm name so that the
    comparison with the target reports them as unexpected, not lost silently.
    """
    out, dropped = {}, []
    for k, v in sd.items():
        if k in ("cls_token", "pos_embed"):
            out[k] = v
        elif k.startswith("patch_embed.proj."):
            out["patch_embed.projection." + k[len("patch_embed.proj."):]] = v
        elif k.startswith("blocks."):
            _, i, rest = k.split(".", 2)
            new = next((f"layers.{i}.{dst}{rest[len(src):]}" for src, dst in _BLOCK_NAMES if rest.startswith(src)), k)
            out[new] = v
        elif k.startswith("norm."):
            if final_norm:  # mmseg names the optional final norm ``ln1``
                out["ln1." + k[len("norm."):]] = v
            else:
                dropped.append(k)
        else:
            out[k] = v
    return out, dropped


# Options of a published ViT (BackboneExport.shape) that mmseg's MAE cannot compute; the network the checkpoint
# describes is hosted as timm's (transfer.segmentation.timm_vit.MAETimmViT). Several are no tensor (QuickGELU,
# LayerNorm eps, a position table without the class row): a renaming would lose them silently.
MAE_UNHELD_OPTIONS = ("reg_tokens", "no_embed_class", "class_token", "mlp_layer", "pre_norm", "act_layer", "norm_eps",
                      "beit")


def unheld_options(export) -> List[str]:
    """A ViT export's options mmseg's MAE backbone has no place for, as mismatches naming the host that has."""
    options = export.vit_options() | {"beit": bool(export.shape.get("beit"))}
    unheld = {k: options[k] for k in MAE_UNHELD_OPTIONS if options[k] != VIT_OPTIONS.get(k, False)}
    return [f"options {unheld} (mmseg's MAE cannot compute them: a MAETimmViT config builds this checkpoint's timm "
            f"network, e.g. configs/mmseg/tiny/upernet_timm-vit_ade20k-64x64.py)"] if unheld else []


def _grid_of(pos_embed: torch.Tensor) -> Tuple[int, int]:
    side = int(round((pos_embed.shape[1] - 1) ** 0.5))
    return side, side


def vit_to_mmseg(
    checkpoint,
    target: Dict[str, torch.Tensor],
    grid: Optional[Tuple[int, int]] = None,
    final_norm: bool = False,
    source: str = "<dict>",
    target_name: str = "mmseg MAE",
    variant: Optional[str] = None,
) -> Tuple[Dict[str, torch.Tensor], ConversionReport]:
    """A MAE / timm-ViT / mmseg-ViT checkpoint as mmseg ``MAE`` backbone weights, with a report.

    ``target``: the state dict (or just tensors of the right shapes) of the
    backbone to fill; ``grid``: its patch grid, to which the absolute position
    table is resized (bicubic; ``None`` keeps the source's). Layer scale is set
    to 1 where the source has none, so the converted backbone computes what the
    source did. The relative position terms are left out: missing by design. ``variant``: the network of a
    checkpoint holding several (``read_backbone``'s).
    """
    try:
        raw = unwrap_state_dict(checkpoint)
    except CheckpointFormatError:  # no tensors at its top (DINO's teacher / student): a format of read_backbone's
        raw = {}
    kind = describe_state_dict(raw) if raw else None
    notes: List[str] = []
    layout = describe_state_dict(raw, verbose=True) if raw else None
    if kind == "mmseg-vit":  # already converted, or a whole mmseg segmentor
        if variant is not None:
            raise CheckpointFormatError(f"{source}: an mmseg ViT holds one network; variant={variant!r} applies "
                                        f"to training checkpoints (DINO, iBOT, DINOv2, I-JEPA)")
        sd = strip_prefix({k: v for k, v in raw.items() if k.startswith("backbone.")} or raw, "backbone.")
        dropped = sorted(k for k in raw if k.startswith(("decode_head.", "auxiliary_head.", "neck.")))
        sd = {k: v for k, v in sd.items() if not k.endswith("relative_position_index")}  # a function of the grid
        if grid is not None and "pos_embed" in sd and _grid_of(sd["pos_embed"]) != tuple(grid):
            old = tuple(sd["pos_embed"].shape)
            sd["pos_embed"] = resize_pos_embed(sd["pos_embed"], grid)
            notes.append(f"resized pos_embed {old} -> {tuple(sd['pos_embed'].shape)}")
    else:
        export = read_backbone(checkpoint, path=source, variant=variant)
        if export.family != "vit":
            raise CheckpointFormatError(f"expected a ViT checkpoint (MAE, MoCo v3, timm, DeiT, or mmseg's "
                                        f"'layers.0.attn.qkv.weight'), found {export.provenance.layout} ({export.arch})")
        unheld = unheld_options(export)
        encoder, dropped, notes = dict(export.state_dict), list(export.dropped), list(export.notes)
        layout = export.provenance.layout
        if grid is not None and "pos_embed" in encoder and _grid_of(encoder["pos_embed"]) != tuple(grid):
            old = tuple(encoder["pos_embed"].shape)
            encoder["pos_embed"] = resize_pos_embed(encoder["pos_embed"], grid)
            notes.append(f"resized pos_embed {old} -> {tuple(encoder['pos_embed'].shape)}")
        sd, dropped_norm = _timm_to_mmseg_names(encoder, final_norm)
        dropped += dropped_norm
        if dropped_norm:
            notes.append("final norm dropped: the four maps are taken before it (final_norm=False)")
        layers = sorted({k.split(".")[1] for k in sd if k.startswith("layers.")}, key=int)
        filled = 0
        for i in layers:
            width = sd[f"layers.{i}.ln1.weight"].shape[0] if f"layers.{i}.ln1.weight" in sd else None
            for gamma in ("gamma_1", "gamma_2"):
                if f"layers.{i}.{gamma}" not in sd and width is not None:
                    sd[f"layers.{i}.{gamma}"] = torch.ones(width)
                    filled += 1
        if filled:
            notes.append(f"layer scale set to 1 in {filled // 2} blocks (the source has none: identity)")
    design, bad = compare_keys(sd, target, _is_relative_position_key)
    if kind != "mmseg-vit":
        bad = unheld + bad  # first: the cause of the tensor mismatches that follow from it
    if any("relative_position_bias_table" in b and "shape" in b for b in bad):
        notes.append("relative position tables of another window size cannot be resized here; "
                     "use the image size they were trained at")
    report = ConversionReport(source, layout, target_name, converted=len(sd),
                              dropped=dropped, missing_by_design=design, mismatched=bad, notes=notes)
    return sd, report


def mmseg_vit_kwargs(info: Dict) -> Dict:
    """``MAEViTEncoder`` arguments for a ViT of this shape (a backbone export's ``shape``)."""
    ratio = info["mlp_ratio"]
    return dict(patch_size=info["patch_size"], embed_dims=info["embed_dim"], num_layers=info["depth"],
                num_heads=info["num_heads"], mlp_ratio=int(ratio) if float(ratio).is_integer() else ratio)


@MODELS.register_module()
class MAEViTEncoder(MAE):
    """mmseg's ``MAE`` ViT that loads MAE / timm / mmseg checkpoints (see the module docstring).

    ``init_cfg=dict(type='Pretrained', checkpoint=PATH)`` (or the segmentor's
    ``pretrained=PATH``) loads PATH at ``init_weights``; without it the
    backbone is initialised as mmseg's. ``out_indices=(3, 5, 7, 11)`` for ViT-B
    gives the four maps the Feature2Pyramid neck turns into a pyramid. The
    class name keeps "MAE" so that mmseg's layer-decay optimizer constructor
    assigns layer ids to its parameters. ``with_cp=True`` (mmseg's name for it in its other backbones;
    its MAE has none) checkpoints every layer: less activation memory for about a third more backbone
    compute, the same outputs and gradients.
    """

    def __init__(self, init_values: float = 1.0, norm_cfg: Optional[dict] = None,
                 out_indices: Sequence[int] = (3, 5, 7, 11), with_cp: bool = False, variant: Optional[str] = None,
                 **kwargs):
        super().__init__(init_values=init_values, norm_cfg=norm_cfg or dict(type="LN", eps=1e-6),
                         out_indices=list(out_indices) if not isinstance(out_indices, int) else out_indices,
                         **kwargs)
        bad = [i for i in self.out_indices if not 0 <= i < self.num_layers]
        if bad:
            raise ValueError(f"out_indices {bad} outside the {self.num_layers} layers of this ViT")
        self.with_cp = with_cp
        self.variant = variant  # the network of a checkpoint holding several (DINO's student ...)

    def forward(self, inputs):
        """mmseg's ``MAE.forward``; under ``with_cp`` each layer's activations are recomputed in the backward
        (non-reentrant checkpointing: drop path's random numbers are replayed)."""
        x, hw_shape = self.patch_embed(inputs)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1) + self.pos_embed
        outs = []
        for i, layer in enumerate(self.layers):
            x = checkpoint(layer, x, use_reentrant=False) if self.with_cp and torch.is_grad_enabled() else layer(x)
            if i == len(self.layers) - 1 and self.final_norm:
                x = self.norm1(x)
            if i in self.out_indices:
                out = x[:, 1:]
                outs.append(out.reshape(out.shape[0], hw_shape[0], hw_shape[1], -1).permute(0, 3, 1, 2).contiguous())
        return tuple(outs)

    def init_weights(self):
        cfg = self.init_cfg
        if not (isinstance(cfg, dict) and cfg.get("type") == "Pretrained"):
            return super().init_weights()
        self.init_cfg = None  # mmseg's random init first (what the checkpoint does not hold keeps it) ...
        try:
            super().init_weights()
        finally:
            self.init_cfg = cfg
        self.load_pretrained(cfg["checkpoint"])  # ... then the checkpoint

    def load_pretrained(self, path, allow_pickle: bool = False) -> ConversionReport:
        """Load a checkpoint file (any layout ``vit_to_mmseg`` reads); raises on a mismatch."""
        checkpoint = load_checkpoint_file(path, allow_pickle=allow_pickle)
        sd, report = vit_to_mmseg(checkpoint, self.state_dict(), grid=tuple(self.patch_shape),
                                  final_norm=self.final_norm, source=str(path), variant=self.variant,
                                  target_name=f"{type(self).__name__} ({self.num_layers} layers, "
                                              f"grid {tuple(self.patch_shape)})")
        print_log(report.format(), logger="current")
        if not report.ok:
            raise CheckpointFormatError(f"{path} does not fit {type(self).__name__}: {report.mismatched[:8]}")
        self.load_state_dict(sd, strict=False)  # only the by-design keys are missing
        return report
