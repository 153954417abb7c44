"""``--variant`` (which network of a checkpoint that holds several: DINO's teacher / student, I-JEPA's target /
context) through the detectron2 tool and the robustness rung, and the ladder's jobs for them.

The checkpoint is main_dino.py's layout of pico ViTs whose teacher and student differ
(``test_published_backbones_transfer.pico_dino_training_file``), so a test can tell which network arrived:

* detectron2's in-memory conversion places the variant's tensors (compared with that network's own state dict)
  and the default places the teacher's; the checkpointer records the variant; a detectron2 file with a variant
  is refused;
* tools/train_net.py refuses a variant the file lacks with read_backbone's message, as a user error (exit 2);
* the ladder's plan with a variant now holds the detection rung's jobs (``--variant`` in the checkpoint's
  command, none in the random baseline's) and the robustness rung's, which score the variant's own fine-tuned
  classifier (the finetune job's in the variant's folder);
* slow: a tiny ViTDet trains from the student, records it in results.json, and a resumed run keeps it.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import run_tool
from test_published_backbones_transfer import pico_dino_training_file

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "detectron2" / "tiny"


def vitdet_pico():
    """The CPU-sized ViTDet Mask R-CNN (ViT-pico/8: the DINO file's shape), at random."""
    from detectron2.config import LazyConfig, instantiate

    return instantiate(LazyConfig.load(str(TINY / "mask_rcnn_vitdet_pico.py")).model)


# ------------------------------------------------------------------ the conversion
@pytest.mark.parametrize("variant", [None, "teacher", "student"])
def test_the_detectron2_conversion_places_the_variants_network(tmp_path, variant):
    from transfer.detection.checkpoint import Checkpointer

    path, nets = pico_dino_training_file(tmp_path)
    expected = nets[variant or "teacher"].state_dict()  # the paper's network (the teacher) by default
    other = nets["student" if variant in (None, "teacher") else "teacher"].state_dict()
    det = vitdet_pico()
    ck = Checkpointer(det)
    ck.load(str(path), checkpointables=[], variant=variant)
    sd = det.state_dict()
    # Every block and the patch embedding (the position table is interpolated to the config's grid).
    keys = [k for k in expected if k.startswith(("blocks.", "patch_embed."))]
    assert len(keys) == 4 * 12 + 2
    for k in keys:
        assert torch.equal(sd[f"backbone.net.{k}"], expected[k]), k
    assert not torch.equal(sd["backbone.net.blocks.2.mlp.fc1.weight"], other["blocks.2.mlp.fc1.weight"])
    assert ck.pretrained["pretrain"] == "dino" and ck.pretrained.get("variant") == variant


def test_a_variant_of_a_detectron2_file_or_of_a_file_without_variants_is_refused(tmp_path):
    from pretrain.checkpoint import CheckpointFormatError
    from pretrain.errors import ConfigError
    from transfer.detection.checkpoint import Checkpointer, check_checkpoint

    path, _ = pico_dino_training_file(tmp_path)
    det = vitdet_pico()
    Checkpointer(det).load(str(path), checkpointables=[], variant="student")
    d2 = tmp_path / "model_final.pth"
    torch.save({"model": det.state_dict(), "iteration": 0}, d2)
    with pytest.raises(ConfigError, match="a detectron2 file holds one network; --variant student"):
        check_checkpoint(str(d2), "--checkpoint", variant="student")
    with pytest.raises(ConfigError, match="a detectron2 file holds one network"):
        Checkpointer(det).load(str(d2), variant="student")
    Checkpointer(det).load(str(d2))  # without a variant it loads as it is (a resumed run's own checkpoint)
    with pytest.raises(CheckpointFormatError, match="has no variant 'context'"):
        check_checkpoint(str(path), "--checkpoint", variant="context")


def test_train_net_refuses_a_variant_the_file_lacks_with_read_backbones_message(tmp_path):
    """The from-checkpoint config reads the file for its ViT before anything else: the variant reaches it."""
    path, _ = pico_dino_training_file(tmp_path)
    out = tmp_path / "out"
    proc = run_tool("tools/train_net.py", "--config-file", TINY / "mask_rcnn_vitdet_pico_from_checkpoint.py",
                    "--checkpoint", path, "--variant", "target", "--output-dir", out, check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr
    assert "a dino checkpoint has no variant 'target'; expected one of ['teacher', 'student']" in lines[0]
    assert not out.exists()


# ------------------------------------------------------------------ the ladder
def coco_layout(root: Path) -> Path:
    """The files the detection rung's data check asks for (the plan reads no more of them)."""
    (root / "annotations").mkdir(parents=True)
    for split in ("train2017", "val2017"):
        (root / "annotations" / f"instances_{split}.json").write_text("{}")
        (root / split).mkdir()
    return root


def test_the_ladder_runs_the_detection_and_robustness_rungs_on_the_variant(tmp_path):
    from transfer import ladder
    from transfer.ladder.rungs.robustness import Robustness

    path, _ = pico_dino_training_file(tmp_path)
    for folder in ("cls/train", "cls/val", "variants/imagenet-sketch"):
        (tmp_path / folder).mkdir(parents=True)
    data = {"coco": str(coco_layout(tmp_path / "coco")), "imagenet": str(tmp_path / "cls"),
            "imagenet_variants": str(tmp_path / "variants")}
    rungs = ["detection", "finetune", "robustness"]
    student = ladder.plan(path, tmp_path / "out", rungs, data, 1, "random", variant="student")
    assert student.skipped == [] and {j.rung for j in student.jobs} == set(rungs)
    for job in student.jobs:
        mine = job.subject.role == "pretrained"
        if job.rung == "robustness":  # the classifier it scores is the variant's own fine-tuning, in its folder
            assert "--variant" not in job.command
            finetune = next(j for j in student.jobs if j.rung == "finetune" and j.subject.role == job.subject.role)
            assert job.command[1] == str(Robustness.classifier(job.folder))
            assert Path(job.command[1]).parent == Path(finetune.folder)
            assert Path(job.command[1]).is_relative_to(student.folder)
            continue
        assert ("--variant" in job.command) == mine, job.command  # the random baseline has no variant
        if mine:
            assert job.command[job.command.index("--variant") + 1] == "student"
        if job.rung == "detection" and mine:
            assert job.command[job.command.index("--checkpoint") + 1] == str(path)
    default = ladder.plan(path, tmp_path / "out", rungs, data, 1, "random")
    assert not any("--variant" in j.command for j in default.jobs)
    assert Path(student.folder).name.startswith("checkpoint-student-") and student.folder != default.folder


# ------------------------------------------------------------------ end to end
@pytest.mark.slow
def test_train_net_trains_from_the_student_records_it_and_a_resumed_run_keeps_it(tmp_path):
    from pretrain.synthetic import write_coco_dataset

    for split, seed in (("train", 0), ("val", 1)):
        write_coco_dataset(tmp_path / "det", split, 2, size=(64, 64), seed=seed)
    ann = tmp_path / "det" / "annotations"
    path, _ = pico_dino_training_file(tmp_path)
    out = tmp_path / "run"
    common = ("tools/train_net.py", "--config-file", TINY / "mask_rcnn_vitdet_pico_from_checkpoint.py",
              "--checkpoint", path, "--train-json", ann / "instances_train.json", "--test-json",
              ann / "instances_val.json", "--output-dir", out, "--device", "cpu")
    env = {"OMP_NUM_THREADS": "1"}
    run_tool(*common, "--variant", "student", "--max-iters", "1", env=env)
    record = json.loads((out / "results.json").read_text())
    assert record["pretrain"] == "dino" and record["recipe"]["variant"] == "student"
    assert record["recipe"]["iterations"] == 1
    # Resumed without --variant: the run's checkpoint says which network it started from.
    run_tool(*common, "--resume", "--max-iters", "2", env=env)
    record = json.loads((out / "results.json").read_text())
    assert record["recipe"]["variant"] == "student" and record["recipe"]["iterations"] == 2


@pytest.mark.slow
def test_robustness_scores_the_classifier_fine_tuned_from_the_student_and_records_it(tmp_path):
    """The robustness tool takes no --variant: the classifier it scores was fine-tuned from the variant, whose
    config says so, and its results record it as the fine-tuning's do."""
    import shutil

    from transfer.classification.data import write_synthetic_folder

    path, _ = pico_dino_training_file(tmp_path)
    data = write_synthetic_folder(tmp_path / "cls", per_class=2, size=32)
    tuned, out = tmp_path / "finetune", tmp_path / "robustness"
    env = {"OMP_NUM_THREADS": "1"}
    run_tool("tools/train_cls.py", REPO / "configs/classification/mae_vit_pico_finetune_cpu.yaml", "--checkpoint",
             path, "--variant", "student", "model.arch=auto", f"data.path={data}", "data.synthetic=false",
             "data.img_size=32", "data.num_workers=0", "train.epochs=1", "train.batch_size=4", "train.progress=false",
             "train.tensorboard=false", f"train.output_dir={tuned}", env=env)
    shutil.copytree(data / "val", tmp_path / "variants" / "imagenet-sketch")  # its classes: the classifier's
    run_tool("tools/robustness_eval.py", tuned / "checkpoint-last.pth", "--data-root", tmp_path / "variants",
             "--out", out, "--num-workers", "0", "--device", "cpu", env=env)
    fine_tuned = json.loads((tuned / "results.json").read_text())
    record = json.loads((out / "results.json").read_text())
    assert fine_tuned["recipe"]["variant"] == record["recipe"]["variant"] == "student"
    assert record["pretrain"] == "dino" and record["metrics"]["sketch_top1"] is not None
