"""Which autocast dtype a run uses (``train.amp``, the frozen rungs' ``--precision``), decided from what the
hardware does rather than from its name.

* CUDA: bf16 only where the GPU multiplies bf16 natively (compute capability 8.0+: A100, H100, RTX 30xx on).
  ``torch.cuda.is_bf16_supported()`` also says yes on a V100 / T4, where bf16 is emulated and slow, so it is
  not asked.
* CPU: whether bf16 pays depends on the matrix unit and on what oneDNN makes of it (AMX, AVX512-BF16, or
  neither, and a virtual machine may hide the flags), so it is measured: a few matrix products at the model's
  own widths, fp32 against bf16 autocast, a few ms each. The result is cached per machine in
  ``$SSLKIT_CACHE/precision.json`` (default ``~/.cache/sslkit``), keyed by CPU model, torch version, thread
  count and shapes, and logged with the choice.
"""
from __future__ import annotations

import json
import logging
import os
import platform
import time
from collections import Counter
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["AMP_DTYPES", "autocast_dtype", "precision_name", "cuda_native_bf16", "matmul_shapes",
           "measure_cpu_bf16", "time_matmul", "cache_path", "cpu_name", "DEFAULT_SHAPES"]

log = logging.getLogger(__name__)

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# Rows of the measured products: a step has many more (tokens x images), but a few dozen already
# run the kernels a step runs, and keep the measurement short where bf16 is slow.
ROWS = 64
# (M, K, N) when no model is given: a ViT-B block's (qkv / fc1 / fc2 at width 768).
DEFAULT_SHAPES: Tuple[Tuple[int, int, int], ...] = ((ROWS, 768, 2304), (ROWS, 768, 3072), (ROWS, 3072, 768))
BUDGET_S = 0.02  # per shape and dtype, after one warm-up product: as many repeats as fit (at least one)


def precision_name(dtype: Optional[torch.dtype]) -> str:
    """The dtype as results files and logs name it: fp32 (no autocast), bf16, fp16."""
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def cuda_native_bf16(device: torch.device) -> bool:
    """Whether this GPU multiplies bf16 in hardware (compute capability 8.0+)."""
    return torch.cuda.get_device_capability(device)[0] >= 8


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def matmul_shapes(model: nn.Module, rows: int = ROWS, count: int = 3) -> Tuple[Tuple[int, int, int], ...]:
    """The ``count`` matrix products that weigh most in ``model``: its linear layers (K = in, N = out) and
    convolutions (K = in x kernel area / groups, N = out channels) as ``(rows, K, N)``, ranked by their
    weights' total size (a transformer runs every token through each)."""
    weight: Counter = Counter()
    for m in model.modules():
        if isinstance(m, nn.Linear):
            k, n = m.in_features, m.out_features
        elif isinstance(m, nn.Conv2d):
            k, n = m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1], m.out_channels
        else:
            continue
        weight[(k, n)] += k * n
    top = [kn for kn, _ in weight.most_common(count)]
    return tuple((rows, k, n) for k, n in sorted(top)) or DEFAULT_SHAPES


def time_matmul(shape: Tuple[int, int, int], bf16: bool) -> float:
    """Seconds of one ``[M, K] @ [K, N]`` product on the CPU, fp32 or under bf16 autocast (fp32 operands cast
    by autocast, as in a training step): the best of the repeats that fit ``BUDGET_S`` after a warm-up."""
    m, k, n = shape
    gen = torch.Generator().manual_seed(0)
    x, w = torch.randn(m, k, generator=gen), torch.randn(n, k, generator=gen)
    best, spent = float("inf"), 0.0
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        F.linear(x, w)  # warm-up: oneDNN builds its kernel on the first call
        while spent < BUDGET_S or best == float("inf"):
            start = time.perf_counter()
            F.linear(x, w)
            took = time.perf_counter() - start
            best, spent = min(best, took), spent + took
    return best


def cache_path() -> Path:
    return Path(os.environ.get("SSLKIT_CACHE") or Path.home() / ".cache" / "sslkit") / "precision.json"


def measure_cpu_bf16(shapes: Sequence[Tuple[int, int, int]] = DEFAULT_SHAPES) -> Dict:
    """``{"cpu", "fp32_ms", "bf16_ms", "speedup", ...}`` for ``shapes`` on this CPU (speed-up > 1: bf16
    autocast is faster), from the cache when this machine measured them before."""
    key = f"{cpu_name()} | torch {torch.__version__} | {torch.get_num_threads()} threads | " \
          f"{' '.join('x'.join(map(str, s)) for s in shapes)}"
    path = cache_path()
    try:
        cache = json.loads(path.read_text())
    except (OSError, ValueError):
        cache = {}
    if key in cache:
        return dict(cache[key], cached=True)
    fp32 = sum(time_matmul(tuple(s), bf16=False) for s in shapes)
    bf16 = sum(time_matmul(tuple(s), bf16=True) for s in shapes)
    record = {"cpu": cpu_name(), "shapes": [list(s) for s in shapes], "fp32_ms": round(fp32 * 1e3, 3),
              "bf16_ms": round(bf16 * 1e3, 3), "speedup": round(fp32 / bf16, 3)}
    try:  # write-then-rename: processes starting together never read half a file
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({**cache, key: record}, indent=1))
        tmp.replace(path)
    except OSError as e:
        log.warning("could not cache the precision measurement in %s: %s", path, e)
    return dict(record, cached=False)


def _measured(shapes) -> Tuple[bool, str]:
    """(bf16 autocast is faster on this CPU, the measurement in words). Under several processes rank 0
    measures (alone on the cores) and every process takes its result: they all run in one precision."""
    if dist.is_available() and dist.is_initialized():
        box = [measure_cpu_bf16(shapes) if dist.get_rank() == 0 else None]
        dist.broadcast_object_list(box, src=0)
        m = box[0]
    else:
        m = measure_cpu_bf16(shapes)
    widths = sorted({w for s in m["shapes"] for w in s[1:]})
    if m["speedup"] >= 1:
        ratio = f"bf16 matrix products {m['speedup']:.2f}x as fast as fp32"
    else:
        ratio = f"bf16 matrix products {1 / m['speedup']:.2f}x slower than fp32"
    return m["speedup"] > 1, (f"measured{' before' if m['cached'] else ''}: {ratio} "
                              f"({m['bf16_ms']:.1f} vs {m['fp32_ms']:.1f} ms) at widths "
                              f"{', '.join(map(str, widths))} on {m['cpu']}")


def autocast_dtype(amp: str, device: torch.device, shapes: Sequence[Tuple[int, int, int]] = DEFAULT_SHAPES,
                   setting: str = "train.amp") -> Optional[torch.dtype]:
    """``train.amp`` -> the autocast dtype (None: fp32). ``auto``: bf16 on a GPU with native bf16, fp32 on
    other GPUs; on a CPU bf16 where it measures faster at ``shapes`` (``matmul_shapes(model)``: the model's
    widths), logged with the reason. An explicit ``bf16`` where it is emulated or measures slower runs, with a
    warning that says why. ``setting``: what the messages call the choice."""
    if amp not in AMP_DTYPES and amp != "auto":
        raise ValueError(f"{setting} must be none, bf16, fp16 or auto, got {amp!r}")
    if amp == "fp16" and device.type != "cuda":
        raise ValueError(f"{setting}=fp16 needs CUDA; use bf16 on CPU")
    if amp not in ("auto", "bf16") or device.type not in ("cuda", "cpu"):
        return AMP_DTYPES["none" if amp == "auto" else amp]
    if device.type == "cuda":
        fast = cuda_native_bf16(device)
        major, minor = torch.cuda.get_device_capability(device)
        reason = (f"{torch.cuda.get_device_name(device)}, compute capability {major}.{minor}: bf16 "
                  + ("native" if fast else "emulated (native from 8.0)"))
    else:
        fast, reason = _measured(shapes)
    if amp == "auto":
        log.info("%s=auto: %s (%s)", setting, "bf16" if fast else "fp32", reason)
        return torch.bfloat16 if fast else None
    if not fast:
        log.warning("%s=bf16 is slower than fp32 here (%s); %s=auto picks fp32", setting, reason, setting)
    return torch.bfloat16
