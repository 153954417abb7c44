"""Images as uint8 tensors: decoding only what a crop reads, at the scale it needs, then crop, resize and flip on uint8.

JPEGs are decoded by libjpeg-turbo: only the region the crops cover (``pretrain.jpeg_region``, its
TurboJPEG 3 API; the pixels are a full decode's, bit for bit) and at a reduced DCT scale (1/2, 1/4,
1/8) when the crop, so reduced, still has at least the output's resolution. Without that library,
simplejpeg decodes the whole image at the same scale (same pixels). Both are PIL's decode, bit for bit,
at full scale. Other formats, and JPEGs that libjpeg-turbo cannot convert to RGB (CMYK), or that it reads
only with a warning, go through PIL at full scale. Resizing is torch's antialiased uint8 resampling
(PIL's filters, on uint8 as PIL: what the model sees is what the PIL path gives, up to rounding, see README).

The bound of the reduced decode: the crop box is snapped to the reduced image's pixel grid, so
each edge of the crop moves by at most s/2 source pixels, which is less than half an output
pixel (the reduced crop keeps at least output + 1 pixels a side); the pixels then differ from a
full decode of the same box by the DCT-domain reduction's filter (measured and tested:
tests/test_data_loading.py, README "Data loading").
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
import simplejpeg
import torch
import torch.nn.functional as F
from PIL import Image

from . import jpeg_region
from .errors import UserError

DCT_SCALES = (8, 4, 2)  # libjpeg-turbo's fast reductions; 7/8 .. 3/8 decode slower than full scale
JPEG_MAGIC = b"\xff\xd8"


class UnreadableImage(UserError, OSError):
    """A file that cannot be decoded (corrupt, truncated, not an image)."""


Box = Tuple[int, int, int, int]  # top, left, height, width


@dataclass
class Pixels:
    """What a decode gave: ``array`` (uint8 [h, w, 3]) is the image decoded at 1/``scale`` (``reduced_hw``
    its whole size), from its pixel ``origin`` (top, left) on: all of it, or the region that was asked for."""
    array: np.ndarray
    scale: int = 1
    origin: Tuple[int, int] = (0, 0)
    reduced_hw: Optional[Tuple[int, int]] = None

    def crop(self, box: Box) -> torch.Tensor:
        """Source ``box`` as uint8 [3, h, w] (snapped to the reduced grid): a view, channels-last strides
        (what torch's uint8 resize is fastest on)."""
        if self.scale > 1:
            box = snap_box(box, self.scale, self.reduced_hw or self.array.shape[:2])
        top, left, height, width = box
        top, left = top - self.origin[0], left - self.origin[1]
        return torch.from_numpy(self.array).permute(2, 0, 1)[:, top:top + height, left:left + width]


def bounding_box(boxes) -> Box:
    """The smallest box that holds all of ``boxes``."""
    top, left = min(b[0] for b in boxes), min(b[1] for b in boxes)
    return (top, left, max(b[0] + b[2] for b in boxes) - top, max(b[1] + b[3] for b in boxes) - left)


class EncodedImage:
    """A file's bytes, with its size read from the header; decoded on demand, at 1/scale."""

    def __init__(self, data: bytes):
        self.data = data
        self.jpeg = data[:2] == JPEG_MAGIC
        try:
            if self.jpeg:
                height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
                # libjpeg-turbo converts gray and YCbCr to RGB; CMYK / YCCK go through PIL.
                self.jpeg = colorspace in ("Gray", "YCbCr", "RGB")
            else:
                width, height = Image.open(io.BytesIO(data)).size
        except (ValueError, OSError, SyntaxError, Image.DecompressionBombError) as e:
            raise UnreadableImage(f"{type(e).__name__}: {e}") from e
        self.size = (height, width)

    @classmethod
    def from_file(cls, path) -> "EncodedImage":
        with open(path, "rb") as f:
            return cls(f.read())

    def decode(self, scale: int = 1, region: Optional[Box] = None) -> Pixels:
        """The image at 1/``scale`` (1, 2, 4, 8 for a JPEG; others decode at 1), all of it or the part that
        source box ``region`` covers (at least: the crops of boxes inside ``region`` are the whole image's)."""
        if self.jpeg:
            h, w = self.size
            reduced = (-(-h // scale), -(-w // scale))
            if region is not None:
                snapped = snap_box(region, scale, reduced) if scale > 1 else region
                part = jpeg_region.decode_region(self.data, scale, snapped)
                if part is not None:
                    return Pixels(part, scale, snapped[:2], reduced)
            try:
                return Pixels(simplejpeg.decode_jpeg(self.data, "RGB", min_height=reduced[0], min_width=reduced[1]),
                              scale)
            except ValueError:
                pass  # what libjpeg-turbo refuses strictly (e.g. extraneous bytes), PIL may still read
        try:
            with Image.open(io.BytesIO(self.data)) as img:
                img.load()  # decode now: a truncated file fails here
                return Pixels(np.array(img.convert("RGB")))
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            raise UnreadableImage(f"{type(e).__name__}: {e}") from e

    def reduced_scale(self, box: Box, out_size: Tuple[int, int]) -> int:
        """The largest DCT reduction that leaves the crop at least ``out_size`` + 1 pixels a side."""
        if not self.jpeg:
            return 1
        return next((s for s in DCT_SCALES if box[2] >= s * (out_size[0] + 1) and box[3] >= s * (out_size[1] + 1)), 1)


class DecodedImage:
    """An image already in memory (the synthetic scenes): uint8 [H, W, 3]."""

    def __init__(self, array: np.ndarray):
        self.array = array
        self.size = array.shape[:2]

    def decode(self, scale: int = 1, region: Optional[Box] = None) -> Pixels:
        return Pixels(self.array)

    def reduced_scale(self, box: Box, out_size: Tuple[int, int]) -> int:
        return 1


def snap_box(box: Box, scale: int, reduced_hw: Tuple[int, int]) -> Box:
    """``box`` on the grid of the image decoded at 1/scale (each edge rounded to the nearest pixel)."""
    top, left, height, width = box
    y0, y1 = (min(math.floor(v / scale + 0.5), reduced_hw[0]) for v in (top, top + height))
    x0, x1 = (min(math.floor(v / scale + 0.5), reduced_hw[1]) for v in (left, left + width))
    return y0, x0, y1 - y0, x1 - x0


def resize_uint8(pixels: torch.Tensor, size: Tuple[int, int], interpolation: str) -> torch.Tensor:
    """[3, h, w] uint8 -> [3, *size] uint8, antialiased (PIL's filters; torch's uint8 kernels)."""
    if tuple(pixels.shape[-2:]) == tuple(size):
        return pixels
    return F.interpolate(pixels[None], size=size, mode=interpolation, antialias=True)[0]


def decode_crop(img, boxes, out_sizes):
    """The source ``boxes`` of ``img`` as uint8 [3, h, w] views, from one decode of the region they cover,
    at the smallest scale that keeps each box at least its output size."""
    scale = min(img.reduced_scale(b, o) for b, o in zip(boxes, out_sizes))
    pixels = img.decode(scale, bounding_box(boxes))
    return [pixels.crop(b) for b in boxes]
