"""The contract of a ladder rung (transfer/ladder/rung.py), for every registered rung: its declaration is
complete, its data check names what is missing, its dry run prints each recipe's command and GPU-hours, its
results' task has a primary metric, and docs/ladder.md's cost table is the registry's."""
from __future__ import annotations

from pathlib import Path

import pytest

from conftest import REPO
from transfer.ladder.rung import SUITES, Rung, all_rungs, cost_table, primary_metric, suites

RUNGS = all_rungs()
CPU_BACKBONES = ("vit_pico_patch8", "resnet18")
RECIPES = [(name, backbone) for name, rung in RUNGS.items() for backbone in rung.recipes]


def test_the_first_rungs_are_registered_in_the_ladders_order():
    first = ["knn", "linear", "dense_probe", "finetune", "detection", "segmentation"]
    assert [name for name in RUNGS if name in first] == first and list(RUNGS)[:4] == first[:4]
    assert suites()["quick"] == ["knn", "linear", "dense_probe"]
    assert suites()["standard"] == ["knn", "linear", "dense_probe", "finetune"]
    assert suites()["full"] == list(RUNGS)


@pytest.mark.parametrize("name", RUNGS)
def test_a_rung_declares_everything_the_ladder_asks(name):
    rung = RUNGS[name]
    assert isinstance(rung, Rung) and rung.name == name
    assert (REPO / rung.tool).is_file(), rung.tool
    assert rung.data and rung.metrics and all(rung.metrics.values())
    assert set(rung.suites) <= set(SUITES), f"suites {set(rung.suites) - set(SUITES)} are not in rung.SUITES"
    assert rung.recipes, "a rung with no recipe runs for no backbone"
    assert len({r.order for r in RUNGS.values()}) == len(RUNGS), "two rungs at one place in the ladder"
    # A task is one rung's: its primary metric is that rung's, among the metrics its results must have.
    from transfer.results import TASKS

    for task, metric in rung.metrics.items():
        assert task in TASKS and metric in TASKS[task], f"add {task}: [{metric}, ...] to transfer.results.TASKS"
        assert set(rung.columns(task)) <= set(TASKS[task])
        assert primary_metric(task) == metric
        assert sum(task in r.metrics for r in RUNGS.values()) == 1, task


@pytest.mark.parametrize("name, backbone", RECIPES)
def test_a_recipe_names_a_shipped_config_its_gpus_and_cost(name, backbone):
    recipe = RUNGS[name].recipes[backbone]
    if recipe.config is not None:
        assert (REPO / recipe.config).is_file(), recipe.config
    assert recipe.gpus >= 1 and recipe.basis
    assert (recipe.gpu_hours == 0) == (backbone in CPU_BACKBONES), "GPU recipes are priced; CPU ones cost 0"


@pytest.mark.parametrize("name", RUNGS)
def test_the_data_check_names_what_is_missing(name, tmp_path):
    from pretrain.errors import DataError

    rung = RUNGS[name]
    with pytest.raises(DataError) as e:
        rung.check_data(tmp_path)
    said = str(e.value)
    assert f"--data {rung.data}=" in said and name in said
    assert any(alt.rstrip("/") in said for alt in rung.layout[0].split("|"))
    write_layout(rung, tmp_path)
    rung.check_data(tmp_path)  # the declared layout passes


def write_layout(rung: Rung, root: Path) -> None:
    """A stand-in of the rung's dataset folder: its declared layout, empty (a dry run reads no data)."""
    for entry in rung.layout:
        first = root / entry.split("|")[0]
        if entry.split("|")[0].endswith("/"):
            first.mkdir(parents=True, exist_ok=True)
        else:
            first.parent.mkdir(parents=True, exist_ok=True)
            first.write_text("{}")


@pytest.mark.parametrize("name, backbone", RECIPES)
def test_dry_run_prints_the_recipes_command_and_gpu_hours(name, backbone, tmp_path, monkeypatch, capsys):
    """``tools/evaluate.py CKPT --rungs NAME --dry-run`` for a checkpoint of each backbone the rung has a recipe
    for (the checkpoint's reading stood in: tests/test_ladder.py reads real files), against a random twin."""
    import importlib.util

    from transfer import ladder

    rung = RUNGS[name]
    family = "vit" if backbone.startswith("vit") else "resnet"
    info = ladder.CheckpointInfo(str(tmp_path / "model.pth"), "0" * 64, family, backbone,
                                 f"mae_{backbone}" if family == "vit" else backbone, "mae")
    monkeypatch.setattr(ladder, "inspect_checkpoint", lambda path, allow_pickle=False, variant=None: info)
    (tmp_path / "model.pth").write_bytes(b"")
    write_layout(rung, tmp_path / "data")
    spec = importlib.util.spec_from_file_location("evaluate_tool", REPO / "tools" / "evaluate.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    tool.main([str(tmp_path / "model.pth"), "--rungs", name, "--dry-run", "--baseline", "random", "--seeds", "2",
               "--out", str(tmp_path / "out"), "--data", f"{rung.data}={tmp_path / 'data'}"])
    out = capsys.readouterr().out
    recipe = rung.recipes[backbone]
    rows = [line for line in out.splitlines() if line.startswith(name + " ")]
    assert len(rows) == 2, out  # the checkpoint and its random twin
    for row in rows:
        assert rung.tool in row and (recipe.config is None or recipe.config in row)
        assert f"{2 * recipe.gpu_hours:.1f}" in row.split(rung.tool)[0]  # 2 seeds x the recipe's GPU-hours
    assert f"about {4 * recipe.gpu_hours:.1f} GPU-hours" in out
    assert not (tmp_path / "out").exists()  # a dry run writes nothing


@pytest.mark.parametrize("name", RUNGS)
def test_a_job_resumes_with_its_tools_flag(name):
    from transfer import ladder

    rung = RUNGS[name]
    backbone = next(iter(rung.recipes))
    info = ladder.CheckpointInfo("/ckpt.pth", "0" * 64, "vit", backbone, f"mae_{backbone}", "mae")
    data_args, task = rung.data_args(Path("/data"))
    assert task in rung.metrics
    cmd = rung.command(rung.recipes[backbone], ladder.Subject("pretrained", "/ckpt.pth"), info, 3, "/out/x", data_args)
    assert cmd[0] == rung.tool and "/out/x" in " ".join(cmd) and "3" in " ".join(cmd)
    resumed = rung.resumed(cmd)
    if rung.resume_flag:
        assert resumed[rung.resume_at] == rung.resume_flag and len(resumed) == len(cmd) + 1
    else:
        assert resumed == cmd


def test_docs_cost_table_is_the_registrys():
    """docs/ladder.md's cost table is ``transfer.ladder.rung.cost_table()``: a recipe added or repriced shows there
    (regenerate: python -c 'from transfer.ladder.rung import cost_table; print(cost_table())')."""
    assert cost_table() in (REPO / "docs" / "ladder.md").read_text()


# ------------------------------------------------------------------ the papers' tables
def test_a_paper_table_is_laid_out_with_its_published_rows():
    """The ladder report's section for MAE's transfer tables: a column per rung and metric the paper shows, the
    run's checkpoint and baseline as rows (mean ± std), and the published rows of the same backbone beside them."""
    from transfer import ladder
    from transfer.published import PUBLISHED

    info = ladder.CheckpointInfo("/c.pth", "0" * 64, "vit", "vit_base_patch16", "mae_vit_base_patch16", "mae")
    p = ladder.Plan(info, "supervised", 2, "/out")

    def agg(rung, role, task, pretrain, **values):
        mean = {k: sum(v) / len(v) for k, v in values.items()}
        std = {k: (sum((x - mean[k]) ** 2 for x in v) / (len(v) - 1)) ** 0.5 for k, v in values.items()}
        return ladder.Aggregate(rung, role, task, "vit_base_patch16", pretrain, mean, std, 2, values, {})

    aggregates = [agg("detection", "pretrained", "coco_instance_seg", "mae", box_AP=[50.0, 52.0], mask_AP=[44.0, 46.0]),
                  agg("detection", "baseline", "coco_instance_seg", "supervised", box_AP=[47.0, 49.0],
                      mask_AP=[41.0, 43.0]),
                  agg("segmentation", "pretrained", "ade20k_seg", "mae", mIoU=[47.0, 49.0]),
                  agg("knn", "pretrained", "knn", "mae", top1=[60.0, 62.0])]
    lines = ladder.paper_tables(p, aggregates)
    table = "\n".join(lines)
    assert lines[1].startswith("## MAE (He et al. 2021) transfer") and "MoCo (He et al. 2019)" not in table
    header = next(line for line in lines if line.startswith("|  |"))
    assert header == "|  | detection box_AP | detection mask_AP | segmentation mIoU |"  # knn is in no paper table
    rows = {line.split(" | ")[0].strip("| "): line for line in lines if line.startswith("| ") and "---" not in line}
    assert rows["this run: pretrained (mae)"].endswith("| 51.00 ± 1.41 | 45.00 ± 1.41 | 48.00 ± 1.41 |")
    assert rows["this run: baseline (supervised)"].endswith("| 48.00 ± 1.41 | 42.00 ± 1.41 | — |")
    mae = [r for r in PUBLISHED if r.backbone == "vit_base_patch16" and r.pretrain == "mae"]
    box = next(r.metrics["box_AP"] for r in mae if r.task == "coco_instance_seg")
    miou = next(r.metrics["mIoU"] for r in mae if r.task == "ade20k_seg")
    published = next(v for k, v in rows.items() if k.startswith("published: mae"))
    assert f"| {box:g} |" in published and published.endswith(f"| {miou:g} |")


def test_the_paper_suites_dry_run(tmp_path, capsys, monkeypatch):
    """``--suite mae_transfer --dry-run`` plans exactly its rungs (those whose data is given; the rest named)."""
    import importlib.util

    from transfer import ladder

    infos = {"vit_base_patch16": ladder.CheckpointInfo(str(tmp_path / "m.pth"), "0" * 64, "vit", "vit_base_patch16",
                                                       "mae_vit_base_patch16", "mae"),
             "resnet50": ladder.CheckpointInfo(str(tmp_path / "m.pth"), "0" * 64, "resnet", "resnet50", "resnet50",
                                               "moco_v1")}
    (tmp_path / "m.pth").write_bytes(b"")
    for rung in RUNGS.values():
        write_layout(rung, tmp_path / rung.data)
    spec = importlib.util.spec_from_file_location("evaluate_tool", REPO / "tools" / "evaluate.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    for suite, backbone in (("mae_transfer", "vit_base_patch16"), ("moco_table6", "resnet50")):
        monkeypatch.setattr(ladder, "inspect_checkpoint", lambda path, allow_pickle=False, variant=None: infos[backbone])
        tool.main([str(tmp_path / "m.pth"), "--suite", suite, "--dry-run", "--seeds", "1", "--baseline", "random",
                   "--out", str(tmp_path / "out"), "--data", *(f"{k}={tmp_path / k}" for k in {r.data for r in RUNGS.values()})])
        out = capsys.readouterr().out
        planned = {line.split()[0] for line in out.splitlines() if line.split() and line.split()[0] in RUNGS}
        skipped = {line.split()[1].rstrip(":") for line in out.splitlines() if line.startswith("skipped ")}
        assert planned | skipped == set(suites()[suite]) and planned, (suite, out)
        assert all(RUNGS[r].recipes.get(backbone) is None for r in skipped)
