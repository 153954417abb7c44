#!/usr/bin/env python
"""What the project's ViTDet host (transfer.detection.backbones.ViT: detectron2's ViT whose blocks take LayerScale,
registers and BEiT's relative position bias) costs on a plain ViT, against detectron2's own ViT, side by side.

  * detectron2: ``detectron2.modeling.backbone.vit.ViT``;
  * host:       the project's ``ViT`` with the same arguments and weights (no options: MAE's ViTDet).
Both run alternately in one process, forward + backward of the output map's mean (median of --reps after warm-up),
and their outputs are checked equal first. Target: host / detectron2 - 1 <= 3%.

  python benchmarks/vitdet_host_overhead.py                       # ViT-S-sized, 256 px, windows of 8
  python benchmarks/vitdet_host_overhead.py --width 768 --depth 12 --img-size 512 --window 14 --device cuda
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def build(width, depth, img_size, window, device):
    from detectron2.modeling.backbone.vit import ViT as Detectron2ViT

    from transfer.detection.backbones import ViT

    args = dict(img_size=img_size, patch_size=16, embed_dim=width, depth=depth, num_heads=max(1, width // 64),
                drop_path_rate=0.0, window_size=window, mlp_ratio=4, qkv_bias=True, use_rel_pos=True,
                window_block_indexes=[i for i in range(depth) if (i + 1) % (depth // 4 or 1)],
                pretrain_img_size=224, out_feature="last_feat")
    torch.manual_seed(0)
    theirs = Detectron2ViT(**args).to(device)
    ours = ViT(**args).to(device)
    missing, unexpected = ours.load_state_dict(theirs.state_dict(), strict=False)
    assert not unexpected and all(k.endswith(("reg_token",)) for k in missing), (missing, unexpected)
    return theirs, ours


def step(model, x):
    model.zero_grad(set_to_none=True)
    model(x)["last_feat"].float().mean().backward()


def timed(fn, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--width", type=int, default=384)
    p.add_argument("--depth", type=int, default=12)
    p.add_argument("--img-size", type=int, default=256)
    p.add_argument("--window", type=int, default=8)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    theirs, ours = build(args.width, args.depth, args.img_size, args.window, device)
    x = torch.randn(args.batch, 3, args.img_size, args.img_size, device=device)
    with torch.no_grad():  # the same network: the comparison is of the code path only
        torch.testing.assert_close(ours(x)["last_feat"], theirs(x)["last_feat"], atol=1e-5, rtol=1e-5)
    times = {"detectron2": [], "host": []}
    for i in range(args.warmup + args.reps):
        for name, model in (("detectron2", theirs), ("host", ours)):
            t = timed(lambda: step(model, x), device)
            if i >= args.warmup:
                times[name].append(t)
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {"device": str(device), "width": args.width, "depth": args.depth, "img_size": args.img_size,
              "window": args.window, "batch": args.batch, "reps": args.reps,
              "detectron2_s": round(med["detectron2"], 4), "host_s": round(med["host"], 4),
              "overhead": round(med["host"] / med["detectron2"] - 1, 4)}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
