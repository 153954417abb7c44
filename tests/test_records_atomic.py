"""The records the ladder, the report and the demo keep (issue 22, part 1): a write that fails midway (a full
disk) leaves the earlier file whole, or none, never a half-written one. Each test fills the disk, in effect, while
one named file is written: the fake ``open`` writes half of what it is given to that file, then fails as a full
disk does."""
import builtins
import errno
import importlib.util
import io
import json
import sys
from pathlib import Path

import pytest

from conftest import REPO


class HalfWritten:
    """A file whose first write stores half of its text and then fails with ENOSPC."""

    def __init__(self, f):
        self._f = f

    def write(self, data):
        self._f.write(data[: len(data) // 2])
        self._f.flush()
        raise OSError(errno.ENOSPC, "No space left on device")

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


def fill_disk_at(monkeypatch, name: str):
    """From now on, writing a file called ``name`` (or a temp file beside it for ``name``: ``.name.*.tmp``) fails
    midway; every other file is written as usual."""
    real_open = builtins.open

    def fake_open(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        base = Path(str(file)).name if isinstance(file, (str, Path)) else ""
        if ("w" in mode or "a" in mode) and (base == name or base.startswith(f".{name}.")):
            return HalfWritten(f)
        return f

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(io, "open", fake_open)  # pathlib's Path.open / write_text


def contents(folder: Path):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def knn_run(root: Path, name: str, top1: float):
    from transfer.results import write_results

    return write_results(root / name, "knn", "resnet18", name, {"top1": top1, "top5": 90.0}, {"k": 20})


@pytest.mark.parametrize("victim", ["report.md", "knn.md", "knn.csv"])
def test_a_report_rerun_that_fails_midway_leaves_the_earlier_report(victim, tmp_path, monkeypatch):
    from pretrain.errors import DiskFull
    from transfer.report import load_runs, write_report

    runs, out = tmp_path / "runs", tmp_path / "report"
    knn_run(runs, "supervised", 40.0)
    knn_run(runs, "moco_v2", 45.0)
    write_report(load_runs([runs]), out, include_published=False)
    before = contents(out)
    knn_run(runs, "random", 10.0)  # a rerun has one more row
    fill_disk_at(monkeypatch, victim)
    with pytest.raises(OSError) as failed:
        write_report(load_runs([runs]), out, include_published=False)
    assert contents(out)[victim] == before[victim]  # the earlier one, whole
    assert sorted(p.name for p in out.iterdir()) == sorted(before)  # and no temp file left beside it
    assert isinstance(failed.value, DiskFull) and f"disk full writing {out / victim}" in str(failed.value)


@pytest.fixture
def knn_plan(moco_r18, tmp_path):
    """A ladder plan of the kNN rung, two seeds a side, each with its results."""
    from transfer import ladder
    from transfer.results import write_results

    for split in ("train", "val"):
        (tmp_path / "imagenet" / split).mkdir(parents=True)
    p = ladder.plan(moco_r18, tmp_path / "ladder", ["knn"], {"imagenet": str(tmp_path / "imagenet")}, 2, "random")
    for i, job in enumerate(p.jobs):
        write_results(job.folder, "knn", "resnet18", "random" if job.subject.role == "baseline" else "moco_v2",
                      {"top1": 30.0 + 10 * (job.subject.role == "pretrained") + i, "top5": 80.0}, {"k": 20})
    return p


def test_a_ladder_report_is_written_whole_verdicts_included(knn_plan, monkeypatch):
    """The verdicts are part of report.md's one write (they were appended after it): a rerun failing on report.md
    keeps the earlier report, verdicts and all."""
    from pretrain.errors import DiskFull
    from transfer import ladder

    path = ladder.write_ladder_report(knn_plan)
    earlier = path.read_text()
    assert "## Verdicts" in earlier and "- knn: top1 " in earlier and earlier.endswith("\n")
    assert earlier.index("### knn") < earlier.index("## Verdicts")  # tables first, then the verdicts
    fill_disk_at(monkeypatch, "report.md")
    with pytest.raises(OSError) as failed:
        ladder.write_ladder_report(knn_plan)
    assert path.read_text() == earlier
    assert isinstance(failed.value, DiskFull)


def test_a_failed_jobs_record_is_whole_or_absent(knn_plan, monkeypatch):
    """failed.json says a job failed and where its log is: a full disk while writing it leaves none (the job then
    counts as started, and is resumed) and ends the ladder naming the file, never a half-written record."""
    import transfer.warm_start
    from pretrain.errors import DiskFull
    from transfer import ladder

    job = knn_plan.jobs[0]
    job.results.unlink()  # the job did not finish
    monkeypatch.setattr(transfer.warm_start, "call", lambda cmd, log, env, cwd, warm: 1)  # the tool fails
    assert ladder.run_job(job, resume=False) == 1
    record = json.loads(job.failure.read_text())  # as before: the record of the failure
    assert record["returncode"] == 1 and record["log"] == str(job.log)
    fill_disk_at(monkeypatch, "failed.json")
    with pytest.raises(OSError) as failed:
        ladder.run_job(job, resume=True)
    assert not job.failure.exists() and ladder.job_state(job) == "started"
    assert not list(Path(job.folder).glob(".failed.json.*"))
    assert isinstance(failed.value, DiskFull) and str(job.failure) in str(failed.value)


def test_a_demo_stage_is_marked_done_only_when_its_stamp_is_whole(tmp_path, monkeypatch):
    """A stage's stamp file says it finished (a rerun skips it): a failed write must not leave one behind."""
    spec = importlib.util.spec_from_file_location("tools_demo", REPO / "tools" / "demo.py")
    demo = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, demo)
    spec.loader.exec_module(demo)
    run = demo.Demo(tmp_path / "demo", demo.QUICK)
    run.mark("figures")
    assert run.done("figures")
    fill_disk_at(monkeypatch, "data")
    with pytest.raises(OSError) as failed:
        run.mark("data")
    assert not run.done("data")
    assert "disk full writing" in str(failed.value)
