"""Progress displays: a tqdm bar on a terminal, plain lines (no carriage returns) in a log file."""
import io
import os
import re
import subprocess
import sys

import pytest
from tqdm import tqdm

from conftest import REPO
from pretrain.logger import PlainProgress, progress


class Clock:
    """A clock the test moves by hand, so the time rule is tested without sleeping."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_log_file_gets_a_line_at_every_tenth_and_no_carriage_return():
    log, clock = io.StringIO(), Clock()
    bar = progress(50, "epoch 3", stream=log, clock=clock)
    assert isinstance(bar, PlainProgress)
    for step in range(1, 51):
        bar.set_postfix(loss=f"{1 / step:.4f}", lr="1.20e-04", data="3%")
        bar.update(1)
        clock.now += 1.0  # 50 s in all, never 30 s between two tenths
    bar.close()
    text = log.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert [int(re.match(r"epoch 3: (\d+)/50 ", line).group(1)) for line in lines] == list(range(5, 51, 5))
    assert lines[2] == "epoch 3: 15/50 (30%) loss=0.0667 lr=1.20e-04 data=3%"


def test_thirty_seconds_without_a_line_writes_one():
    log, clock = io.StringIO(), Clock()
    bar = progress(1000, "epoch 0", stream=log, clock=clock)
    bar.update(1)
    clock.now = 29.0
    bar.update(1)
    assert log.getvalue() == ""  # neither a tenth nor 30 s yet
    clock.now = 30.0
    bar.update(1)
    assert log.getvalue() == "epoch 0: 3/1000 (0%)\n"
    clock.now = 59.0
    bar.update(1)
    assert log.getvalue().count("\n") == 1  # 30 s counted from the last line, not from the start
    clock.now = 60.0
    bar.update(1)
    assert log.getvalue().splitlines()[-1] == "epoch 0: 5/1000 (0%)"


def test_the_end_is_written_once_and_a_resumed_epoch_counts_from_its_position():
    log = io.StringIO()
    bar = progress(20, "epoch 1", initial=12, stream=log, clock=Clock())
    bar.update(1)  # 13/20 crosses no tenth beyond 60% (12/20)
    assert log.getvalue() == ""
    bar.close()  # a run stopped mid-epoch still says where it stopped
    assert log.getvalue() == "epoch 1: 13/20 (65%)\n"
    log = io.StringIO()
    bar = progress(4, "scenes", stream=log, clock=Clock())
    for _ in range(4):
        bar.update(1)
    bar.close()
    assert log.getvalue().splitlines()[-1] == "scenes: 4/4 (100%)"
    assert log.getvalue().count("4/4") == 1


def test_a_terminal_gets_tqdm_and_disabled_progress_writes_nothing():
    bar = progress(10, "epoch 0", stream=Terminal())
    assert isinstance(bar, tqdm) and not bar.disable
    bar.close()
    log = io.StringIO()
    bar = progress(10, "epoch 0", enabled=False, stream=log)
    for _ in range(10):
        bar.update(1)
    bar.set_postfix(loss="1.0")
    bar.close()
    assert log.getvalue() == ""


@pytest.mark.slow
def test_pretraining_logged_to_a_file_has_plain_progress_lines(tmp_path):
    """stderr redirected to a file, as under SLURM or CI: progress arrives as whole lines, never redraws.
    (Read as bytes: text mode would turn a carriage return into a newline.)"""
    log = tmp_path / "stderr.log"
    with open(log, "wb") as stderr:
        subprocess.run([sys.executable, "tools/pretrain_net.py", "configs/pretrain/mae_vit_tiny_cpu.yaml",
                        "data.img_size=32", "data.synthetic_images=64", "data.num_workers=0", "train.batch_size=8",
                        "train.epochs=1", "optim.warmup_epochs=0", "train.log_every=1", "train.tensorboard=false",
                        "train.progress=true", f"train.output_dir={tmp_path}/run"], cwd=REPO, stderr=stderr,
                       stdout=subprocess.DEVNULL, timeout=600, check=True,
                       env={**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"})
    text = log.read_bytes().decode()
    assert "\r" not in text
    lines = [line for line in text.split("\n") if line.startswith("epoch 0: ")]
    # 8 steps: a line at each eighth (each crosses a tenth), the last with the step's loss.
    assert [line.split()[2] for line in lines] == [f"{n}/8" for n in range(1, 9)]
    assert re.fullmatch(r"epoch 0: 8/8 \(100%\) loss=\d+\.\d{4} lr=\S+ data=\d+%", lines[-1])
