#!/usr/bin/env python
"""MAE reconstruction figures from a checkpoint (the project's, or the authors' full MAE).

  python tools/mae_visualize.py output/mae_vit_tiny_cpu/checkpoint-last.pth img1.jpg img2.jpg --out figs/
  python tools/mae_visualize.py mae_visualize_vit_large.pth --synthetic 4 --out figs/

Writes figs/reconstructions.png (paper Fig. 2: original / masked / reconstruction /
reconstruction + visible, masked as the model was trained: model.mask_sampling),
figs/mask_ratios.png (Fig. 4: the first image at mask ratios 0.75-0.95) and
figs/mask_sampling.png (Fig. 6: random, block and grid masking of each image).
"""
import argparse
from pathlib import Path

import torch


def unit_fraction(text: str) -> float:
    """An argparse ``type`` for a mask ratio: a number in (0, 1)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a mask ratio in (0, 1), got {text!r}") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a mask ratio in (0, 1), got {value}")
    return value


def main(argv=None):
    from pretrain.cli import positive_int

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("images", nargs="*", help="image files (default: --synthetic scenes)")
    p.add_argument("--synthetic", type=positive_int, help="use N built-in synthetic scenes (default 4)")
    p.add_argument("--out", default="mae_figures")
    p.add_argument("--mask-ratio", type=unit_fraction, default=0.75)
    p.add_argument("--ratios", type=unit_fraction, nargs="+", default=[0.75, 0.85, 0.9, 0.95])
    p.add_argument("--seed", type=int, default=0, help="seed of the random masks")
    args = p.parse_args(argv)

    from pretrain.checkpoint import CheckpointFormatError
    from pretrain.errors import InputNotFound
    from pretrain.images import DecodedImage, EncodedImage, UnreadableImage
    from pretrain.methods.mae import mae_from_checkpoint
    from pretrain.synthetic import render_scene, scene_rng
    from pretrain.transforms import eval_transform
    from pretrain.visualize import figure_mask_ratios, figure_mask_sampling, figure_reconstructions

    # The inputs before the model is built or a figure written; a user error ends as one line (run_tool).
    for f in [args.checkpoint, *args.images]:
        if not Path(f).is_file():
            raise InputNotFound(f"{'checkpoint' if f == args.checkpoint else 'image'} not found: {f}")
    encoded = []
    for f in args.images:
        try:
            encoded.append(EncodedImage.from_file(f))
            encoded[-1].decode(scale=8)  # the whole file, cheaply: a truncated one fails here
        except OSError as e:  # UnreadableImage, or the file itself
            raise UnreadableImage(f"cannot read image {f}: {e}: give JPEG, PNG, ... files") from e
    try:
        model, info = mae_from_checkpoint(args.checkpoint)
    except CheckpointFormatError as e:  # the user's (run_tool), said with the file's name
        raise (CheckpointFormatError(f"{args.checkpoint}: {e}") if args.checkpoint not in str(e) else e) from None
    size = info["img_size"]
    tf = eval_transform(size, crop_pct=1.0)
    if args.images:
        pics = [tf(img) for img in encoded]
    else:
        pics = [tf(DecodedImage(render_scene(scene_rng(1234, i), (size, size)).image))
                for i in range(args.synthetic or 4)]
    imgs = tf.device_transform(torch.stack(pics), "cpu")
    out = Path(args.out)
    a = figure_reconstructions(model, imgs, out / "reconstructions.png", args.mask_ratio, args.seed,
                               title=f"{info['arch']}: MAE reconstructions")
    b = figure_mask_ratios(model, imgs[0], out / "mask_ratios.png", args.ratios, args.seed)
    c = figure_mask_sampling(model, imgs, out / "mask_sampling.png", args.mask_ratio, args.seed,
                             title=f"{info['arch']}: random, block and grid mask sampling")
    print(f"wrote {a}, {b} and {c}")


if __name__ == "__main__":
    from pretrain.cli import run_tool

    run_tool(main)
