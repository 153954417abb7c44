#!/usr/bin/env python
"""MAE reconstruction figures from a checkpoint (the project's, or the authors' full MAE).

  python tools/mae_visualize.py output/mae_vit_tiny_cpu/checkpoint-last.pth img1.jpg img2.jpg --out figs/
  python tools/mae_visualize.py mae_visualize_vit_large.pth --synthetic 4 --out figs/

Writes figs/reconstructions.png (paper Fig. 2: original / masked / reconstruction /
reconstruction + visible) and figs/mask_ratios.png (Fig. 4: the first image at
mask ratios 0.75-0.95).
"""
import argparse
import sys
from pathlib import Path

import torch


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("images", nargs="*", help="image files (default: --synthetic scenes)")
    p.add_argument("--synthetic", type=int, default=0, help="use N built-in synthetic scenes")
    p.add_argument("--out", default="mae_figures")
    p.add_argument("--mask-ratio", type=float, default=0.75)
    p.add_argument("--ratios", type=float, nargs="+", default=[0.75, 0.85, 0.9, 0.95])
    p.add_argument("--seed", type=int, default=0, help="seed of the random masks")
    args = p.parse_args(argv)

    from pretrain.checkpoint import CheckpointFormatError
    from pretrain.images import DecodedImage, EncodedImage
    from pretrain.methods.mae import mae_from_checkpoint
    from pretrain.synthetic import render_scene, scene_rng
    from pretrain.transforms import eval_transform
    from pretrain.visualize import figure_mask_ratios, figure_reconstructions

    try:
        model, info = mae_from_checkpoint(args.checkpoint)
    except (CheckpointFormatError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    size = info["img_size"]
    tf = eval_transform(size, crop_pct=1.0)
    if args.images:
        pics = []
        for f in args.images:
            try:
                pics.append(tf(EncodedImage.from_file(f)))
            except OSError as e:
                sys.exit(f"error: cannot read image {f}: {e}")
    else:
        pics = [tf(DecodedImage(render_scene(scene_rng(1234, i), (size, size)).image))
                for i in range(args.synthetic or 4)]
    imgs = tf.device_transform(torch.stack(pics), "cpu")
    out = Path(args.out)
    a = figure_reconstructions(model, imgs, out / "reconstructions.png", args.mask_ratio, args.seed,
                               title=f"{info['arch']}: MAE reconstructions")
    b = figure_mask_ratios(model, imgs[0], out / "mask_ratios.png", args.ratios, args.seed)
    print(f"wrote {a} and {b}")


if __name__ == "__main__":
    main()
