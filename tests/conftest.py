"""Shared test helpers. Collection imports nothing heavy: tests import torch & co. themselves."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SSLKIT_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared_data(name: str) -> Path:
    """A folder of ../shared/data (small real datasets); skips the test when absent."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"real-data folder {path} is absent (a fresh clone has no ../shared/data)")
    return path


def run_tool(*args, cwd=REPO, timeout=600, env=None, check=True):
    """Run ``python tools/<script> ...`` as a user would; returns the CompletedProcess."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "CUDA_VISIBLE_DEVICES": "", **(env or {})}
    proc = subprocess.run([sys.executable, *map(str, args)], cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} exited {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\n"
                             f"stderr:\n{proc.stderr[-5000:]}")
    return proc


@pytest.fixture
def tiny_mae_overrides(tmp_path):
    """Overrides that make MAE pretraining take seconds on a CPU."""
    return [
        "model.arch=mae_vit_pico_patch8", "model.decoder_depth=1", "model.decoder_embed_dim=32",
        "model.decoder_num_heads=2", "data.img_size=32", "data.synthetic_images=32", "data.num_workers=0",
        "train.batch_size=8", "train.epochs=2", "train.device=cpu", "train.progress=false",
        "train.tensorboard=false", "optim.warmup_epochs=1", "train.log_every=1", f"train.output_dir={tmp_path}/run",
    ]
