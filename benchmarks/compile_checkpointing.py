#!/usr/bin/env python
"""What the speed and memory levers cost and save, measured side by side.

  * speed:          one training step eager vs ``torch.compile``d (as ``train.compile`` compiles it:
                    ``pretrain.trainer.compile_model``), rounds interleaved on the same inputs: the MAE
                    ViT-B step (batch 8 at 224 px) and the MoCo v2 R-50 step (the single-process
                    trainer's: split BN, key shuffle, queue; batch 8). Also the compile time (first call),
                    the graph breaks, and the first step's loss of each (same weights, inputs and mask).
                    A step that does not compile gets a row with the error (MoCo v2 with torch 2.9.1).
  * channels_last:  the ResNet-50 steps in channels_last vs contiguous memory (eager, interleaved): a
                    MoCo v2 step (bn_splits=1, the multi-GPU recipe per process: split BN's view needs
                    contiguous maps) and a linear-probe step (frozen R-50 in eval mode, training fc).
  * memory:         peak memory of one forward + backward with and without activation checkpointing
                    (``model.grad_checkpointing``, detectron2's ``use_act_checkpoint``), each in a fresh
                    process: a MAE ViT-L step (batch 4 at 224 px) and a ViTDet-L backbone (ViT-L + simple
                    feature pyramid, from configs/detectron2/COCO/mask_rcnn_vitdet_l_100ep.py) at
                    384 px. On a CPU, the peak resident memory (VmHWM, reset just before the step) less
                    the resident memory before it; on a GPU, torch.cuda's peak allocation less the
                    allocation before it. Also what the forward keeps for the backward (the saved
                    tensors' storages, weights and input aside): the activations checkpointing saves.

Times are medians over the rounds; on a shared machine use the ratios (the variants share each round).

  python benchmarks/compile_checkpointing.py                      # everything (~20 min on 2 idle CPU cores)
  python benchmarks/compile_checkpointing.py --only memory
  python benchmarks/compile_checkpointing.py --only speed --amp bf16 --rounds 3
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pretrain.methods.mae import create_mae  # noqa: E402
from pretrain.methods.moco import build_moco  # noqa: E402
from pretrain.trainer import compile_model, peak_memory_mb  # noqa: E402


# ------------------------------------------------------------------ steps
class Step:
    """One training step of ``model`` (forward under autocast, backward, optimizer step) on fixed inputs."""

    def __init__(self, model, loss_fn, optimizer, amp, device):
        self.model, self.loss_fn, self.optimizer, self.amp, self.device = model, loss_fn, optimizer, amp, device
        self.losses = []

    def __call__(self):
        ctx = torch.autocast(self.device.type, dtype=torch.bfloat16) if self.amp == "bf16" else nullcontext()
        with ctx:
            loss = self.loss_fn(self.model)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.losses.append(loss.item())  # also waits for the device
        return loss


def mae_steps(batch, img_size, amp, device):
    """(eager step, compiled step) of two MAE ViT-B with the same weights, images and mask."""
    torch.manual_seed(0)
    model = create_mae("mae_vit_base_patch16", img_size=img_size, norm_pix_loss=True).to(device).train()
    imgs = torch.randn(batch, 3, img_size, img_size, device=device)
    noise = torch.rand(batch, model.patch_embed.num_patches, device=device)  # the same mask for both

    def loss(m):
        return m(imgs, mask_ratio=0.75, noise=noise)[0]

    other = copy.deepcopy(model)
    return [Step(m, loss, torch.optim.AdamW(p.parameters(), lr=1e-4, fused=True), amp, device)
            for m, p in ((model, model), (compile_model(other), other))]


def moco_model(bn_splits, device, queue=65536):
    torch.manual_seed(0)
    return build_moco("resnet50", K=queue, mlp=True, T=0.2, bn_splits=bn_splits).to(device).train()


def moco_loss(im_q, im_k):
    def loss(m):
        logits, labels = m(im_q, im_k)
        return F.cross_entropy(logits, labels)
    return loss


def sgd(model):
    return torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.03, momentum=0.9,
                           weight_decay=1e-4, fused=True)


def timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def interleave(steps, rounds):
    """Median seconds per step of each, over ``rounds`` interleaved rounds (after one warm-up call each,
    whose time is returned too: the compile time of a compiled step)."""
    first = [timed(s) for s in steps]
    times = [[] for _ in steps]
    for _ in range(rounds):
        for i, s in enumerate(steps):
            times[i].append(timed(s))
    return first, [statistics.median(t) for t in times]


def graph_breaks() -> int:
    from torch._dynamo.utils import counters
    return sum(counters["graph_break"].values())


def bench_speed(args, device):
    rows = []
    for amp in args.amp:
        for model in args.speed_models:
            rows.append((mae_speed if model == "mae" else moco_speed)(args, device, amp))
            print(json.dumps(rows[-1]), flush=True)
    print("\n| step | precision | eager s | compiled s | compiled / eager | compile time s | graph breaks "
          "| first loss eager | abs. difference |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['step']} | {r['amp']} | | | fails: {r['error']} | | {r['graph_breaks']} | | |")
            continue
        print(f"| {r['step']} | {r['amp']} | {r['eager_s']:.3f} | {r['compiled_s']:.3f} | "
              f"{r['compiled_s'] / r['eager_s']:.2f} | {r['compile_s']:.0f} | {r['graph_breaks']} | "
              f"{r['loss']:.5f} | {r['loss_diff']:.1e} |")
    return rows


def mae_speed(args, device, amp):
    torch._dynamo.reset()
    breaks0 = graph_breaks()
    eager, compiled = mae_steps(args.mae_batch, args.img_size, amp, device)
    first, (t_e, t_c) = interleave([eager, compiled], args.rounds)
    return {"step": f"MAE ViT-B, batch {args.mae_batch}", "amp": amp, "eager_s": t_e, "compiled_s": t_c,
            "compile_s": first[1] - t_e, "graph_breaks": graph_breaks() - breaks0,
            "loss_diff": abs(eager.losses[0] - compiled.losses[0]), "loss": eager.losses[0]}


def moco_speed(args, device, amp):
    torch._dynamo.reset()
    breaks0 = graph_breaks()
    im_q = torch.randn(args.moco_batch, 3, args.img_size, args.img_size, device=device)
    im_k = torch.randn(args.moco_batch, 3, args.img_size, args.img_size, device=device)
    base = moco_model(args.bn_splits, device)
    other = copy.deepcopy(base)
    # The key shuffle draws from the global generator: the first steps see the same draw only if the
    # generator is reset before each (the loss check); later steps differ, as they would anyway.
    steps = [Step(base, moco_loss(im_q, im_k), sgd(base), amp, device),
             Step(compile_model(other), moco_loss(im_q, im_k), sgd(other), amp, device)]
    row = {"step": f"MoCo v2 R-50, batch {args.moco_batch}, bn_splits {args.bn_splits}", "amp": amp}
    first = []
    try:
        for s in steps:
            torch.manual_seed(1)
            first.append(timed(s))
    except Exception as e:  # torch 2.9.1 does not compile it (MoCoMethod.validate says why): a row saying so
        lines = str(e).splitlines() or [""]
        reason = next((line for line in lines if "Error:" in line), lines[0])[:200]
        return {**row, "error": f"{type(e).__name__}: {reason}", "graph_breaks": graph_breaks() - breaks0}
    _, (t_e, t_c) = interleave(steps, args.rounds)
    return {**row, "eager_s": t_e, "compiled_s": t_c, "compile_s": first[1] - t_e,
            "graph_breaks": graph_breaks() - breaks0,
            "loss_diff": abs(steps[0].losses[0] - steps[1].losses[0]), "loss": steps[0].losses[0]}


# ----------------------------------------------------------- channels_last
def bench_channels_last(args, device):
    from transfer.classification.resnet import build_resnet_classifier

    rows = []
    cl = torch.channels_last
    for amp in args.amp:
        im_q = torch.randn(args.moco_batch, 3, args.img_size, args.img_size, device=device)
        im_k = torch.randn_like(im_q)
        base = moco_model(1, device)
        other = copy.deepcopy(base).to(memory_format=cl)
        steps = [Step(base, moco_loss(im_q, im_k), sgd(base), amp, device),
                 Step(other, moco_loss(im_q.to(memory_format=cl), im_k.to(memory_format=cl)), sgd(other), amp,
                      device)]
        _, (t_c, t_l) = interleave(steps, args.rounds)
        rows.append({"step": f"MoCo v2 R-50 step, batch {args.moco_batch}, bn_splits 1", "amp": amp,
                     "contiguous_s": t_c, "channels_last_s": t_l})
        print(json.dumps(rows[-1]), flush=True)

        torch.manual_seed(0)
        clf = build_resnet_classifier("resnet50", 1000).to(device)
        for name, p in clf.named_parameters():
            p.requires_grad = name.startswith("fc.")
        clf.eval()  # the frozen backbone's BN statistics stay (the linear protocol's train mode)
        clf.fc.train()
        clf_cl = copy.deepcopy(clf).to(memory_format=cl)
        imgs = torch.randn(args.probe_batch, 3, args.img_size, args.img_size, device=device)
        target = torch.randint(0, 1000, (args.probe_batch,), device=device)

        def probe_loss(x):
            return lambda m: F.cross_entropy(m(x), target)

        steps = [Step(clf, probe_loss(imgs), sgd(clf), amp, device),
                 Step(clf_cl, probe_loss(imgs.to(memory_format=cl)), sgd(clf_cl), amp, device)]
        _, (t_c, t_l) = interleave(steps, args.rounds)
        rows.append({"step": f"R-50 linear probe step, batch {args.probe_batch}", "amp": amp,
                     "contiguous_s": t_c, "channels_last_s": t_l})
        print(json.dumps(rows[-1]), flush=True)
    print("\n| step | precision | contiguous s | channels_last s | channels_last / contiguous |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['step']} | {r['amp']} | {r['contiguous_s']:.3f} | {r['channels_last_s']:.3f} | "
              f"{r['channels_last_s'] / r['contiguous_s']:.2f} |")
    return rows


# ------------------------------------------------------------------ memory
def resident_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def reset_peak(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device) / 2**20
    with open("/proc/self/clear_refs", "w") as f:  # VmHWM := VmRSS (Linux)
        f.write("5")
    return resident_mb()


def vitdet_backbone(img_size: int, act_checkpoint: bool):
    """The ViTDet-L backbone (ViT-L + simple feature pyramid) of the project's config, at ``img_size``."""
    from detectron2.config import LazyConfig, instantiate

    cfg = LazyConfig.load(str(Path(__file__).resolve().parents[1] / "configs/detectron2/COCO/mask_rcnn_vitdet_l_100ep.py"))
    cfg.model.backbone.net.img_size = img_size
    cfg.model.backbone.square_pad = img_size
    cfg.model.backbone.net.use_act_checkpoint = act_checkpoint
    return instantiate(cfg.model.backbone)


def memory_worker(spec: str, device) -> dict:
    """One forward + backward of the model ``spec`` names (``<model>:<checkpointing 0|1>:<batch>:<img>``),
    in this fresh process; the peak above the memory before it."""
    name, ckpt, batch, img = spec.split(":")
    ckpt, batch, img = ckpt == "1", int(batch), int(img)
    torch.manual_seed(0)
    if name == "mae_vit_large":
        model = create_mae("mae_vit_large_patch16", img_size=img, norm_pix_loss=True)
        model.set_grad_checkpointing(ckpt)

        def loss_fn(x):
            return model(x, mask_ratio=0.75)[0]
    elif name == "vitdet_large":
        model = vitdet_backbone(img, ckpt)

        def loss_fn(x):  # every pyramid level reaches the loss
            return sum(f.float().pow(2).mean() for f in model(x).values())
    else:
        raise ValueError(f"unknown memory benchmark model {name!r}")
    model.to(device).train()
    x = torch.randn(batch, 3, img, img, device=device)
    # Activations: the storages the forward keeps for the backward, weights and input aside (what checkpointing
    # saves; the tensors it keeps itself, each block's input, are out of this count).
    saved, weights = {}, {t.untyped_storage().data_ptr() for t in [*model.parameters(), x]}

    def keep(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in weights:
            saved[ptr] = t.untyped_storage().nbytes()
        return t

    before = reset_peak(device)
    t0 = time.perf_counter()
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        loss = loss_fn(x)
    loss.backward()
    seconds = time.perf_counter() - t0
    return {"model": name, "checkpointing": ckpt, "batch": batch, "img_size": img, "before_mb": before,
            "peak_mb": peak_memory_mb(device), "saved_mb": sum(saved.values()) / 2**20, "step_s": seconds,
            "loss": loss.item()}


def bench_memory(args, device):
    specs = [("mae_vit_large", args.mae_large_batch, args.img_size), ("vitdet_large", 1, args.vitdet_size)]
    rows = []
    for name, batch, img in specs:
        for ckpt in (0, 1):
            spec = f"{name}:{ckpt}:{batch}:{img}"
            proc = subprocess.run([sys.executable, __file__, "--memory-worker", spec, "--device", str(device)],
                                  capture_output=True, text=True)
            if proc.returncode:
                reason = (proc.stderr.strip().splitlines() or ["?"])[-1]
                print(f"{spec}: failed ({reason})", flush=True)
                rows.append({"model": name, "checkpointing": bool(ckpt), "batch": batch, "img_size": img,
                             "error": reason})
                continue
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
    print("\n| forward + backward | activation checkpointing | kept for backward MiB | peak above model MiB "
          "| peak MiB | seconds | loss |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        what = f"{r['model']}, batch {r['batch']} at {r['img_size']} px"
        if "error" in r:
            print(f"| {what} | {'on' if r['checkpointing'] else 'off'} | skipped: {r['error']} | | | | |")
            continue
        print(f"| {what} | {'on' if r['checkpointing'] else 'off'} | {r.get('saved_mb', float('nan')):.0f} | "
              f"{r['peak_mb'] - r['before_mb']:.0f} | {r['peak_mb']:.0f} | {r['step_s']:.2f} | {r['loss']:.5f} |")
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="+", choices=["speed", "channels_last", "memory"],
                   default=["speed", "channels_last", "memory"])
    p.add_argument("--amp", nargs="+", default=["none"], choices=["none", "bf16"])
    p.add_argument("--speed-models", nargs="+", default=["mae", "moco"], choices=["mae", "moco"])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--mae-batch", type=int, default=8)
    p.add_argument("--moco-batch", type=int, default=8)
    p.add_argument("--probe-batch", type=int, default=16)
    p.add_argument("--bn-splits", type=int, default=8, help="the compiled MoCo step's (single-process trainer: 8)")
    p.add_argument("--mae-large-batch", type=int, default=4)
    p.add_argument("--vitdet-size", type=int, default=384)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--memory-worker", help=argparse.SUPPRESS)
    p.add_argument("--json")
    args = p.parse_args()
    device = torch.device(args.device)
    if args.memory_worker:
        print(json.dumps(memory_worker(args.memory_worker, device)))
        return
    print(f"device {device}, {torch.get_num_threads()} threads, torch {torch.__version__}", flush=True)
    results = {}
    for part, fn in (("speed", bench_speed), ("channels_last", bench_channels_last), ("memory", bench_memory)):
        if part in args.only:
            results[part] = fn(args, device)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
