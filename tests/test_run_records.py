"""A run's records are never lost or misread: a resumed run restores its pretrained weights from its own
saved config, an evaluation never replaces the training run's results.json, and the files a run writes
beside its checkpoints are replaced atomically (a full disk leaves the old file and names it)."""
import errno
import json
import os
from pathlib import Path

import pytest

from conftest import run_tool
from test_classification_protocols import data, mae_file  # noqa: F401  (module fixtures)


def read_json(path):
    return json.loads(Path(path).read_text())


def cls_args(data, out):
    """A tiny MAE linear probe from the CPU config: 2 epochs of 8 steps on 32 px colour classes."""
    return ["tools/train_cls.py", "configs/classification/mae_vit_pico_linear_cpu.yaml", f"data.path={data}",
            "data.img_size=32", "data.num_workers=0", "train.epochs=2", "train.batch_size=8",
            "optim.warmup_epochs=0", "train.progress=false", "train.tensorboard=false", f"train.output_dir={out}"]


@pytest.fixture(scope="module")
def resumed_run(data, mae_file, tmp_path_factory):  # noqa: F811
    """Stopped after 3 steps with --checkpoint, then resumed with --resume alone (as docs/classification.md)."""
    out = tmp_path_factory.mktemp("resumed")
    run_tool(*cls_args(data, out), "--checkpoint", str(mae_file), "--max-iters", "3")
    assert not (out / "results.json").exists()  # stopped early: no results yet
    proc = run_tool(*cls_args(data, out), "--resume", check=False)
    return out, proc


@pytest.mark.slow
def test_resume_without_checkpoint_flag_restores_the_pretrained_weights(resumed_run, mae_file):  # noqa: F811
    out, proc = resumed_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "training from random initialisation" not in proc.stderr
    assert "resumed from" in proc.stderr and "sanity check passed" in proc.stderr
    res = read_json(out / "results.json")
    assert res["checkpoint"] == str(mae_file) and res["pretrain"] == "mae"
    assert res["metrics"]["top1_best"] is not None and res["recipe"]["epochs"] == 2
    assert f"checkpoint: {mae_file}" in (out / "config.yaml").read_text()  # still the run's own record


@pytest.mark.slow
def test_eval_only_keeps_the_training_runs_results(data, mae_file, tmp_path):  # noqa: F811
    out = tmp_path / "run"
    run_tool(*cls_args(data, out), "--checkpoint", str(mae_file))
    before, config = (out / "results.json").read_text(), (out / "config.yaml").read_text()
    trained = json.loads(before)
    evaluated = run_tool(*cls_args(data, out), "--eval-only", "--resume")
    assert "evaluating" in evaluated.stderr
    assert (out / "results.json").read_text() == before  # every field of the training run's record kept
    assert trained["best_epoch"] is not None and trained["metrics"]["top1_best"] is not None
    assert (out / "config.yaml").read_text() == config  # the run's config (what --resume restores) too
    assert (out / "config_eval.yaml").is_file()
    ev = read_json(out / "results_eval.json")
    assert ev["recipe"]["eval_only"] and "epochs" not in ev["recipe"]
    # the same classifier, the same validation images: the final epoch's top-1 again
    assert ev["metrics"]["top1"] == pytest.approx(trained["metrics"]["top1"])
    assert ev["checkpoint"] == str(mae_file)


# ------------------------------------------------------------ a full disk
class DiskFullAfterHalf:
    """``open`` for files under ``folder``: writes stop half-way through with ENOSPC, as on a full disk."""

    def __init__(self, real_open, folder):
        self.real_open, self.folder = real_open, str(folder)

    def __call__(self, file, mode="r", *args, **kwargs):
        f = self.real_open(file, mode, *args, **kwargs)
        if "w" not in mode or not str(file).startswith(self.folder):
            return f
        real_write = f.write

        def write(data):
            real_write(data[: len(data) // 2])
            f.flush()
            raise OSError(errno.ENOSPC, "No space left on device")

        f.write = write
        return f


def write_raw(path, data: bytes):
    """Write a file below ``open`` (the full disk's fake sees only ``open``)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


@pytest.fixture
def full_disk(tmp_path, monkeypatch):
    """Files written under tmp_path/full hit a full disk, through ``open`` and ``Path.write_text`` alike."""
    import builtins
    import io

    folder = tmp_path / "full"
    folder.mkdir()
    fake = DiskFullAfterHalf(builtins.open, folder)
    monkeypatch.setattr(builtins, "open", fake)
    monkeypatch.setattr(io, "open", fake)
    return folder


def test_full_disk_leaves_the_earlier_config_and_names_it(full_disk):
    from pretrain.config import RunConfig
    from pretrain.trainer import start_run

    old = "model:\n  checkpoint: pretrained.pth\n"
    write_raw(full_disk / "config.yaml", old.encode())
    with pytest.raises(OSError, match=rf"disk full writing {full_disk / 'config.yaml'}") as e:
        start_run(RunConfig(device="cpu", output_dir=str(full_disk)), "model:\n  checkpoint: other.pth\n" * 50)
    assert e.value.errno == errno.ENOSPC
    assert (full_disk / "config.yaml").read_bytes() == old.encode()
    assert not [p for p in full_disk.iterdir() if p.name.endswith(".tmp")]  # no temp file left behind


def test_full_disk_leaves_the_earlier_results_and_names_them(full_disk):
    from transfer.results import write_results

    old = json.dumps({"task": "knn", "metrics": {"top1": 50.0}}).encode()
    write_raw(full_disk / "results.json", old)
    with pytest.raises(OSError, match=rf"disk full writing {full_disk / 'results.json'}"):
        write_results(full_disk, task="knn", backbone="resnet18", pretrain="moco_v2",
                      metrics={"top1": 61.0, "top5": 90.0}, recipe={"k": 20, "notes": "x" * 10000})
    assert (full_disk / "results.json").read_bytes() == old
    assert not [p for p in full_disk.iterdir() if p.name.endswith(".tmp")]


def test_write_text_atomic_replaces_whole_files(tmp_path):
    from pretrain.checkpoint import write_text_atomic

    path = write_text_atomic(tmp_path / "new" / "plan.txt", "first\n")
    assert path.read_text() == "first\n"
    write_text_atomic(path, "second\n")
    assert path.read_text() == "second\n" and [p.name for p in path.parent.iterdir()] == ["plan.txt"]


def test_full_disk_while_saving_a_checkpoint_is_disk_full(full_disk):
    import torch

    from pretrain.checkpoint import save_atomic
    from pretrain.errors import DiskFull

    path = full_disk / "checkpoint-last.pth"
    old = b"the previous checkpoint"
    write_raw(path, old)
    with pytest.raises(DiskFull, match=rf"disk full writing {path} \(the file there before is unchanged\)") as e:
        save_atomic({"model": {"w": torch.zeros(4096)}, "epoch": 1}, path)
    assert e.value.errno == errno.ENOSPC
    assert path.read_bytes() == old
    assert [p.name for p in full_disk.iterdir()] == [path.name]  # no temp file left behind


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux), where every write fails")
def test_torch_saves_own_write_error_on_a_full_disk_is_disk_full(tmp_path, monkeypatch):
    """torch.save(obj, path) writes below Python and turns ENOSPC into a RuntimeError ("PytorchStreamWriter
    failed ..."): here the temp file is a link to /dev/full, so the operating system's own ENOSPC reaches
    whatever writes it."""
    import tempfile

    import torch

    from pretrain.checkpoint import save_atomic
    from pretrain.errors import DiskFull

    path = save_atomic({"epoch": 0}, tmp_path / "checkpoint-last.pth")
    old = path.read_bytes()
    real_mkstemp = tempfile.mkstemp

    def mkstemp_on_a_full_disk(*args, **kwargs):
        fd, tmp = real_mkstemp(*args, **kwargs)
        os.close(fd)
        os.remove(tmp)
        os.symlink("/dev/full", tmp)
        return os.open(tmp, os.O_WRONLY), tmp

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp_on_a_full_disk)
    with pytest.raises(DiskFull, match=rf"disk full writing {path}") as e:
        save_atomic({"model": {"w": torch.zeros(100_000)}, "epoch": 1}, path)
    assert e.value.errno == errno.ENOSPC
    assert path.read_bytes() == old
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # the link removed, the checkpoint kept
