"""MAE's Table 6 rungs (transfer/ladder/rungs/inat.py, places.py): each dataset's configs are the ImageNet
fine-tuning recipe with the dataset's classes and results task, and the CPU recipe runs through the ladder on a
class-folder dataset, writing the rung's task."""
import json
from pathlib import Path

import pytest

from conftest import REPO, run_tool
from transfer.ladder.rung import all_rungs
from transfer.ladder.rungs.mae_transfer import FINETUNE, MAETransferRung

TABLE6 = {name: rung for name, rung in all_rungs().items() if isinstance(rung, MAETransferRung)}
# The CPU recipe at the test's size: one epoch of the pico at 32 px.
TINY = ("train.progress=false train.tensorboard=false data.num_workers=0 data.img_size=32 train.epochs=1 "
        "train.batch_size=8 optim.warmup_epochs=0")


def test_table6_has_its_five_datasets_in_the_mae_transfer_suite():
    assert sorted(TABLE6) == ["inat2017", "inat2018", "inat2019", "places205", "places365"]
    for name, rung in TABLE6.items():
        assert rung.data == name and rung.metrics == {f"{name}_finetune": "top1"}
        assert "mae_transfer" in rung.suites


@pytest.mark.parametrize("name", sorted(TABLE6))
def test_a_datasets_configs_are_the_imagenet_recipe_with_its_classes_and_task(name):
    """Each GPU recipe's config differs from the ImageNet fine-tuning config of its size only in the classes, the
    results task and the output folder (MAE Sec. A.5 follows Table 9), and its GPUs and price are that recipe's."""
    from omegaconf import OmegaConf

    from transfer.classification.config import load_cls_config

    rung = TABLE6[name]
    assert rung.data_args(Path("/d")) == (["data.path=/d", f"data.task={rung.task}"], rung.task)
    for backbone, (size, gpus, epochs, rate) in FINETUNE.items():
        recipe = rung.recipes[backbone]
        cfg = OmegaConf.to_container(load_cls_config(REPO / recipe.config, ["data.path=/d"]))
        imagenet = OmegaConf.to_container(load_cls_config(REPO / f"configs/classification/mae_vit_{size}_finetune.yaml",
                                                          ["data.path=/d"]))
        assert (cfg["model"].pop("num_classes"), cfg["data"].pop("task")) == (rung.classes, rung.task)
        assert (imagenet["model"].pop("num_classes"), imagenet["data"].pop("task")) == (1000, None)
        assert cfg["train"].pop("output_dir") != imagenet["train"].pop("output_dir")
        assert cfg == imagenet
        assert (cfg["train"]["epochs"], cfg["train"]["batch_size"] * gpus) == (epochs, 1024)
        assert recipe.gpus == gpus and recipe.gpu_hours > 0


def test_data_task_must_be_a_top1_task():
    from transfer.classification.config import ConfigError, load_cls_config

    config = REPO / "configs/classification/mae_vit_pico_finetune_cpu.yaml"
    assert load_cls_config(config, ["data.task=places205_finetune"]).data.task == "places205_finetune"
    for wrong in ("places206_finetune", "ade20k_seg"):
        with pytest.raises(ConfigError, match=f"data.task must be .*got '{wrong}'"):
            load_cls_config(config, [f"data.task={wrong}"])


@pytest.fixture(scope="module")
def mae_pico(tmp_path_factory):
    """A MAE ViT-pico/8 pretrained for one epoch of four steps (the project's trainer), and a class-folder dataset
    of the synthetic shapes (5 classes, 8 training and 2 validation images each)."""
    from pretrain.config import load_config
    from pretrain.trainer import Trainer
    from transfer.classification.data import write_synthetic_folder

    root = tmp_path_factory.mktemp("table6")
    Trainer(load_config(None, [
        "model.arch=mae_vit_pico_patch8", "model.decoder_depth=1", "model.decoder_embed_dim=32",
        "model.decoder_num_heads=2", "data.img_size=32", "data.synthetic=true", "data.synthetic_images=32",
        "data.num_workers=0", "train.batch_size=8", "train.epochs=1", "train.device=cpu", "train.progress=false",
        "train.tensorboard=false", "optim.warmup_epochs=0", f"train.output_dir={root}/mae"], method="mae")).fit()
    write_synthetic_folder(root / "folders", per_class=8, size=32)
    return root


@pytest.mark.slow
def test_inat_and_places_fine_tune_through_the_ladder(mae_pico, tmp_path):
    """One rung of each family from the MAE pico against random initialisation: every job fine-tunes for an
    epoch on the class folders and writes its rung's task, not ImageNet's."""
    from transfer.results import read_results

    rungs = ("inat2018", "places365")
    out = tmp_path / "ladder"
    proc = run_tool("tools/evaluate.py", mae_pico / "mae" / "checkpoint-last.pth", "--rungs", ",".join(rungs),
                    "--baseline", "random", "--seeds", "1", "--out", out,
                    "--data", *(f"{r}={mae_pico / 'folders'}" for r in rungs),
                    "--rung-args", *(f"{r}={TINY}" for r in rungs), env={"OMP_NUM_THREADS": "1"}, timeout=600)
    folder = next(out.iterdir())
    plan = json.loads((folder / "plan.json").read_text())
    assert sorted((job["rung"], job["subject"]["role"]) for job in plan["jobs"]) == sorted(
        (r, role) for r in rungs for role in ("pretrained", "baseline"))
    for job in plan["jobs"]:
        rec = read_results(Path(job["folder"]) / "results.json")
        assert rec["task"] == f"{job['rung']}_finetune" == job["task"]
        assert rec["pretrain"] == ("mae" if job["subject"]["role"] == "pretrained" else "random")
        assert rec["backbone"] == "vit_pico_patch8"
        assert 0 <= rec["metrics"]["top1"] <= 100 and rec["metrics"]["top1_best"] is not None
        # It trained: one epoch of the 40 training images of the 5 class folders, evaluated on the 10 others.
        assert (rec["recipe"]["num_classes"], rec["recipe"]["epochs"]) == (5, 1)
        assert (rec["recipe"]["train_images"], rec["recipe"]["val_images"]) == (40, 10)
        steps = [json.loads(line) for line in (Path(job["folder"]) / "metrics.jsonl").read_text().splitlines()]
        assert [s["step"] for s in steps if "lr" in s] == [5]  # 40 images / batch 8, logged at its last step
    assert proc.stdout.count(": starting ...") == 4
    # The report's Table 6 section: a column per rung, the best epoch's top-1 as the paper reports it.
    report = (folder / "report" / "report.md").read_text()
    assert "Places (Table 6)" in report and "| inat2018 top1_best | places365 top1_best |" in report
