"""``data.backend: dali``: JPEG decoding, crops, resizes and flips on the GPU with NVIDIA DALI.

Optional (``pip install nvidia-dali-cuda120``), for a CUDA training device. The augmentation is the CPU
backend's: the loader reads each file's header and draws the sample's plan under its per-sample seed
(``SampleTransform.plan`` inside ``pretrain.data.seeded``), so crops, flips and colour parameters, and
exact resumption, are the same on both backends; DALI then decodes each view's box (nvJPEG, region
decode, libjpeg's fancy upsampling), resizes it antialiased (cubic or linear, as the plan says) and
mirrors it on the GPU, and the transform's ``assemble`` and ``device_transform`` finish as on the CPU.
What differs is the arithmetic of DALI's decoder and resampling: pixels, not parameters. As on ``pil``,
the pixels are the file's as stored (EXIF orientation is not applied: the plans are drawn on the header's
size), and an unreadable file is skipped and listed (``check_readable``, on the host, before DALI sees it).
The host work (reading, planning) runs in loader worker processes and DALI decodes batches ahead,
asynchronously: neither waits in series with the step. Where DALI cannot run (no CUDA device, not
installed, in-memory data), ``pretrain.data.resolve_backend`` says so in the log and loads with ``pil``.

This project's CI has neither a GPU nor DALI: there this module is exercised through its fallback and its
host half; where DALI is installed, tests/test_dali.py runs the same pipeline in DALI's CPU-only mode.
"""
from __future__ import annotations

import collections
import importlib.util
import io
from typing import Optional

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, default_collate

from . import jpeg_region
from .data import seeded, worker_init
from .errors import DataError
from .images import JPEG_MAGIC, EncodedImage, UnreadableImage
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


def check_readable(img: EncodedImage) -> None:
    """Raise ``UnreadableImage`` for a file that the ``pil`` backend refuses and that would stop DALI's pipeline
    (a decoder error leaves a DALI pipeline unusable, so the host must catch it first), from its bytes alone.

    The header was read by ``EncodedImage`` (a file whose header does not parse is refused there, as on
    ``pil``). A JPEG must end: an EOI marker after its first scan (``jpeg_region.ends``), as a file cut short
    has none; ``pil``'s strict decoders refuse such a file, and DALI's decoders fail on it. Other formats are
    checked by PIL's ``verify`` (PNG: the chunks' CRCs, which a truncated or damaged file fails)."""
    if img.data[:2] == JPEG_MAGIC:
        if not jpeg_region.ends(img.data):
            raise UnreadableImage("the JPEG data is cut short (no end-of-image marker after the scan)")
        return
    try:
        with Image.open(io.BytesIO(img.data)) as pil_image:
            pil_image.verify()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise UnreadableImage(f"{type(e).__name__}: {e}") from e


def _as_list(samples):
    return samples  # a batch of HostPlans' samples stays a list: the files differ in length


class HostPlans(Dataset):
    """The host's half of the DALI loader: ``(index, seed)`` -> the file's bytes and its sample's plan.

    As ``ImageFolderDataset.__getitem__`` (the ``pil`` backend): an unreadable file (``check_readable``) is
    reported and listed through the dataset (``unreadable_images.txt``, the same limit), and the next file
    takes its place under the same seed. Run by ``DataLoader`` worker processes, ahead of the step: the plans
    draw from torch's generator under each sample's seed (``seeded``), which a thread beside the training
    loop would share with it."""

    def __init__(self, dataset):
        self.dataset = dataset
        self.transform = dataset.transform.transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item):
        index, seed = item
        files = self.dataset.files
        for offset in range(len(files)):
            i = (index + offset) % len(files)
            try:
                img = EncodedImage.from_file(files[i])
                check_readable(img)
            except OSError as e:  # UnreadableImage, or the file itself
                self.dataset._report_bad(i, e)
                continue
            with seeded(seed):
                views, params = self.transform.plan(img.size)
            # Per view: the box's anchor (x, y) and shape (w, h), DALI's "WH" order, and the flip.
            cuts = [[np.array(v.box[1::-1], np.int32), np.array(v.box[:1:-1], np.int32),
                     np.array(int(v.flip), np.int32)] for v in views]
            return np.frombuffer(img.data, np.uint8), cuts, params, self.dataset.labels[i]
        raise DataError(f"no readable image in {self.dataset.root}: replace or remove the unreadable files")


def build_pipeline(views, batch_size: int, num_threads: int, device_id: Optional[int], source, prefetch: int):
    """DALI's graph for the views of ``views`` (their sizes and filters): decode each view's box without EXIF
    orientation (the plans are drawn on the header's raw size, and ``pil`` decodes the raw pixels too), resize
    (antialiased), mirror, to CHW. ``source()`` gives a batch: the encoded files, then per view the boxes'
    anchors (x, y) and shapes (w, h) and the flips. Decoding on the GPU (``mixed``) on ``device_id``, or on
    the CPU where it is None (DALI's CPU-only mode, which the tests run). Asynchronous and pipelined:
    ``prefetch`` batches are decoded ahead of the one the step takes."""
    from nvidia.dali import fn, types
    from nvidia.dali.pipeline import Pipeline

    pipe = Pipeline(batch_size=batch_size, num_threads=num_threads, device_id=device_id,
                    prefetch_queue_depth=prefetch, exec_async=True, exec_pipelined=True)
    with pipe:
        jpegs, *cuts = fn.external_source(source=source, num_outputs=1 + 3 * len(views), batch=True,
                                          dtype=[types.UINT8] + [types.INT32] * 3 * len(views))
        outputs = []
        for plan, (anchor, shape, flip) in zip(views, zip(*[iter(cuts)] * 3)):
            img = fn.decoders.image_slice(jpegs, anchor, shape, device="cpu" if device_id is None else "mixed",
                                          output_type=types.RGB, adjust_orientation=False,
                                          normalized_anchor=False, normalized_shape=False, jpeg_fancy_upsampling=True)
            interp = types.INTERP_CUBIC if plan.interpolation == "bicubic" else types.INTERP_LINEAR
            img = fn.resize(img, size=list(plan.size), interp_type=interp, antialias=True)
            outputs.append(fn.transpose(fn.flip(img, horizontal=flip), perm=[2, 0, 1]))
        pipe.set_outputs(*outputs)
    pipe.build()
    return pipe


class DaliLoader:
    """Batches of ``dataset`` in ``sampler``'s order (whole batches only), as ``build_train_loader``'s:
    the transform's samples, collated, with the labels; the pixels on ``device`` (decoded on the GPU for a
    CUDA device, by DALI's CPU operators for a CPU one).

    Nothing waits in series with the step: ``host_workers`` processes (``HostPlans``; 0: in this process)
    read the files and draw the plans ahead, and DALI decodes ``prefetch`` batches ahead, asynchronously."""

    def __init__(self, dataset, sampler, batch_size: int, device: torch.device, num_threads: int,
                 host_workers: int = 0, prefetch: int = 2):
        self.sampler, self.batch_size, self.device = sampler, batch_size, device
        self.transform = dataset.transform.transform
        views, _ = _example_plan(self.transform)
        self.plans = DataLoader(
            HostPlans(dataset), batch_size=batch_size, sampler=sampler, num_workers=host_workers, drop_last=True,
            collate_fn=_as_list, worker_init_fn=worker_init,
            # Started by a fork server (a clean process), not forked from this one: DALI's threads, process-wide once
            # any pipeline has run (they outlive it), can hold a lock a forked child inherits (seen: a worker hung
            # in its first plan, forked after another loader's pipeline had run). Started once (persistent).
            multiprocessing_context="forkserver" if host_workers > 0 else None,
            persistent_workers=host_workers > 0,
            # Its own generator: starting an epoch must not draw from the global RNG (the checkpoint's).
            generator=torch.Generator().manual_seed(0),
        )
        self._batches = iter(())  # this epoch's plans, which the pipeline's source takes in order
        self._in_flight = collections.deque()  # (params, labels) of the batches fed to DALI, oldest first
        device_id = (device.index or 0) if device.type == "cuda" else None
        self._build = lambda: build_pipeline(views, batch_size, num_threads, device_id, self._source, prefetch)
        self.pipe = None  # built on the first epoch, after the host workers have started

    def __len__(self) -> int:
        return len(self.sampler) // self.batch_size

    def _source(self):
        """The next batch for DALI (StopIteration at the epoch's end), its parameters and labels queued."""
        batch = next(self._batches)
        data, cuts, params, labels = zip(*batch)
        self._in_flight.append((params, labels))
        # Columns: the files, then each view's anchors, shapes and flips.
        return (list(data), *(list(column) for view in zip(*cuts) for column in zip(*view)))

    def _end_epoch(self):
        """Drain what an abandoned epoch left in the pipeline and rewind it (a finished one: only rewind)."""
        self._batches = iter(())
        while True:
            try:
                self.pipe.run()
            except StopIteration:
                break
        self.pipe.reset()
        self._in_flight.clear()

    def __iter__(self):
        if self.pipe is not None:
            self._end_epoch()
        self._batches = iter(self.plans)  # the sampler's order for this epoch, from its position
        if self.pipe is None:
            self.pipe = self._build()
        while True:
            try:
                outputs = self.pipe.run()
            except StopIteration:
                break
            yield self._batch(outputs, *self._in_flight.popleft())
        self._end_epoch()

    def _batch(self, outputs, params, labels):
        # DLPack hands DALI's buffers to torch (ordered on torch's current stream, alive while the tensors are).
        views = [torch.from_dlpack(out.as_tensor()).to(self.device, non_blocking=True) for out in outputs]
        # assemble draws nothing in the transforms DALI takes (host_work None: MAE's, MoCo's with the colour
        # on the device, the linear protocols').
        samples = [self.transform.assemble([v[i] for v in views], p) for i, p in enumerate(params)]
        return default_collate(samples), torch.tensor(labels)
