"""``data.backend: dali``: JPEG decoding, crops, resizes and flips on the GPU with NVIDIA DALI.

Optional (``pip install nvidia-dali-cuda120``), for a CUDA training device. The augmentation is the CPU
backend's: the loader reads each file's header and draws the sample's plan under its per-sample seed
(``SampleTransform.plan`` inside ``pretrain.data.seeded``), so crops, flips and colour parameters, and
exact resumption, are the same on both backends; DALI then decodes each view's box (nvJPEG, region
decode, libjpeg's fancy upsampling), resizes it antialiased (cubic or linear, as the plan says) and
mirrors it on the GPU, and the transform's ``assemble`` and ``device_transform`` finish as on the CPU.
What differs is the arithmetic of DALI's decoder and resampling: pixels, not parameters. Where DALI
cannot run (no CUDA device, not installed, in-memory data), ``pretrain.data.resolve_backend`` says so
in the log and loads with ``pil``.

This project's CI has neither a GPU nor DALI: this module is exercised there only through its fallback.
"""
from __future__ import annotations

import importlib.util
from typing import Optional

import numpy as np
import torch
from torch.utils.data import default_collate

from .data import seeded
from .images import EncodedImage
from .transforms import SampleTransform

INSTALL = "pip install nvidia-dali-cuda120"


def dali_problem(dataset, device) -> Optional[str]:
    """Why DALI cannot load ``dataset`` for ``device`` here, or None when it can: what the data needs first
    (it holds on any machine), then the machine."""
    if not hasattr(dataset, "files"):
        return "the images are rendered in memory (data.synthetic), there are no files to decode"
    transform = dataset.transform.transform
    if not isinstance(transform, SampleTransform):
        return f"{type(transform).__name__} has no plan for DALI"
    if transform.host_work is not None:
        return f"{transform.host_work} run(s) on the host after the crop, which a GPU decoder leaves nothing for"
    views, _ = _example_plan(transform)
    if any(v.crop is not None for v in views):
        return f"{type(transform).__name__} crops after resizing, which the DALI pipeline does not"
    if device.type != "cuda" or not torch.cuda.is_available():
        return f"DALI decodes on a CUDA device and this run trains on {device.type} (CUDA available: " \
               f"{torch.cuda.is_available()})"
    if importlib.util.find_spec("nvidia.dali") is None:
        return f"NVIDIA DALI is not installed ({INSTALL})"
    return None


def _example_plan(transform):
    with seeded(0):  # the views' number, sizes and filters, which do not depend on the draws
        return transform.plan((256, 256))


class DaliLoader:
    """Batches of ``dataset`` in ``sampler``'s order (whole batches only), as ``build_train_loader``'s:
    the transform's samples, collated, with the labels; the pixels already on the GPU."""

    def __init__(self, dataset, sampler, batch_size: int, device: torch.device, num_threads: int):
        from nvidia.dali import fn, types
        from nvidia.dali.pipeline import Pipeline

        self.dataset, self.sampler, self.batch_size, self.device = dataset, sampler, batch_size, device
        self.transform = dataset.transform.transform
        views, _ = _example_plan(self.transform)
        self.num_views = len(views)
        self.pipe = Pipeline(batch_size=batch_size, num_threads=num_threads, device_id=device.index or 0,
                             exec_async=False, exec_pipelined=False)
        with self.pipe:
            jpegs = fn.external_source(name="jpegs", dtype=types.UINT8)
            outputs = []
            for v, plan in enumerate(views):
                anchor = fn.external_source(name=f"anchor{v}", dtype=types.INT32)  # (x, y): axis_names "WH"
                shape = fn.external_source(name=f"shape{v}", dtype=types.INT32)  # (w, h)
                flip = fn.external_source(name=f"flip{v}", dtype=types.INT32)
                img = fn.decoders.image_slice(jpegs, anchor, shape, device="mixed", output_type=types.RGB,
                                              normalized_anchor=False, normalized_shape=False,
                                              jpeg_fancy_upsampling=True)
                interp = types.INTERP_CUBIC if plan.interpolation == "bicubic" else types.INTERP_LINEAR
                img = fn.resize(img, size=list(plan.size), interp_type=interp, antialias=True)
                outputs.append(fn.transpose(fn.flip(img, horizontal=flip), perm=[2, 0, 1]))
            self.pipe.set_outputs(*outputs)
        self.pipe.build()

    def __len__(self) -> int:
        return len(self.sampler) // self.batch_size

    def __iter__(self):
        items = list(self.sampler)
        for start in range(0, len(items) - self.batch_size + 1, self.batch_size):
            yield self._batch(items[start:start + self.batch_size])

    def _batch(self, items):
        from nvidia.dali.plugin.pytorch import feed_ndarray

        data, plans, params, labels = [], [], [], []
        for index, seed in items:
            img = EncodedImage.from_file(self.dataset.files[index])
            with seeded(seed):
                views, p = self.transform.plan(img.size)
            data.append(np.frombuffer(img.data, np.uint8))
            plans.append(views)
            params.append(p)
            labels.append(self.dataset.labels[index])
        self.pipe.feed_input("jpegs", data)
        for v in range(self.num_views):
            self.pipe.feed_input(f"anchor{v}", [np.array(p[v].box[1::-1], np.int32) for p in plans])
            self.pipe.feed_input(f"shape{v}", [np.array(p[v].box[:1:-1], np.int32) for p in plans])
            self.pipe.feed_input(f"flip{v}", [np.array(int(p[v].flip), np.int32) for p in plans])
        outputs = self.pipe.run()
        stream = torch.cuda.current_stream(self.device)
        views = []
        for out in outputs:
            dense = out.as_tensor()
            pixels = torch.empty(dense.shape(), dtype=torch.uint8, device=self.device)
            feed_ndarray(dense, pixels, cuda_stream=stream)
            views.append(pixels)
        # assemble draws nothing in the transforms DALI takes (host_work None: MAE's, MoCo's with the colour
        # on the device, the linear protocols').
        samples = [self.transform.assemble([v[i] for v in views], p) for i, p in enumerate(params)]
        return default_collate(samples), torch.tensor(labels)
