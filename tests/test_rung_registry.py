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
    assert list(RUNGS)[:6] == ["knn", "linear", "dense_probe", "finetune", "detection", "segmentation"]
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
    # A task is one rung's: its primary metric is that rung's.
    for task, metric in rung.metrics.items():
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
    monkeypatch.setattr(ladder, "inspect_checkpoint", lambda path, allow_pickle=False: info)
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
