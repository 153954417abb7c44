"""Run logs: a JSON-lines file (one record per logged step) and TensorBoard scalars.

Only the main process writes; other ranks get a logger that does nothing.
"""
from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Optional


def setup_logging(output_dir: Optional[str] = None, is_main: bool = True, name: str = "log.txt"):
    """Console (main process) and ``output_dir/log.txt`` logging for the stdlib logger."""
    root = logging.getLogger()
    root.setLevel(logging.INFO if is_main else logging.WARNING)
    fmt = logging.Formatter("[%(asctime)s %(name)s] %(levelname)s %(message)s", "%m/%d %H:%M:%S")
    for h in list(root.handlers):
        if getattr(h, "_sslkit", False):
            root.removeHandler(h)
    handlers = [logging.StreamHandler(sys.stderr)]
    if output_dir and is_main:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(Path(output_dir) / name))
    for h in handlers:
        h.setFormatter(fmt)
        h._sslkit = True
        root.addHandler(h)


class MetricLogger:
    """Appends ``{"step": ..., **scalars}`` to ``metrics.jsonl`` and mirrors it to TensorBoard."""

    def __init__(self, output_dir: Optional[str], enabled: bool = True, tensorboard: bool = True):
        self.enabled = enabled and output_dir is not None
        self._tb = None
        if not self.enabled:
            return
        self.dir = Path(output_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._file = open(self.dir / "metrics.jsonl", "a", buffering=1)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.dir / "tb"))
            except ImportError:
                logging.getLogger(__name__).warning("tensorboard is not installed: no TensorBoard scalars")

    def log(self, step: int, prefix: str = "train", **scalars):
        if not self.enabled:
            return
        record = {"step": step, "time": round(time.time(), 3), **{k: _plain(v) for k, v in scalars.items()}}
        self._file.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for k, v in scalars.items():
                if isinstance(v, (int, float)):
                    self._tb.add_scalar(f"{prefix}/{k}", v, step)

    def close(self):
        if self.enabled:
            self._file.close()
            if self._tb is not None:
                self._tb.close()


def _plain(v):
    if hasattr(v, "item"):
        return v.item()
    return v
