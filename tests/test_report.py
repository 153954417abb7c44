"""The comparison report: every number reaches the tables unchanged, deltas, marks, errors."""
import csv
import json

import pytest

from conftest import run_tool
from transfer.published import PUBLISHED
from transfer.report import build_table, load_runs, published_rows, table_records, to_markdown, write_report
from transfer.results import ResultsError, read_results, write_results

LIN = {"epochs": 90, "batch": 16384, "img_size": 224}


def make_runs(root):
    write_results(root / "mae_lin", "imagenet_linear", "vit_base_patch16", "mae",
                  {"top1": 61.37, "top5": 83.21, "top1_best": 61.52}, {**LIN, "pretrain_epochs": 1600},
                  checkpoint="mae.pth")
    write_results(root / "sup_lin", "imagenet_linear", "vit_base_patch16", "supervised",
                  {"top1": 70.12, "top5": None, "top1_best": 70.12}, LIN)
    write_results(root / "moco_seg", "ade20k_seg", "resnet50", "moco_v2", {"mIoU": 38.44, "mAcc": 49.1, "aAcc": 78.9},
                  {"iterations": 80000, "batch": 16, "crop_size": 512, "pretrain_epochs": 200})
    write_results(root / "sup_seg", "ade20k_seg", "resnet50", "supervised", {"mIoU": 40.02, "mAcc": 50.5, "aAcc": 79.3},
                  {"iterations": 40000, "batch": 16, "crop_size": 512})


def test_numbers_reach_tables_unchanged(tmp_path):
    make_runs(tmp_path / "runs")
    out = tmp_path / "report"
    proc = run_tool("tools/report.py", tmp_path / "runs", "--out", out)
    assert "4 runs" in proc.stdout
    for task in ("imagenet_linear", "ade20k_seg"):
        assert (out / f"{task}.md").is_file() and (out / f"{task}.png").stat().st_size > 1000
    rows = {(r["pretrain"], r["origin"]): r for r in csv.DictReader(open(out / "imagenet_linear.csv"))}
    mae, sup = rows[("mae", "run")], rows[("supervised", "run")]
    assert float(mae["top1"]) == 61.37 and float(mae["top5"]) == 83.21 and float(sup["top1"]) == 70.12
    assert sup["top5"] == ""  # partial result: missing, not zero
    assert float(mae["d_supervised_top1"]) == pytest.approx(61.37 - 70.12)
    # MAE ViT-B linear, published 68.0: a best-epoch number, compared with the run's best epoch, not its last.
    assert float(mae["d_published_top1_best"]) == pytest.approx(61.52 - 68.0) and mae["d_published_top1"] == ""
    assert mae["d_supervised_top5"] == ""  # no baseline value to compare with
    md = (out / "imagenet_linear.md").read_text()
    assert "61.37" in md and "83.21" in md and "70.12" in md and "68.00" in md and "61.52" in md and "—" in md
    assert "top1_best: the best epoch's" in md  # says which one the published number is
    # Every source of a published number shown is cited.
    assert "facebookresearch/mae" in md
    report = (out / "report.md").read_text()
    assert "imagenet_linear.png" in report and "ade20k_seg" in report


def test_unlike_recipes_are_marked(tmp_path):
    make_runs(tmp_path)
    table = build_table("ade20k_seg", load_runs([tmp_path]) + published_rows(["ade20k_seg"]), "supervised")
    rec = {(r["pretrain"], r["origin"], r["backbone"]): r for r in table_records(table)}
    moco = rec[("moco_v2", "run", "resnet50")]
    # The supervised run used 40k iterations, the MoCo run 80k: the difference is marked.
    assert "iterations 80000 vs 40000" in moco["notes"]
    assert moco["d_supervised_mIoU"] == pytest.approx(38.44 - 40.02)
    md_line = next(line for line in to_markdown(table).splitlines()
                   if "moco_v2" in line)
    assert "†" in md_line
    # Equal recipes: no mark.
    mae = {c.row.pretrain: c for c in build_table("imagenet_linear", load_runs([tmp_path]), "supervised").comparisons}
    assert not any("vs supervised" in n for n in mae["mae"].notes)


def test_baseline_choice_and_published_data():
    assert all(p.source for p in PUBLISHED)
    expected = {("imagenet_finetune", "vit_base_patch16", "mae"): {"top1_best": 83.6},
                ("imagenet_linear", "resnet50", "moco_v2"): {"top1_best": 67.5},
                ("voc_det", "resnet50", "supervised"): {"AP50": 81.3, "AP": 53.5, "AP75": 58.8},
                ("coco_instance_seg", "vit_large_patch16", "mae"): {"box_AP": 55.5, "mask_AP": 49.2}}
    have = {(p.task, p.backbone, p.pretrain): p.metrics for p in PUBLISHED  # the default pretraining lengths
            if p.recipe.get("pretrain_epochs") in (None, 90, 200, 1600)}
    for key, metrics in expected.items():
        assert have[key] == metrics


def test_random_baseline(tmp_path):
    write_results(tmp_path / "a", "semantic_seg", "resnet18", "moco_v2", {"mIoU": 20.0}, {"iterations": 100})
    write_results(tmp_path / "b", "semantic_seg", "resnet18", "random", {"mIoU": 15.5}, {"iterations": 100})
    t = build_table("semantic_seg", load_runs([tmp_path]), baseline="random")
    rec = {r["pretrain"]: r for r in table_records(t)}
    assert rec["moco_v2"]["d_random_mIoU"] == pytest.approx(4.5) and rec["moco_v2"]["notes"] == ""


def test_malformed_results_are_rejected_with_the_file_name(tmp_path):
    make_runs(tmp_path / "runs")
    bad = tmp_path / "runs" / "broken" / "results.json"
    bad.parent.mkdir()
    bad.write_text("{not json")
    proc = run_tool("tools/report.py", tmp_path / "runs", "--out", tmp_path / "r", check=False)
    assert proc.returncode != 0 and "broken/results.json" in proc.stderr and "not valid JSON" in proc.stderr
    bad.write_text(json.dumps({"task": "imagenet_linear", "backbone": "x", "pretrain": "y", "recipe": {},
                               "metrics": {"top1": "high"}}))
    with pytest.raises(ResultsError, match="broken/results.json.*top1"):
        read_results(bad)
    bad.write_text(json.dumps({"task": "nope", "backbone": "x", "pretrain": "y", "recipe": {}, "metrics": {"a": 1}}))
    with pytest.raises(ResultsError, match="unknown task"):
        load_runs([tmp_path / "runs"])
    with pytest.raises(ResultsError, match="no such"):
        load_runs([tmp_path / "missing"])


def test_report_on_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    path = write_report(load_runs([tmp_path / "empty"]), tmp_path / "out")
    assert "No results found" in path.read_text()


def test_baselines_with_other_weights_than_the_published_ones_are_marked(tmp_path):
    """The supervised R-50 rows of the MoCo papers use the MSRA R-50, mmseg's use ResNetV1c; the project's
    supervised counterparts use torchvision's ResNet. Such a comparison is marked as a recipe difference is."""
    voc = {"iterations": 24000, "batch": 16, "img_size": 800, "detector": "C4", "pretrain_epochs": 800}
    write_results(tmp_path / "moco", "voc_det", "resnet50", "moco_v2", {"AP50": 82.0, "AP": 57.0, "AP75": 63.0},
                  voc, weights="torchvision")
    write_results(tmp_path / "sup", "voc_det", "resnet50", "supervised", {"AP50": 81.0, "AP": 54.0, "AP75": 59.0},
                  {**voc, "pretrain_epochs": 90}, weights="torchvision")
    table = build_table("voc_det", load_runs([tmp_path]) + published_rows(["voc_det"]), "supervised")
    notes = {(c.row.pretrain, c.row.origin): c.notes for c in table.comparisons}
    sup = " ".join(notes[("supervised", "run")])
    assert "baseline weights differ from the published baseline's" in sup and "MSRA R-50" in sup
    # The MoCo run against its own 800-epoch published row and against the run baseline: nothing to mark.
    assert notes[("moco_v2", "run")] == []
    line = next(ln for ln in to_markdown(table).splitlines() if "supervised (sup)" in ln)
    assert "†" in line
    # Without a supervised run the MoCo run's baseline is the published (MSRA) row: marked too.
    alone = build_table("voc_det", load_runs([tmp_path / "moco"]) + published_rows(["voc_det"]), "supervised")
    moco = next(c for c in alone.comparisons if c.row.origin == "run")
    assert moco.baseline.origin == "published" and "baseline weights differ" in " ".join(moco.notes)


def test_runs_nobody_published_say_so(tmp_path):
    write_results(tmp_path / "r", "ade20k_seg", "resnet50", "moco_v2", {"mIoU": 39.0},
                  {"iterations": 80000, "batch": 16, "crop_size": 512})
    table = build_table("ade20k_seg", load_runs([tmp_path]) + published_rows(["ade20k_seg"]), "supervised")
    run = next(c for c in table.comparisons if c.row.origin == "run")
    assert run.published is None and any(n.startswith("none published: ") for n in run.notes)


def test_a_published_value_not_rechecked_says_so():
    from transfer.published import Published

    rows = published_rows(published=[Published("voc_seg", "resnet50", "moco_v1", {"mIoU": 1.0}, source="A, Table 6",
                                                checked=False),
                                      Published("voc_seg", "resnet50", "supervised", {"mIoU": 2.0}, source="B")])
    assert [r.source for r in rows] == ["A, Table 6 (entered from the paper, not re-checked here)", "B"]
