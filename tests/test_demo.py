"""The demo end to end (``tools/demo.py --quick``), and the report on the output folders that
real short runs of the project's tools wrote: every number reaches the tables unchanged."""
import csv
import json

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


def test_quick_demo_runs_the_pipeline_and_says_whether_pretraining_helped(demo):
    out, proc = demo
    assert (out / "pretrain" / "mae" / "checkpoint-last.pth").is_file()
    assert (out / "pretrain" / "moco" / "checkpoint_last.pth.tar").is_file()
    assert len(list((out / "figures").glob("*.png"))) >= 1
    seg = {p.parent.name: json.loads(p.read_text()) for p in results_files(out / "runs") if "seg_" in str(p)}
    assert set(seg) == {"seg_vit_mae", "seg_vit_random", "seg_r18_moco", "seg_r18_random"}
    assert seg["seg_vit_mae"]["pretrain"] == "mae" and seg["seg_r18_moco"]["pretrain"] == "moco_v2"
    assert seg["seg_vit_random"]["pretrain"] == "random"
    report = (out / "report" / "report.md").read_text()
    assert "## Verdict" in report
    verdict = report.split("## Verdict")[1]
    # One line per pretrained backbone, with both numbers of the pair as the table shows them.
    for pre, rnd, backbone in (("seg_vit_mae", "seg_vit_random", "vit_pico_patch8"),
                               ("seg_r18_moco", "seg_r18_random", "resnet18")):
        line = next(line for line in verdict.splitlines() if "semantic_seg" in line and backbone in line)
        a, b = seg[pre]["metrics"]["mIoU"], seg[rnd]["metrics"]["mIoU"]
        assert f"{a:.2f} vs {b:.2f}" in line
        assert ("better than random" in line) == (a - b > 1.0)  # demo.NOISE: smaller gaps are ties
        assert ("no clear difference" in line) == (abs(a - b) <= 1.0)
    assert_reported_unchanged(results_files(out / "runs"), out / "report")
    assert "demo finished" in proc.stdout


def test_rerun_resumes_instead_of_starting_over(demo):
    out, _ = demo
    before = {p: p.stat().st_mtime_ns for p in results_files(out / "runs")}
    proc = run_tool("tools/demo.py", "--quick", "--out", out, timeout=300)
    assert proc.stdout.count("done earlier, skipped") == 6
    assert {p: p.stat().st_mtime_ns for p in results_files(out / "runs")} == before
    bigger = run_tool("tools/demo.py", "--out", out, check=False)  # another size into the same folder
    assert bigger.returncode != 0 and "another size" in bigger.stderr


def test_report_of_classification_segmentation_and_detection_runs(demo, tmp_path):
    """A linear probe of the demo's own MoCo checkpoint joins the demo's transfer runs in one report."""
    out, _ = demo
    cls_dir = tmp_path / "moco_linear"
    run_tool("tools/train_cls.py", "configs/classification/moco_r18_linear_cpu.yaml",
             "--checkpoint", out / "pretrain" / "moco" / "checkpoint_last.pth.tar",
             "data.img_size=32", "data.synthetic_per_class=8", "data.num_workers=0", "train.epochs=1",
             "train.batch_size=16", "train.progress=false", "train.tensorboard=false", f"train.output_dir={cls_dir}")
    report = tmp_path / "report"
    proc = run_tool("tools/report.py", out / "runs", cls_dir, "--out", report, "--baseline", "random")
    files = results_files(out / "runs") + results_files(cls_dir)
    assert f"{len(files)} runs" in proc.stdout
    assert_reported_unchanged(files, report)
    lin = next(r for r in csv_rows(report / "imagenet_linear.csv") if r["origin"] == "run")
    assert lin["backbone"] == "resnet18" and lin["pretrain"] == "moco_v2"
    # Published ImageNet-linear numbers are for ResNet-50: not the run's backbone, so not its comparison.
    assert lin["d_published_top1"] == ""
