"""tools/train_net.py records what actually ran, and never writes over an earlier run by default (issue 22, part 1):
an evaluation of a pretraining checkpoint records 0 iterations (and the report marks it), a resume past --max-iters
records the resumed iterations, and a second run without --output-dir refuses to replace ./output's results.

Skipped without detectron2.
"""
import json

import pytest

from conftest import ONE_THREAD, REPO, run_tool

pytestmark = [pytest.mark.detectron2, pytest.mark.slow]
TOOL = REPO / "tools" / "train_net.py"
CONFIG = REPO / "configs" / "detectron2" / "tiny" / "mask_rcnn_R_18_C4.py"


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    pytest.importorskip("detectron2")
    from pretrain.synthetic import write_coco_dataset

    root = tmp_path_factory.mktemp("shapes")
    train_json, _ = write_coco_dataset(root, "train", 8, size=(96, 96), seed=0)
    val_json, _ = write_coco_dataset(root, "val", 4, size=(96, 96), seed=1)
    return train_json, val_json


def data_args(synthetic):
    train_json, val_json = synthetic
    return ["--config-file", CONFIG, "--train-json", train_json, "--test-json", val_json]


def read(folder):
    return json.loads((folder / "results.json").read_text())


def test_eval_only_of_a_pretraining_checkpoint_records_no_training(tmp_path, synthetic, moco_r18):
    from transfer.report import build_table, load_runs

    out = tmp_path / "eval"
    run_tool(TOOL, *data_args(synthetic), "--checkpoint", moco_r18, "--eval-only", "--output-dir", out,
             env=ONE_THREAD)
    record = read(out)
    assert record["recipe"]["iterations"] == 0  # not the config's train.max_iter: the heads are as initialised
    assert record["recipe"]["eval_only"] is True
    table = build_table(record["task"], load_runs([out]))
    (row,) = [c for c in table.comparisons if c.row.origin == "run"]
    assert any("not trained" in n for n in row.notes), row.notes


def test_resume_past_max_iters_records_the_resumed_iterations(tmp_path, synthetic, moco_r18):
    first = tmp_path / "first"
    run_tool(TOOL, *data_args(synthetic), "--checkpoint", moco_r18, "--max-iters", 2, "--output-dir", first,
             env=ONE_THREAD)
    assert read(first)["recipe"]["iterations"] == 2 and "eval_only" not in read(first)["recipe"]
    # --max-iters 1 is below the checkpoint's 2 iterations: nothing more trains, and the record says 2, not 1.
    again = tmp_path / "again"
    run_tool(TOOL, *data_args(synthetic), "--resume", first / "model_final.pth", "--max-iters", 1,
             "--output-dir", again, env=ONE_THREAD)
    assert read(again)["recipe"]["iterations"] == 2
    # Evaluating that training checkpoint records its iterations too.
    run_tool(TOOL, *data_args(synthetic), "--eval-only", "--resume", first / "model_final.pth",
             "--output-dir", tmp_path / "eval", env=ONE_THREAD)
    assert read(tmp_path / "eval")["recipe"]["iterations"] == 2


def test_default_output_folder_is_not_overwritten(tmp_path, synthetic, moco_r18):
    args = [TOOL, *data_args(synthetic), "--checkpoint", moco_r18, "--eval-only"]
    run_tool(*args, cwd=tmp_path, env=ONE_THREAD)  # writes ./output/results.json
    results = tmp_path / "output" / "results.json"
    before = results.read_bytes()
    proc = run_tool(*args, cwd=tmp_path, env=ONE_THREAD, check=False)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "--output-dir" in errors[0] and "results.json" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert results.read_bytes() == before
    # A named folder still works beside it.
    run_tool(*args, "--output-dir", tmp_path / "named", cwd=tmp_path, env=ONE_THREAD)
    assert (tmp_path / "named" / "results.json").is_file()


def test_eval_only_in_the_run_folder_keeps_the_runs_records(tmp_path, synthetic, moco_r18):
    """--eval-only --resume in a finished run's folder: the evaluation records itself in results_eval.json
    (config_eval.yaml); the run's results.json and config.yaml stay as they were, and the report reads the run's."""
    from transfer.report import load_runs

    out = tmp_path / "run"
    run_tool(TOOL, *data_args(synthetic), "--checkpoint", moco_r18, "--max-iters", 2, "--output-dir", out,
             env=ONE_THREAD)
    before = {name: (out / name).read_bytes() for name in ("results.json", "config.yaml")}
    run_tool(TOOL, *data_args(synthetic), "--eval-only", "--resume", "--output-dir", out, env=ONE_THREAD)
    assert {name: (out / name).read_bytes() for name in before} == before
    evaluated = json.loads((out / "results_eval.json").read_text())
    assert evaluated["recipe"]["eval_only"] is True and evaluated["recipe"]["iterations"] == 2
    assert evaluated["metrics"] == read(out)["metrics"]  # the run's final weights: the run's numbers
    assert evaluated["checkpoint"].endswith("model_final.pth")
    assert (out / "config_eval.yaml").is_file()
    (row,) = load_runs([out])
    assert row.source == str(out / "results.json") and "eval_only" not in row.recipe
