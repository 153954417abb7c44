#!/usr/bin/env python
"""The prepared GPU check: one script, one GPU, at most ~8 minutes; prints one table.

  * MAE ViT-B/16 pretraining (batch 64 at 224, bf16 autocast, AdamW): images/s and peak memory of the
    project's model and, in the same run, of a re-derivation of the authors' (models_mae.py: timm Blocks
    with the unfused attention of the timm 0.3.2 it was written for), each eager and under torch.compile
    (the compilation, timed apart, is the first step's time);
  * MoCo v2 ResNet-50 (batch 256 at 224, K = 65536, 8 split batch norms, bf16): images/s, peak memory;
  * ViTDet-B Mask R-CNN at 1024 px, 1 image a GPU as the 64-GPU recipe (detectron2; the row says so when
    detectron2 is absent): s/iter and peak memory; reference 0.314 s/iter, 10.9 GB on an A100;
  * UperNet + MAE ViT-B at 512 px, 2 images a GPU as the 8x2 recipe (mmseg): s/iter, peak memory;
    reference 9.96 GB;
  * the data path (benchmarks/data_loading.py): images/s per core of the loader against the authors', and
    the device part (ToTensor + Normalize, MoCo's colour augmentations) in images/s on this device, called
    as the trainer calls it, on the recipe's per-GPU batch.

Steps are timed after warm-up, synchronised; synthetic inputs (random pixels, boxes, masks, labels).

  python benchmarks/gpu_check.py                  # on the GPU
  python benchmarks/gpu_check.py --cpu --tiny     # the same rows with tiny models on a CPU (under a minute)

On a cluster node without network, with the site's PyTorch: tools/gpu_check_wheels.py prepares the folder
it installs from, with a copy of this script (README, "The GPU check").
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import io
import sys
import time
import traceback
import warnings
from functools import partial
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]  # a checkout, or the copy in tools/gpu_check_wheels.py's folder
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]


class Device:
    def __init__(self, cpu: bool):
        self.device = torch.device("cpu" if cpu else "cuda")
        self.cuda = self.device.type == "cuda"
        # bf16 autocast on the GPU; fp32 on a CPU (bf16 there is slower without AMX, see README)
        self.amp = torch.bfloat16 if self.cuda else None
        self.precision = "bf16" if self.cuda else "fp32"

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cuda)

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def reset_memory(self):
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    def reset_peak(self):
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()

    def peak_gb(self):
        return torch.cuda.max_memory_allocated() / 2**30 if self.cuda else None


def timed(step, dev: Device, warmup: int, iters: int) -> float:
    """Seconds per call of ``step``, after ``warmup`` calls."""
    for _ in range(warmup):
        step()
    dev.sync()
    start = time.perf_counter()
    for _ in range(iters):
        step()
    dev.sync()
    return (time.perf_counter() - start) / iters


# ------------------------------------------------------------------ MAE
class AuthorsMAE(nn.Module):
    """He et al.'s models_mae.MaskedAutoencoderViT, re-derived for timing (same layers, same step), with
    the attention of the timm 0.3.2 it used (unfused: softmax(q k^T) v)."""

    def __init__(self, img_size, patch, dim, depth, heads, dec_dim=512, dec_depth=8, dec_heads=16):
        super().__init__()
        from timm.models.vision_transformer import Block, PatchEmbed

        norm = partial(nn.LayerNorm, eps=1e-6)
        self.patch = patch
        self.patch_embed = PatchEmbed(img_size, patch, 3, dim)
        n = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, n + 1, dim), requires_grad=False)
        self.blocks = nn.ModuleList([Block(dim, heads, 4.0, qkv_bias=True, norm_layer=norm) for _ in range(depth)])
        self.norm = norm(dim)
        self.decoder_embed = nn.Linear(dim, dec_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dec_dim))
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, n + 1, dec_dim), requires_grad=False)
        self.decoder_blocks = nn.ModuleList([Block(dec_dim, dec_heads, 4.0, qkv_bias=True, norm_layer=norm)
                                             for _ in range(dec_depth)])
        self.decoder_norm = norm(dec_dim)
        self.decoder_pred = nn.Linear(dec_dim, patch**2 * 3)
        for blk in [*self.blocks, *self.decoder_blocks]:
            blk.attn.fused_attn = False

    def forward(self, imgs, mask_ratio=0.75):
        x = self.patch_embed(imgs) + self.pos_embed[:, 1:]
        n, length, d = x.shape
        keep = int(length * (1 - mask_ratio))
        ids_shuffle = torch.argsort(torch.rand(n, length, device=x.device), dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        x = torch.gather(x, 1, ids_shuffle[:, :keep, None].expand(-1, -1, d))
        mask = torch.ones(n, length, device=x.device)
        mask[:, :keep] = 0
        mask = torch.gather(mask, 1, ids_restore)
        x = torch.cat([(self.cls_token + self.pos_embed[:, :1]).expand(n, -1, -1), x], dim=1)
        for blk in self.blocks:
            x = blk(x)
        x = self.decoder_embed(self.norm(x))
        tokens = torch.cat([x[:, 1:], self.mask_token.repeat(n, length + 1 - x.shape[1], 1)], dim=1)
        tokens = torch.gather(tokens, 1, ids_restore[..., None].expand(-1, -1, x.shape[2]))
        x = torch.cat([x[:, :1], tokens], dim=1) + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            x = blk(x)
        pred = self.decoder_pred(self.decoder_norm(x))[:, 1:]
        p, h = self.patch, imgs.shape[2] // self.patch
        target = imgs.reshape(n, 3, h, p, h, p).permute(0, 2, 4, 3, 5, 1).reshape(n, h * h, p * p * 3)
        target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6) ** 0.5
        loss = ((pred - target) ** 2).mean(-1)
        return (loss * mask).sum() / mask.sum()


def mae_rows(dev: Device, tiny: bool, compile: bool):
    from pretrain.methods.mae import create_mae
    from pretrain.trainer import configure_attention

    arch, size, batch, spec = (("mae_vit_pico_patch8", 64, 8, (8, 96, 4, 3, 64, 1, 4)) if tiny else
                               ("mae_vit_base_patch16", 224, 64, (16, 768, 12, 12, 512, 8, 16)))
    imgs = torch.randn(batch, 3, size, size, device=dev.device)
    # On a CPU the compiled rows check that the step compiles (graph capture, the backward graph) without
    # inductor's C++ build, which takes minutes there; the CPU's compiled speed is benchmarks/' business.
    backend = "inductor" if dev.cuda else "aot_eager"
    rows = []
    for name in ("project", "authors (re-derived)"):
        for compiled in (False, True) if compile else (False,):
            dev.reset_memory()
            torch.manual_seed(0)
            if name == "project":
                model = create_mae(arch, img_size=size, norm_pix_loss=True, decoder_embed_dim=spec[4],
                                   decoder_depth=spec[5], decoder_num_heads=spec[6]).to(dev.device)
                configure_attention(model, dev.device.type, dev.amp)
            else:
                model = AuthorsMAE(size, *spec).to(dev.device)
            forward = torch.compile(model, backend=backend) if compiled else model
            loss_fn = ((lambda: forward(imgs, mask_ratio=0.75)[0]) if name == "project" else  # noqa: E731
                       (lambda: forward(imgs, 0.75)))
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), fused=True)

            def step():
                with dev.autocast():
                    loss = loss_fn()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

            # The first step compiles (forward and backward graphs): timed apart, and left out of the peak.
            start = time.perf_counter()
            step()
            dev.sync()
            first = time.perf_counter() - start
            dev.reset_peak()
            s = timed(step, dev, 1 if tiny else 3, 2 if tiny else 10)
            setting = f"batch {batch} at {size}, {dev.precision}"
            rows.append((f"MAE {arch} pretraining, {name}, {'compiled' if compiled else 'eager'}",
                         f"{batch / s:.1f} images/s", dev.peak_gb(),
                         f"{setting}, torch.compile ({backend}): {first:.0f} s to compile" if compiled else setting))
            del model, forward, opt
            if compiled:
                torch._dynamo.reset()  # the next model compiles afresh, within the recompilation limit
    return rows


def moco_rows(dev: Device, tiny: bool):
    from pretrain.methods.moco import build_moco

    arch, size, batch, queue, splits = ("resnet18", 64, 8, 64, 2) if tiny else ("resnet50", 224, 256, 65536, 8)
    dev.reset_memory()
    torch.manual_seed(0)
    model = build_moco(arch, K=queue, mlp=True, T=0.2, bn_splits=splits).to(dev.device).train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.03, momentum=0.9,
                          weight_decay=1e-4, fused=True)
    im_q, im_k = (torch.randn(batch, 3, size, size, device=dev.device) for _ in range(2))

    def step():
        with dev.autocast():
            logits, labels = model(im_q, im_k)
            loss = F.cross_entropy(logits.float(), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    s = timed(step, dev, 1 if tiny else 3, 2 if tiny else 10)
    return [(f"MoCo v2 {arch}", f"{batch / s:.1f} images/s", dev.peak_gb(),
             f"batch {batch} at {size}, K={queue}, {splits} split BNs, {dev.precision}")]


def missing(*packages: str, ops: str) -> Optional[str]:
    """Why a row that needs ``packages`` and the compiled extension ``ops`` cannot run here (a skip's reason),
    or None. Compiled ops are built against one torch: a site's other torch fails to load them."""
    for package in packages:
        if importlib.util.find_spec(package) is None:
            return f"skipped: {package} is not installed"
    try:
        importlib.import_module(ops)
    except Exception as e:  # ImportError, or an undefined symbol of another torch build
        reason = f"skipped: {ops} (compiled ops) does not load with torch {torch.__version__}"
        return f"{reason}: {type(e).__name__}: {e}"[:200]
    return None


# ------------------------------------------------------------- detection
def vitdet_rows(dev: Device, tiny: bool):
    reason = missing("detectron2", ops="detectron2._C")
    if reason:
        return [("ViTDet-B Mask R-CNN", reason, None,
                 "detectron2 is on no registry: build it for this Python and torch (README, detectron2)")]
    from detectron2.config import LazyConfig, instantiate
    from detectron2.structures import BitMasks, Boxes, Instances
    from detectron2.utils.events import EventStorage

    name = "tiny/mask_rcnn_vitdet_pico.py" if tiny else "COCO/mask_rcnn_vitdet_b_100ep.py"
    cfg = LazyConfig.load(str(REPO / "configs" / "detectron2" / name))
    size = 128 if tiny else 1024
    dev.reset_memory()
    torch.manual_seed(0)
    model = instantiate(cfg.model).to(dev.device).train()
    cfg.optimizer.params.model = model
    opt = instantiate(cfg.optimizer)
    g = torch.Generator().manual_seed(0)

    def image():
        n = 8
        xy = torch.rand(n, 2, generator=g) * size * 0.7
        wh = 16 + torch.rand(n, 2, generator=g) * size * 0.25
        boxes = torch.cat([xy, (xy + wh).clamp(max=size - 1)], dim=1)
        masks = torch.zeros(n, size, size, dtype=torch.bool)
        for k, (x0, y0, x1, y1) in enumerate(boxes.round().int().tolist()):
            masks[k, y0:y1, x0:x1] = True
        inst = Instances((size, size), gt_boxes=Boxes(boxes), gt_classes=torch.randint(0, 80, (n,), generator=g),
                         gt_masks=BitMasks(masks))
        return {"image": torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=g).float(),
                "instances": inst, "height": size, "width": size}

    batch = [image()]  # one image a GPU, as the 64-GPU recipe

    def step():
        with dev.autocast():
            losses = model(batch)
        loss = sum(losses.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    with EventStorage(0):  # where detectron2's heads put their statistics
        s = timed(step, dev, 1 if tiny else 3, 2 if tiny else 10)
    return [(f"ViTDet Mask R-CNN ({name})", f"{s:.3f} s/iter", dev.peak_gb(),
             f"1 image at {size}, {dev.precision}; reference ViT-B: 0.314 s/iter, 10.9 GB (A100)")]


# ---------------------------------------------------------- segmentation
def upernet_rows(dev: Device, tiny: bool):
    reason = missing("mmcv", "mmengine", "mmseg", ops="mmcv._ext")
    if reason:
        return [("UperNet MAE ViT-B", reason, None, "needs mmcv built with its compiled ops for this torch "
                 "(tools/setup_env.sh builds it), then sslkit[seg]")]
    from mmengine.registry import init_default_scope
    from mmengine.structures import PixelData
    from mmseg.registry import MODELS
    from mmseg.structures import SegDataSample

    import transfer.segmentation.vit  # noqa: F401  (registers MAEViTEncoder)
    from transfer.segmentation.runner import load_seg_config

    name = "tiny/upernet_vit-pico_ade20k-64x64.py" if tiny else "upernet_mae-vit-b_8xb2-amp-160k_ade20k-512x512.py"
    cfg = load_seg_config(REPO / "configs" / "mmseg" / name)
    size = 64 if tiny else 512
    init_default_scope("mmseg")
    cfg.model.backbone.init_cfg = None  # random weights: the timing does not need the MAE file
    if not dev.cuda:
        for key in ("norm_cfg",):
            for part in ("decode_head", "auxiliary_head"):
                if cfg.model.get(part) and cfg.model[part].get(key, {}).get("type") == "SyncBN":
                    cfg.model[part][key]["type"] = "BN"
    dev.reset_memory()
    torch.manual_seed(0)
    model = MODELS.build(cfg.model).to(dev.device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
    batch = 2  # 2 images a GPU, as the 8 x 2 recipe
    inputs = torch.randn(batch, 3, size, size, device=dev.device)
    samples = []
    for _ in range(batch):
        s = SegDataSample()
        s.gt_sem_seg = PixelData(data=torch.randint(0, 150, (1, size, size), device=dev.device))
        s.set_metainfo({"img_shape": (size, size), "pad_shape": (size, size), "ori_shape": (size, size)})
        samples.append(s)

    def step():
        with dev.autocast():
            losses = model(inputs, samples, mode="loss")
        loss = sum(v for k, v in losses.items() if "loss" in k)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    t = timed(step, dev, 1 if tiny else 3, 2 if tiny else 10)
    return [(f"UperNet ({name})", f"{t:.3f} s/iter", dev.peak_gb(),
             f"2 images at {size}, {dev.precision}; reference MAE ViT-B: 9.96 GB")]


# ------------------------------------------------------------- data path
def test_jpegs(images: str, n: int):
    """The folder's JPEGs (``images``), else ``n`` synthetic scenes at 480 x 640 encoded as JPEGs."""
    files = sorted(Path(images).rglob("*.jpg"))[:n] if images and Path(images).is_dir() else []
    if files:
        return [f.read_bytes() for f in files], f"{len(files)} JPEGs from {images}"
    from PIL import Image

    from pretrain.synthetic import render_scene, scene_rng

    datas = []
    for i in range(n):
        buf = io.BytesIO()
        Image.fromarray(render_scene(scene_rng(5, i), (480, 640)).image).save(buf, "JPEG", quality=90)
        datas.append(buf.getvalue())
    return datas, f"{n} synthetic 640 x 480 JPEGs ({images} absent)"


def data_rows(dev: Device, tiny: bool, images: str):
    import data_loading as dl
    from pretrain.images import EncodedImage
    from pretrain.transforms import mae_transform, moco_transform

    size, n, batch = (64, 20, 10) if tiny else (224, 100, 25)
    datas, source = test_jpegs(images, n)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # per core; the device part too when the device is this CPU
    try:
        mae = dl.cpu_rate([dl.Pipeline("authors", dl.pil_decode, dl.authors_mae(size), False),
                           dl.Pipeline("ours", EncodedImage, mae_transform(size, 0.2), True)], datas, batch, 1 if tiny else 3)
        moco_tf = moco_transform("v2", size, 0.2, colour_on_device=True)
        moco = dl.cpu_rate([dl.Pipeline("authors", dl.pil_decode, dl.authors_moco_v2(size), False),
                            dl.Pipeline("ours", EncodedImage, moco_tf, True)], datas, batch, 1 if tiny else 3)
        if dev.cuda:
            torch.set_num_threads(threads)
        device_batch = batch if tiny else moco_gpu_batch()
        t, syncs = moco_device_part(dev, moco_tf, datas, device_batch, 3 if tiny else 10)
    finally:
        torch.set_num_threads(threads)
    rows = [("data path, MAE: loader per core", f"{mae['ours']:.0f} images/s ({mae['ours'] / mae['authors']:.2f}x "
             f"the authors' {mae['authors']:.0f})", None, source),
            ("data path, MoCo v2 two views: loader per core", f"{moco['ours']:.0f} images/s "
             f"({moco['ours'] / moco['authors']:.2f}x the authors' {moco['authors']:.0f})", None,
             "colour augmentations on the device")]
    rows.append(("data path, MoCo v2 device part", f"{device_batch / t:.0f} images/s", None,
                 f"uint8 -> colour jitter, grayscale, blur, normalise, as the trainer calls it; batch "
                 f"{device_batch} (two views each) on {'the GPU' if dev.cuda else 'one CPU core'}"
                 + (f"; {syncs} host syncs a call" if syncs is not None else "")))
    return rows


def moco_gpu_batch() -> int:
    """The MoCo v2 R-50 recipe's batch per process (train.batch_size: 32 x 8 GPUs)."""
    from omegaconf import OmegaConf

    return int(OmegaConf.load(REPO / "configs" / "pretrain" / "moco_v2_r50_in1k.yaml").train.batch_size)


def moco_device_part(dev: Device, transform, datas, batch: int, iters: int):
    """Seconds per call of MoCo's device part as the trainer makes it: ``device_transform(batch[0], device)`` on
    the loader's collated batch, whose uint8 views and colour parameters are on the host (pinned for a GPU,
    as the loader's ``pin_memory``); the transform moves the pixels and reads the parameters where they are.
    Also the host syncs one call makes on a GPU (CUDA's sync debug mode), else None."""
    from torch.utils.data import default_collate

    from pretrain.data import SeededSample
    from pretrain.images import EncodedImage

    sample = SeededSample(transform)
    inputs = default_collate([sample(EncodedImage(datas[i % len(datas)]), i) for i in range(batch)])
    if dev.cuda:
        inputs = tuple(t.pin_memory() for t in inputs)
    call = partial(transform.device_transform, inputs, dev.device)
    seconds = timed(call, dev, 1, iters)
    if not dev.cuda:
        return seconds, None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            call()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    dev.sync()
    return seconds, sum("synchroniz" in str(w.message) for w in caught)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cpu", action="store_true", help="run on the CPU (with --tiny: the test of this script)")
    p.add_argument("--tiny", action="store_true", help="tiny models and inputs")
    p.add_argument("--images", default=str(REPO.parent / "shared" / "data" / "coco_tiny50"))
    p.add_argument("--only", nargs="*", default=["mae", "moco", "vitdet", "upernet", "data"])
    p.add_argument("--no-compile", dest="compile", action="store_false",
                   help="leave out the torch.compile rows (MAE), and their compilation time")
    args = p.parse_args()
    if not args.cpu and not torch.cuda.is_available():
        sys.exit("no CUDA device: run on a GPU, or with --cpu --tiny")
    dev = Device(args.cpu)
    where = torch.cuda.get_device_name() if dev.cuda else "CPU"
    import pretrain  # from the checkout, or from the installed wheel beside the folder's copy of this script

    print(f"gpu_check on {where}, torch {torch.__version__}, {'tiny' if args.tiny else 'full-size'} models; "
          f"sslkit from {Path(pretrain.__file__).parent.parent}")
    checks = {"mae": lambda d, t: mae_rows(d, t, args.compile), "moco": moco_rows, "vitdet": vitdet_rows,
              "upernet": upernet_rows, "data": lambda d, t: data_rows(d, t, args.images)}
    rows, start = [], time.perf_counter()
    for name in args.only:
        t0 = time.perf_counter()
        try:
            rows += [(*r, time.perf_counter() - t0) for r in checks[name](dev, args.tiny)]
        except Exception as e:  # one failing row must not hide the others
            traceback.print_exc()
            rows.append((name, f"FAILED: {type(e).__name__}: {e}"[:160], None, "", time.perf_counter() - t0))
    print("\n| check | result | peak memory | setting | wall s |")
    print("|---|---|---|---|---|")
    for name, result, mem, note, wall in rows:
        mem_s = f"{mem:.2f} GB" if mem is not None else ""
        print(f"| {name} | {result} | {mem_s} | {note} | {wall:.0f} |")
    print(f"\ntotal {time.perf_counter() - start:.0f} s")
    if any(r[1].startswith("FAILED") for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
