#!/usr/bin/env python
"""The data path's CPU cost per image, side by side with the authors' pipelines, and the data-wait share
of a short training run.

Per core: one process, one thread, no workers; each pipeline decodes the same JPEGs (held in memory),
augments them under the same per-sample seeds and collates batches of --batch, in interleaved rounds;
images/s = images / CPU seconds of the process. What is timed is what the loader's CPU does:

  * authors:  their torchvision pipeline on a PIL decode, ToTensor + Normalize included
              (MAE: RandomResizedCrop(224, (0.2, 1), bicubic) + flip; MoCo v2: "aug+" twice, their PIL
              GaussianBlur; classification: timm's create_transform, as the MAE fine-tuning code);
  * ours:     the uint8 path (pretrain.transforms): crop-aware decode, crop / resize / flip on uint8,
              uint8 collate. ToTensor + Normalize, and for MoCo on a CUDA device the colour jitter,
              grayscale and blur, run on the device: not in this column, but measured on this CPU in
              "device part" for the record (on a GPU they take microseconds per image);
  * ours, colour in loader: MoCo as it loads for a CPU training device (colour augmentations in the
              loader, rounded back to uint8);
  * ours, whole-image decode: without the region decode (pretrain/jpeg_region.py), what the path gives
              where libturbojpeg 3 is missing (the same pixels).

Ours draws from each sample's seed (what exact resumption needs, and costs); the authors' pipelines draw from
the global generators, as their code does.

  python benchmarks/data_loading.py                                  # ../shared/data/coco_tiny50
  python benchmarks/data_loading.py --images /data/imagenet/val --limit 500 --json out.json

Targets: ours >= 2.0x the authors' images/s per core for MAE, >= 1.8x for MoCo v2's two views.
"""
from __future__ import annotations

import argparse
import io
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter
from torch.utils.data import default_collate
from torchvision import transforms as T

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pretrain import jpeg_region  # noqa: E402
from pretrain.data import SeededSample  # noqa: E402
from pretrain.images import EncodedImage  # noqa: E402
from pretrain.transforms import IMAGENET_MEAN, IMAGENET_STD, mae_transform, moco_transform  # noqa: E402


# ------------------------------------------------------- the authors' pipelines
def pil_decode(data: bytes) -> Image.Image:
    """torchvision's ImageFolder loader (pil_loader)."""
    return Image.open(io.BytesIO(data)).convert("RGB")


class AuthorsGaussianBlur:
    """moco/loader.py's GaussianBlur: PIL's, radius sigma ~ U(0.1, 2)."""

    def __call__(self, x):
        return x.filter(ImageFilter.GaussianBlur(radius=random.uniform(0.1, 2.0)))


def authors_mae(size):
    return T.Compose([T.RandomResizedCrop(size, scale=(0.2, 1.0), interpolation=T.InterpolationMode.BICUBIC),
                      T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def authors_moco_v2(size):
    view = T.Compose([
        T.RandomResizedCrop(size, scale=(0.2, 1.0)),
        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8), T.RandomGrayscale(p=0.2),
        T.RandomApply([AuthorsGaussianBlur()], p=0.5), T.RandomHorizontalFlip(),
        T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    return lambda img: [view(img), view(img)]  # TwoCropsTransform


def cls_config(protocol, size):
    from transfer.classification.config import load_cls_config

    return load_cls_config(None, ["data.synthetic=true", f"data.img_size={size}"], protocol=protocol).data


def authors_cls(protocol, size):
    from transfer.classification.data import train_transform

    # timm's pipeline objects themselves (create_transform's, as the MAE code), which ours is built from
    return T.Compose(train_transform(cls_config(protocol, size)).transform.transforms)


def ours_cls(protocol, size):
    from transfer.classification.data import train_transform

    return train_transform(cls_config(protocol, size))


class WholeImage(EncodedImage):
    """The path without its region decode: every JPEG decoded whole (at the crop's DCT scale)."""

    def decode(self, scale=1, region=None):
        return super().decode(scale, None)


# -------------------------------------------------------------- measuring
class Pipeline:
    """decode + augment + collate, for one batch at a time. Ours draws from each sample's seed (what exact
    resumption needs, and costs); the authors' from the global generators, as their code."""

    def __init__(self, name, decode, transform, per_sample_seed: bool):
        self.name, self.decode = name, decode
        self.transform = SeededSample(transform) if per_sample_seed else (lambda img, seed: transform(img))

    def batch(self, datas, seeds):
        return default_collate([self.transform(self.decode(d), s) for d, s in zip(datas, seeds)])


def cpu_rate(pipelines, datas, batch, rounds):
    """images per CPU second for each pipeline, interleaved over ``rounds`` passes of ``datas``."""
    seconds = {p.name: 0.0 for p in pipelines}
    seeds = list(range(len(datas)))
    for _ in range(rounds):
        for p in pipelines:
            start = time.process_time()
            for i in range(0, len(datas) - batch + 1, batch):
                p.batch(datas[i:i + batch], seeds[i:i + batch])
            seconds[p.name] += time.process_time() - start
    n = (len(datas) // batch) * batch * rounds
    return {name: n / s for name, s in seconds.items()}


def device_part_rate(transform, datas, batch, rounds):
    """images per CPU second of ``transform.device_transform`` on collated batches (here on the CPU)."""
    batches = [default_collate([SeededSample(transform)(EncodedImage(d), s) for s, d in enumerate(datas[i:i + batch])])
               for i in range(0, len(datas) - batch + 1, batch)]
    start = time.process_time()
    for _ in range(rounds):
        for b in batches:
            transform.device_transform(b, torch.device("cpu"))
    return len(batches) * batch * rounds / (time.process_time() - start)


def data_wait(images_dir, size, steps, workers, authors: bool):
    """The data_wait share the trainer logs over a short MAE run (ViT-pico/16 at ``size``), with our
    loader or, swapped into the same trainer, the authors' MAE pipeline."""
    from pretrain.methods.mae import MAEMethod
    from pretrain.config import load_config
    from pretrain.trainer import Trainer

    class Authors:  # the authors' float pipeline, decoding with PIL from the same file bytes
        def __init__(self):
            self.tf = authors_mae(size)
            self.device_transform = lambda x, device: x.to(device)

        def __call__(self, img):
            return self.tf(pil_decode(img.data))

    out = tempfile.mkdtemp(prefix="data_wait_")
    cfg = load_config(None, [
        f"data.path={images_dir}", f"data.img_size={size}", f"data.num_workers={workers}",
        "model.arch=mae_vit_pico_patch8", "model.decoder_depth=1", "model.decoder_embed_dim=64",
        "model.decoder_num_heads=4", "train.batch_size=16", "train.epochs=1", f"train.max_iters={steps}",
        "train.device=cpu", "train.progress=false", "train.tensorboard=false", f"train.log_every={steps}",
        f"train.output_dir={out}", "optim.warmup_epochs=0"], method="mae")
    original = MAEMethod.build_transform
    if authors:
        MAEMethod.build_transform = lambda self, cfg, device: Authors()
    try:
        Trainer(cfg).fit()
        records = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    finally:
        MAEMethod.build_transform = original
        shutil.rmtree(out, ignore_errors=True)
    return records[-1]["data_wait"], records[-1]["images_per_s"]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", default=str(REPO.parent / "shared" / "data" / "coco_tiny50"),
                   help="a folder of JPEGs (searched recursively)")
    p.add_argument("--limit", type=int, default=0, help="use at most this many images (0: all)")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=25)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--train-steps", type=int, default=8, help="steps of the data-wait run (0: skip it)")
    p.add_argument("--workers", type=int, default=1, help="loader workers of the data-wait run")
    p.add_argument("--json")
    args = p.parse_args()
    torch.set_num_threads(1)
    files = sorted(f for f in Path(args.images).rglob("*") if f.suffix.lower() in (".jpg", ".jpeg"))
    files = files[:args.limit] if args.limit else files
    if not files:
        sys.exit(f"no JPEGs under {args.images}")
    datas = [f.read_bytes() for f in files]
    sizes = [Image.open(io.BytesIO(d)).size for d in datas]
    print(f"{len(datas)} JPEGs from {args.images} (median {int(np.median([w for w, _ in sizes]))} x "
          f"{int(np.median([h for _, h in sizes]))}), output {args.size} px, batches of {args.batch}, "
          f"1 thread, torch {torch.__version__}, region decode: "
          f"{'libturbojpeg 3' if jpeg_region.available() else 'unavailable (whole-image decode)'}")
    s = args.size
    groups = {
        "MAE pretraining": [Pipeline("authors", pil_decode, authors_mae(s), False),
                            Pipeline("ours", EncodedImage, mae_transform(s, 0.2), True),
                            Pipeline("ours, whole-image decode", WholeImage, mae_transform(s, 0.2), True)],
        "MoCo v2, two views": [Pipeline("authors", pil_decode, authors_moco_v2(s), False),
                               Pipeline("ours", EncodedImage, moco_transform("v2", s, 0.2, colour_on_device=True), True),
                               Pipeline("ours, colour in loader", EncodedImage,
                                        moco_transform("v2", s, 0.2, colour_on_device=False), True)],
        "classification: MAE linear probe": [Pipeline("authors", pil_decode, authors_cls("mae_linear", s), False),
                                             Pipeline("ours", EncodedImage, ours_cls("mae_linear", s), True)],
        "classification: MAE fine-tuning": [Pipeline("authors", pil_decode, authors_cls("mae_finetune", s), False),
                                            Pipeline("ours", EncodedImage, ours_cls("mae_finetune", s), True)],
    }
    device_parts = {"MAE pretraining": mae_transform(s, 0.2),
                    "MoCo v2, two views": moco_transform("v2", s, 0.2, colour_on_device=True),
                    "classification: MAE linear probe": ours_cls("mae_linear", s),
                    "classification: MAE fine-tuning": ours_cls("mae_finetune", s)}
    rows = []
    for task, pipelines in groups.items():
        rates = cpu_rate(pipelines, datas, args.batch, args.rounds)
        device = device_part_rate(device_parts[task], datas, args.batch, 1)
        for name, rate in rates.items():
            rows.append({"task": task, "pipeline": name, "images_per_cpu_s": rate,
                         "vs_authors": rate / rates["authors"],
                         "device_part_images_per_cpu_s": device if name == "ours" else None})
    print("\n| transform | pipeline | images/s per core (loader CPU) | vs authors | device part, on this CPU |")
    print("|---|---|---|---|---|")
    for r in rows:
        dev = f"{r['device_part_images_per_cpu_s']:.0f} images/s" if r["device_part_images_per_cpu_s"] else ""
        print(f"| {r['task']} | {r['pipeline']} | {r['images_per_cpu_s']:.0f} | **{r['vs_authors']:.2f}x** | {dev} |")
    waits = {}
    if args.train_steps:
        for who in ("ours", "authors"):
            waits[who] = data_wait(args.images, s, args.train_steps, args.workers, authors=who == "authors")
        print(f"\ndata_wait of a short MAE run (ViT-pico/8 at {s} px, batch 16, {args.workers} worker(s), "
              f"{args.train_steps} steps, CPU):")
        for who, (wait, ips) in waits.items():
            print(f"  {who}: {wait:.0%} of the step time waiting for data, {ips:.1f} images/s")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "data_wait": waits}, indent=2))


if __name__ == "__main__":
    main()
