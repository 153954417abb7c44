"""Decoding only the part of a JPEG that a crop reads: libjpeg-turbo's TurboJPEG 3 API, through ctypes.

``tj3SetCroppingRegion`` makes libjpeg-turbo skip the inverse DCT, upsampling and colour conversion of the
rows above the region, stop after its last row and decode only the iMCU columns it covers; with
``tj3SetScalingFactor`` it combines with the reduced-scale decode. The pixels are libjpeg-turbo's full
decode's (ISLOW DCT, fancy upsampling: PIL's), bit for bit, with one care: a cropped decode treats the
region's left edge as the image's, so the chroma upsampling of its first column differs. The region is
therefore widened by ``MARGIN`` pixels each way (then aligned to the iMCU grid, as the API requires) and
cut back after the decode; tests/test_data_loading.py checks the equality for every subsampling,
progressive files and each scale.

A decode that stops after the region's last row would not see a file truncated below it: only files that
end (an EOI marker after the first scan) are decoded by region; the rest go to the strict decoders, which
refuse a truncated file whatever the crop.

The library: ``$SSLKIT_TURBOJPEG`` (a path), else the one the ``turbojpeg`` wheel bundles (x86-64,
requirements.txt), else the system's if it is 3.0 or newer. Without one, ``available()`` is False and
``pretrain.images`` decodes whole images (same pixels, slower).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import glob
import importlib.util
import logging
import os
import threading
from pathlib import Path
from typing import Optional, Tuple

import numpy as np

log = logging.getLogger(__name__)

MARGIN = 2  # pixels of context each side of the region: the fancy upsampling reads one chroma sample

TJINIT_DECOMPRESS = 1
TJPARAM_STOPONWARNING, TJPARAM_SUBSAMP, TJPARAM_JPEGWIDTH, TJPARAM_JPEGHEIGHT = 0, 4, 5, 6
TJPF_RGB = 0
MCU_WIDTH = {0: 8, 1: 16, 2: 16, 3: 8, 4: 8, 5: 32, 6: 8}  # tjMCUWidth by TJSAMP (444, 422, 420, gray, 440, 411, 441)


class ScalingFactor(ctypes.Structure):
    _fields_ = [("num", ctypes.c_int), ("denom", ctypes.c_int)]


class Region(ctypes.Structure):
    _fields_ = [("x", ctypes.c_int), ("y", ctypes.c_int), ("w", ctypes.c_int), ("h", ctypes.c_int)]


def _candidates():
    if os.environ.get("SSLKIT_TURBOJPEG"):
        yield os.environ["SSLKIT_TURBOJPEG"]
        return
    spec = importlib.util.find_spec("turbojpeg")  # its wheel's bundled libturbojpeg (libjpeg-turbo 3)
    if spec is not None and spec.origin:
        yield from sorted(glob.glob(str(Path(spec.origin).parent / "turbojpeg.libs" / "libturbojpeg*.so*")))
    system = ctypes.util.find_library("turbojpeg")
    if system:
        yield system


def _load() -> Optional[ctypes.CDLL]:
    for path in _candidates():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        if not hasattr(lib, "tj3SetCroppingRegion"):
            continue  # TurboJPEG 2 has no partial decode
        lib.tj3Init.restype, lib.tj3Init.argtypes = ctypes.c_void_p, [ctypes.c_int]
        lib.tj3Set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
        lib.tj3Get.argtypes = [ctypes.c_void_p, ctypes.c_int]
        lib.tj3DecompressHeader.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
        lib.tj3SetScalingFactor.argtypes = [ctypes.c_void_p, ScalingFactor]
        lib.tj3SetCroppingRegion.argtypes = [ctypes.c_void_p, Region]
        lib.tj3Decompress8.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_void_p,
                                       ctypes.c_int, ctypes.c_int]
        lib.tj3GetErrorStr.restype, lib.tj3GetErrorStr.argtypes = ctypes.c_char_p, [ctypes.c_void_p]
        log.debug("region decoding with %s", path)
        return lib
    log.info("no libturbojpeg 3 found (pip install turbojpeg, or set SSLKIT_TURBOJPEG): JPEGs are decoded whole")
    return None


_lib: Optional[ctypes.CDLL] = None
_loaded = False
_local = threading.local()  # a TurboJPEG handle holds per-decode state: one per thread, and per process


def _library() -> Optional[ctypes.CDLL]:
    global _lib, _loaded
    if not _loaded:
        _lib, _loaded = _load(), True
    return _lib


def available() -> bool:
    return _library() is not None


def _handle(lib) -> int:
    pid = os.getpid()
    if getattr(_local, "pid", None) != pid:  # a forked loader worker makes its own
        _local.handle, _local.pid = lib.tj3Init(TJINIT_DECOMPRESS), pid
        lib.tj3Set(_local.handle, TJPARAM_STOPONWARNING, 1)  # a warning (corrupt data) fails the decode
    return _local.handle


def scan_start(data: bytes) -> Optional[int]:
    """Offset of the first scan's entropy-coded data (after the SOS segment), walking the marker segments."""
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        if data[i + 1] == 0xFF:  # fill byte
            i += 1
            continue
        end = i + 2 + int.from_bytes(data[i + 2:i + 4], "big")
        if data[i + 1] == 0xDA:
            return end
        i = end
    return None


def ends(data: bytes) -> bool:
    """An EOI marker after the first scan: entropy-coded data never holds 0xFFD9, so the file is not cut short
    (an EXIF thumbnail's EOI comes before the scan)."""
    start = scan_start(data)
    return start is not None and data.rfind(b"\xff\xd9", start) != -1


def decode_region(data: bytes, scale: int, region: Tuple[int, int, int, int]) -> Optional[np.ndarray]:
    """The ``region`` (top, left, height, width, on the image decoded at 1/``scale``) as uint8 [height, width, 3];
    None where the library is missing or the file needs the strict decoders' judgement (a warning, no end)."""
    lib = _library()
    if lib is None or not ends(data):
        return None
    handle = _handle(lib)
    if lib.tj3DecompressHeader(handle, data, len(data)) != 0:
        return None
    subsamp = lib.tj3Get(handle, TJPARAM_SUBSAMP)
    if subsamp not in MCU_WIDTH:
        return None
    height, width = (-(-lib.tj3Get(handle, p) // scale) for p in (TJPARAM_JPEGHEIGHT, TJPARAM_JPEGWIDTH))
    top, left, h, w = region
    mcu = -(-MCU_WIDTH[subsamp] // scale)
    x0 = max(left - MARGIN, 0) // mcu * mcu
    y0, x1, y1 = max(top - MARGIN, 0), min(left + w + MARGIN, width), min(top + h + MARGIN, height)
    out = np.empty((y1 - y0, x1 - x0, 3), np.uint8)
    if (lib.tj3SetScalingFactor(handle, ScalingFactor(1, scale)) != 0
            or lib.tj3SetCroppingRegion(handle, Region(x0, y0, x1 - x0, y1 - y0)) != 0):
        return None
    ok = lib.tj3Decompress8(handle, data, len(data), out.ctypes.data, out.shape[1] * 3, TJPF_RGB) == 0
    return out[top - y0:top - y0 + h, left - x0:left - x0 + w] if ok else None
