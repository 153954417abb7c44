#!/usr/bin/env python
"""MAE's masked-encoding speed-up, measured side by side.

One training step (forward, backward, AdamW step) of the same MAE model two ways:
  * mae:         the encoder sees only the visible 25% of the patches (the paper);
  * mask-tokens: every patch goes through the encoder, masked ones replaced by a
                 learned mask token (BEiT / SimMIM style; ``model.encoder_mask_tokens``);
                 the decoder then works on the full sequence as before.
The two variants are timed alternately in one process (median of --reps steps
each, after warm-up), so machine noise hits both alike; peak memory of each is
measured in a fresh child process (CPU: peak RSS above the post-build baseline;
CUDA: max_memory_allocated).

  python benchmarks/mae_masked_encoding.py                       # ViT-B/16, fp32 and bf16
  python benchmarks/mae_masked_encoding.py --arch mae_vit_large_patch16 --batch 4
  python benchmarks/mae_masked_encoding.py --json out.json

Paper: 2.8x for ViT-L on TPUs; the FLOP ratio for ViT-B/16 + 8x512 decoder is 2.37x.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext

import torch

from pretrain.methods.mae import create_mae
from pretrain.trainer import configure_attention
from pretrain.trainer import peak_memory_mb


class Variant:
    def __init__(self, name, arch, img_size, batch, amp, device):
        torch.manual_seed(0)
        self.name, self.amp, self.device = name, amp, device
        # The baseline is the model's own option (model.encoder_mask_tokens, the Table 1c / 2 ablation).
        self.model = create_mae(arch, img_size=img_size, norm_pix_loss=True,
                                encoder_mask_tokens=name == "mask-tokens").to(device)
        configure_attention(self.model, device.type, torch.bfloat16 if amp == "bf16" else None)  # as the trainer
        self.opt = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad], lr=1e-4,
                                     betas=(0.9, 0.95), fused=True)  # as the trainer
        self.imgs = torch.randn(batch, 3, img_size, img_size, device=device)

    def step(self):
        ctx = torch.autocast(self.device.type, dtype=torch.bfloat16) if self.amp == "bf16" else nullcontext()
        with ctx:
            loss = self.model(self.imgs, mask_ratio=0.75)[0]
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        if self.device.type == "cuda":
            torch.cuda.synchronize()


def timed(variant: Variant) -> float:
    t0 = time.perf_counter()
    variant.step()
    return time.perf_counter() - t0


def measure_memory(args, name, amp) -> float:
    """Peak memory (MiB) of one variant's steps, in a fresh process."""
    cmd = [sys.executable, __file__, "--_memory-child", name, "--arch", args.arch, "--img-size", str(args.img_size),
           "--batch", str(args.batch), "--amp-child", amp, "--device", args.device]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return float(out.strip().splitlines()[-1])


def memory_child(args):
    device = torch.device(args.device)
    v = Variant(args._memory_child, args.arch, args.img_size, args.batch, args.amp_child, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    base = peak_memory_mb(device)  # model, optimizer (no state yet) and inputs
    for _ in range(2):
        v.step()
    print(peak_memory_mb(device) - base)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="mae_vit_base_patch16")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--amp", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--_memory-child", dest="_memory_child", help=argparse.SUPPRESS)
    p.add_argument("--amp-child", default="fp32", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args._memory_child:
        return memory_child(args)

    device = torch.device(args.device)
    results = []
    print(f"{args.arch} at {args.img_size}px, batch {args.batch}, device {device}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    for amp in args.amp:
        variants = [Variant(n, args.arch, args.img_size, args.batch, amp, device) for n in ("mae", "mask-tokens")]
        for v in variants:
            for _ in range(args.warmup):
                v.step()
        times = {v.name: [] for v in variants}
        for _ in range(args.reps):  # interleaved
            for v in variants:
                times[v.name].append(timed(v))
        row = {"arch": args.arch, "amp": amp, "batch": args.batch, "device": str(device)}
        for name, ts in times.items():
            med = statistics.median(ts)
            row[f"{name}_s_per_step"] = med
            row[f"{name}_images_per_s"] = args.batch / med
        row["speedup"] = row["mask-tokens_s_per_step"] / row["mae_s_per_step"]
        if not args.no_memory:
            for name in times:
                row[f"{name}_peak_mib"] = measure_memory(args, name, amp)
            row["memory_ratio"] = row["mask-tokens_peak_mib"] / row["mae_peak_mib"]
        results.append(row)
        del variants

    print("\n| precision | MAE (25% visible) s/step | mask tokens s/step | speed-up | MAE img/s | "
          "mask-tokens img/s | MAE peak MiB | mask-tokens peak MiB |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['amp']} | {r['mae_s_per_step']:.3f} | {r['mask-tokens_s_per_step']:.3f} | "
              f"**{r['speedup']:.2f}x** | {r['mae_images_per_s']:.1f} | {r['mask-tokens_images_per_s']:.1f} | "
              f"{r.get('mae_peak_mib', float('nan')):.0f} | {r.get('mask-tokens_peak_mib', float('nan')):.0f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
