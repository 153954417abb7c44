#!/usr/bin/env python
"""The cost of MAE's mask sampling, side by side: random (the paper's), block (BEiT's generator, batched:
``pretrain.methods.mae.block_masks``) and grid, for a batch of 256 at ViT-B/16's 14x14 grid, 75% removed.

Each variant draws the noise ``random_masking`` sorts and the masks from it (``masking_noise`` + the sort),
alternately, median of --reps; the ratio to random is what to read (machines are noisy). Also the cost of
one Python-loop BEiT generator per image, the way its repository draws them, for scale.

  python benchmarks/mae_masking.py                # CPU, or the GPU when there is one
  python benchmarks/mae_masking.py --device cpu --batch 256 --reps 20
"""
from __future__ import annotations

import argparse
import math
import random
import statistics
import time

import torch

from pretrain.methods.mae import create_mae


def beit_loop(n: int, grid, num_masking: int) -> None:
    """BEiT's generator as its repository runs it: one image at a time, in Python."""
    h, w = grid
    for _ in range(n):
        mask, count = [[0] * w for _ in range(h)], 0
        while count < num_masking:
            still, delta = num_masking - count, 0
            for _ in range(10):
                area = random.uniform(16, still)
                aspect = math.exp(random.uniform(math.log(0.3), math.log(1 / 0.3)))
                bh, bw = int(round(math.sqrt(area * aspect))), int(round(math.sqrt(area / aspect)))
                if bw < w and bh < h:
                    top, left = random.randint(0, h - bh), random.randint(0, w - bw)
                    new = sum(1 - mask[i][j] for i in range(top, top + bh) for j in range(left, left + bw))
                    if 0 < new <= still:
                        for i in range(top, top + bh):
                            for j in range(left, left + bw):
                                mask[i][j] = 1
                        delta = new
                if delta:
                    break
            if not delta:
                break
            count += delta


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    device = torch.device(args.device)
    models = {s: create_mae("mae_vit_base_patch16", mask_sampling=s, decoder_depth=1) for s in ("random", "block",
                                                                                                 "grid")}
    tokens = torch.zeros(args.batch, 196, 1, device=device)

    def sample(model):
        noise = model.masking_noise(args.batch, 0.75, device)
        model.random_masking(tokens, 0.75, noise)
        if device.type == "cuda":
            torch.cuda.synchronize()

    times = {name: [] for name in models}
    for name, model in models.items():  # warm-up
        sample(model)
    for _ in range(args.reps):
        for name, model in models.items():
            t0 = time.perf_counter()
            sample(model)
            times[name].append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    beit_loop(args.batch, (14, 14), 147)
    loop = time.perf_counter() - t0
    base = statistics.median(times["random"])
    print(f"masks for a batch of {args.batch} at 14x14, 75% removed; {device}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}")
    print("| sampling | ms per batch | vs random |")
    print("|---|---|---|")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"| {name} | {1e3 * med:.2f} | {med / base:.1f}x |")
    print(f"| block, BEiT's Python loop per image (CPU) | {1e3 * loop:.1f} | {loop / base:.0f}x |")


if __name__ == "__main__":
    main()
