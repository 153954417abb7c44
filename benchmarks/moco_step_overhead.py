#!/usr/bin/env python
"""What MoCo's machinery costs on top of its encoders, measured side by side.

  * moco:  a full MoCo training step: query forward, momentum update of the key
           encoder (fused foreach), key shuffle, key forward, unshuffle, logits
           against the queue, enqueue, InfoNCE, backward, SGD step;
  * plain: the same encoders doing two plain forward passes (query with grad, key
           without) and one backward pass of a loss on the query, and the SGD step.
Both run alternately in one process (median of --reps steps after warm-up).
Target: moco / plain - 1 <= 5%.

  python benchmarks/moco_step_overhead.py                  # R50 and R18, fp32 and bf16
  python benchmarks/moco_step_overhead.py --arch resnet50 --batch 32 --img-size 224
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from contextlib import nullcontext

import torch
import torch.nn.functional as F

from pretrain.methods.moco import build_moco


class Steps:
    def __init__(self, arch, batch, img_size, amp, device, queue, bn_splits):
        torch.manual_seed(0)
        self.model = build_moco(arch, K=queue, mlp=True, T=0.2, bn_splits=bn_splits).to(device).train()
        self.opt = torch.optim.SGD([p for p in self.model.parameters() if p.requires_grad], lr=0.03,
                                   momentum=0.9, weight_decay=1e-4, fused=True)
        self.im_q = torch.randn(batch, 3, img_size, img_size, device=device)
        self.im_k = torch.randn(batch, 3, img_size, img_size, device=device)
        self.amp, self.device = amp, device

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16) if self.amp == "bf16" else nullcontext()

    def moco(self):
        with self.autocast():
            logits, labels = self.model(self.im_q, self.im_k)
            loss = F.cross_entropy(logits, labels)
        self._finish(loss)

    def plain(self):
        m = self.model
        with self.autocast():
            q = m.encoder_q(self.im_q)
            with torch.no_grad():
                k = m.encoder_k(self.im_k)
            loss = (q.float() * k.float()).sum(dim=1).mean()
        self._finish(loss)

    def _finish(self, loss):
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        if self.device.type == "cuda":
            torch.cuda.synchronize()


def bench(fn, reps):
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", nargs="+", default=["resnet50", "resnet18"])
    p.add_argument("--amp", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--queue", type=int, default=65536)
    p.add_argument("--bn-splits", type=int, default=8, help="single-process shuffle-BN stand-in, as the trainer")
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json")
    args = p.parse_args()
    device = torch.device(args.device)
    print(f"batch {args.batch} at {args.img_size}px, K={args.queue}, device {device}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    rows = []
    for arch in args.arch:
        for amp in args.amp:
            s = Steps(arch, args.batch, args.img_size, amp, device, args.queue, args.bn_splits)
            s.moco(), s.plain()  # warm-up
            t_moco, t_plain = [], []
            for _ in range(args.reps):  # interleaved
                t_moco += bench(s.moco, 1)
                t_plain += bench(s.plain, 1)
            m, pl = statistics.median(t_moco), statistics.median(t_plain)
            rows.append({"arch": arch, "amp": amp, "batch": args.batch, "moco_s": m, "plain_s": pl,
                         "overhead_pct": 100 * (m / pl - 1), "images_per_s": args.batch / m})
    print("\n| arch | precision | MoCo step s | plain step s | overhead | MoCo images/s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['arch']} | {r['amp']} | {r['moco_s']:.3f} | {r['plain_s']:.3f} | "
              f"{r['overhead_pct']:+.1f}% | {r['images_per_s']:.1f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
