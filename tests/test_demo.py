"""The demo end to end (``tools/demo.py --quick``), and the report on the output folders that
real short runs of the project's tools wrote: every number reaches the tables unchanged."""
import csv
import json
from pathlib import Path

import pytest

from conftest import run_tool

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "out"
    proc = run_tool("tools/demo.py", "--quick", "--out", out, timeout=900)
    return out, proc


def results_files(root):
    return sorted(root.rglob("results.json"))


def csv_rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def assert_reported_unchanged(result_files, report_dir):
    """Each run's every metric is in its task's CSV, bit for bit, and in the Markdown table as shown."""
    assert result_files
    for path in result_files:
        res = json.loads(path.read_text())
        rows = [r for r in csv_rows(report_dir / f"{res['task']}.csv")
                if r["origin"] == "run" and r["backbone"] == res["backbone"] and r["pretrain"] == res["pretrain"]]
        assert len(rows) == 1, (path, rows)
        md = (report_dir / f"{res['task']}.md").read_text()
        for metric, value in res["metrics"].items():
            cell = rows[0].get(metric)
            if value is None:
                assert cell == "", (path, metric)
                continue
            assert cell is not None, f"{metric} of {path} is not in the table"
            assert float(cell) == value, (path, metric, cell, value)
        for metric in ("mIoU", "top1", "box_AP", "mask_AP"):
            if res["metrics"].get(metric) is not None:
                assert f"{res['metrics'][metric]:.2f}" in md, (path, metric)


def ladder_jobs(out, method):
    plan = json.loads(next((out / "ladder" / method).glob("*/plan.json")).read_text())
    return plan, [(job, json.loads((Path(job["folder"]) / "results.json").read_text())) for job in plan["jobs"]]


def welch_word(pretrained, baseline):
    """The verdict re-derived from the seeds' values: scipy's Welch test, p < 0.05."""
    from scipy import stats

    if len(pretrained) < 2 or len(baseline) < 2:
        return "undecided"
    gap = sum(pretrained) / len(pretrained) - sum(baseline) / len(baseline)
    if len(set(pretrained)) == 1 and len(set(baseline)) == 1:
        return "better" if gap > 0 else "worse" if gap < 0 else "no clear difference"
    p = stats.ttest_ind(pretrained, baseline, equal_var=False).pvalue
    return ("better" if gap > 0 else "worse") if p < 0.05 else "no clear difference"


def test_quick_demo_runs_the_pipeline_through_the_ladder_with_seeds(demo):
    from transfer.detection import detectron2_available
    from transfer.ladder.rung import primary_metric

    out, proc = demo
    assert (out / "pretrain" / "mae" / "checkpoint-last.pth").is_file()
    assert (out / "pretrain" / "moco" / "checkpoint_last.pth.tar").is_file()
    assert len(list((out / "figures").glob("*.png"))) >= 1
    verdict = (out / "report" / "report.md").read_text().split("## Verdict")[1]
    expected_rungs = {"mae": ["knn", "linear", "dense_probe", "segmentation"],
                      "moco": ["knn", "linear", "dense_probe", "segmentation"]}
    for method, label in (("mae", "mae"), ("moco", "moco_v2")):
        plan, jobs = ladder_jobs(out, method)
        rungs = expected_rungs[method] + (["detection"] if detectron2_available() else [])
        assert sorted({j["rung"] for j, _ in jobs}) == sorted(rungs)
        section = verdict.split(f"({method} pretraining)")[1].split("(moco pretraining)")[0].split("A verdict is")[0]
        for rung in rungs:
            values = {}
            for job, rec in jobs:
                if job["rung"] == rung:
                    role = job["subject"]["role"]
                    assert rec["pretrain"] == (label if role == "pretrained" else "random")
                    values.setdefault(role, []).append(rec["metrics"][primary_metric(rec["task"])])
            seeds = 1 if rung in ("segmentation", "detection") else 2  # QUICK's seeds
            assert len(values["pretrained"]) == len(values["baseline"]) == seeds, (method, rung)
            line = next(ln for ln in section.splitlines() if ln.startswith(f"- {rung}: "))
            assert f"(n={seeds})" in line
            assert f"**{welch_word(values['pretrained'], values['baseline'])}**" in line, line
        # Each ladder's own report: mean ± std tables and the training curves.
        report = next((out / "ladder" / method).glob("*/report/report.md")).read_text()
        assert " ± " in report and "curves.png" in report
    assert "demo finished" in proc.stdout and proc.stdout.count(": starting ...") >= 24


def test_rerun_resumes_instead_of_starting_over(demo):
    out, _ = demo
    before = {p: p.stat().st_mtime_ns for p in results_files(out / "ladder")}
    proc = run_tool("tools/demo.py", "--quick", "--out", out, timeout=300)
    assert proc.stdout.count("done earlier, skipped") == 6
    assert {p: p.stat().st_mtime_ns for p in results_files(out / "ladder")} == before
    bigger = run_tool("tools/demo.py", "--out", out, check=False)  # another size into the same folder
    assert bigger.returncode != 0 and "another size" in bigger.stderr


def test_report_of_classification_segmentation_and_detection_runs(demo, tmp_path):
    """A linear probe of the demo's own MoCo checkpoint joins the demo's transfer runs in one report."""
    out, _ = demo
    # One seed of each rung and subject; not the MoCo ladder's linear probe, which the run below replaces.
    runs = [r for r in sorted((out / "ladder").glob("*/*/*/*/seed0")) if r.parts[-3] != "linear" or "mae" in r.parts]
    cls_dir = tmp_path / "moco_linear"
    run_tool("tools/train_cls.py", "configs/classification/moco_r18_linear_cpu.yaml",
             "--checkpoint", out / "pretrain" / "moco" / "checkpoint_last.pth.tar",
             "data.img_size=32", "data.synthetic_per_class=8", "data.num_workers=0", "train.epochs=1",
             "train.batch_size=16", "train.progress=false", "train.tensorboard=false", f"train.output_dir={cls_dir}")
    report = tmp_path / "report"
    proc = run_tool("tools/report.py", *runs, cls_dir, "--out", report, "--baseline", "random")
    files = [r / "results.json" for r in runs] + results_files(cls_dir)
    assert f"{len(files)} runs" in proc.stdout
    assert_reported_unchanged(files, report)
    lin = next(r for r in csv_rows(report / "imagenet_linear.csv") if r["origin"] == "run")
    assert lin["backbone"] == "resnet18" and lin["pretrain"] == "moco_v2"
    # Published ImageNet-linear numbers are for ResNet-50: not the run's backbone, so not its comparison.
    assert lin["d_published_top1"] == ""


def test_data_only_writes_the_datasets_and_stops(tmp_path):
    """``--data-only``: the scenes' datasets (what configs/studies/cpu/mae_mask_ratio_scenes.yaml reads), nothing else."""
    proc = run_tool("tools/demo.py", "--quick", "--data-only", "--out", tmp_path / "demo")
    data = tmp_path / "demo" / "data"
    assert f"datasets written to {data}" in proc.stdout
    assert len(list((data / "unlabelled").glob("*.png"))) == 64
    assert (data / "seg" / "classes.txt").is_file() and (data / "coco" / "annotations").is_dir()
    assert not (tmp_path / "demo" / "pretrain").exists() and not (tmp_path / "demo" / "report").exists()
