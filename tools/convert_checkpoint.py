#!/usr/bin/env python
"""Convert a backbone checkpoint into the format a framework loads, with a report.

  python tools/convert_checkpoint.py mae_pretrain_vit_base.pth vit_b_timm.pth --to timm
  python tools/convert_checkpoint.py moco_v2_800ep_pretrain.pth.tar r50_tv.pth --to torchvision
  python tools/convert_checkpoint.py moco_v2_800ep_pretrain.pth.tar r50_d2.pkl --to detectron2
  python tools/convert_checkpoint.py output/mae_vit_base_in1k/checkpoint-799.pth vit_b_d2.pth --to detectron2
  python tools/convert_checkpoint.py mae_pretrain_vit_base.pth vit_b_mmseg.pth --to mmseg
  python tools/convert_checkpoint.py vit-s-300ep.pth.tar mocov3_vit_s --to timm   # a folder to publish

Sources: every checkpoint's backbone export (pretrain.backbones.read_backbone): the files of
each pretraining method, the authors' or the project's (MAE full or encoder-only, MoCo v1/v2,
MoCo v3 ViTs and ResNets), timm / DeiT ViTs, torchvision ResNets, exported folders. An OUTPUT
without a suffix for --to timm / torchvision is a folder: model.safetensors + timm's config.json,
which timm.create_model("local-dir:OUTPUT", pretrained=True) loads. The report lists what was dropped or left missing by design (decoder,
heads, relative position terms...) apart from real mismatches; a mismatch exits
non-zero and writes nothing. Pickled files beyond tensors / numpy arrays are
refused unless --allow-pickle (only for files you trust).
"""
import argparse
import importlib.util
from pathlib import Path

from pretrain.cli import positive_int
from pretrain.errors import ConfigError, UserError


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source")
    p.add_argument("output")
    p.add_argument("--to", required=True, choices=["timm", "torchvision", "detectron2", "mmseg"])
    p.add_argument("--allow-pickle", action="store_true", help="trust the source file's pickled objects")
    p.add_argument("--patch-size", type=positive_int, default=None,
                   help="resize the patch embedding to this patch size (e.g. ViT-H/14 -> 16 for ViTDet)")
    p.add_argument("--patch-resize", choices=["bicubic", "pinv"], default=None,
                   help="how --patch-size resizes the kernel: bicubic (default; as the ViTDet authors made their "
                        "ViT-H/14 -> 16 file) or pinv (FlexiViT's pseudo-inverse resize, a deviation)")
    args = p.parse_args(argv)

    from pretrain.checkpoint import CheckpointFormatError
    from transfer.convert import convert

    # The flags, then the framework, then the source (transfer.convert.convert): all before the output is written.
    opts = {"allow_pickle": args.allow_pickle}
    if args.patch_size:
        if args.to != "detectron2":
            raise ConfigError(f"--patch-size applies to --to detectron2 (ViTDet), not to --to {args.to}; leave it out")
        opts["patch_size"] = args.patch_size
    if args.patch_resize:
        if not args.patch_size:
            raise ConfigError("--patch-resize goes with --patch-size (e.g. --patch-size 16 --patch-resize pinv)")
        opts["patch_resize"] = args.patch_resize
    if args.to == "detectron2" and Path(args.output).suffix not in (".pkl", ".pth"):
        raise ConfigError(f"--to detectron2 writes a .pkl or .pth file; got output {args.output}")
    if args.to in ("detectron2", "mmseg"):
        require_framework(args.to)
    report = convert(args.source, args.to, args.output, **opts)
    print(report.format())
    if not report.ok:
        raise CheckpointFormatError(f"{args.source}: {len(report.mismatched)} keys do not match the --to {args.to} "
                                    "model (listed above); nothing written")
    print(f"wrote {report.output}")


def require_framework(target: str) -> None:
    """The framework a target converts for, installed here (else its install line, before the source is read)."""
    if target == "detectron2":
        from transfer.detection import INSTALL_HINT, detectron2_available

        if not detectron2_available():
            raise UserError(INSTALL_HINT)
    elif importlib.util.find_spec("mmseg") is None:
        raise UserError("--to mmseg needs mmsegmentation, which is not installed in this environment: "
                        "bash tools/setup_env.sh installs it (README, Installation)")


if __name__ == "__main__":
    from pretrain.cli import run_tool

    run_tool(main)
