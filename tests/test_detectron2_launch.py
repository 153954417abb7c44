"""tools/train_net.py --num-gpus 2 on a machine without GPUs (issue 22, part 3): detectron2's launch starts two
gloo processes, and the model goes into DDP without a GPU in ``device_ids`` (which DDP refuses for a CPU model),
its SyncBN layers synchronising through gloo (torch's SyncBN refuses CPU tensors).

Skipped without detectron2.
"""
import json

import pytest

from conftest import ONE_THREAD, REPO, run_tool

pytestmark = [pytest.mark.detectron2, pytest.mark.slow]
TOOL = REPO / "tools" / "train_net.py"
CONFIG = REPO / "configs" / "detectron2" / "tiny" / "mask_rcnn_R_18_FPN.py"


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    from pretrain.synthetic import write_coco_dataset

    root = tmp_path_factory.mktemp("shapes")
    train_json, _ = write_coco_dataset(root, "train", 8, size=(96, 96), seed=0)
    val_json, _ = write_coco_dataset(root, "val", 4, size=(96, 96), seed=1)
    return train_json, val_json


def test_two_cpu_processes_train_with_sync_bn(tmp_path, synthetic, moco_r18):
    train_json, val_json = synthetic
    out = tmp_path / "det"
    # The FPN and the mask head with SyncBN, as the full MoCo FPN recipe has them.
    run_tool(TOOL, "--config-file", CONFIG, "--train-json", train_json, "--test-json", val_json,
             "--checkpoint", moco_r18, "--device", "cpu", "--num-gpus", 2, "--max-iters", 2, "--output-dir", out,
             "model.backbone.norm=SyncBN", "model.roi_heads.mask_head.conv_norm=SyncBN", env=ONE_THREAD)
    log = (out / "log.txt").read_text()
    assert "world size: 2" in log.lower() and (out / "log.txt.rank1").is_file()  # two processes ran
    record = json.loads((out / "results.json").read_text())
    assert record["recipe"]["iterations"] == 2 and record["task"] == "coco_instance_seg"
    assert (out / "model_final.pth").is_file()


def test_a_user_error_in_a_launched_process_is_one_line(tmp_path, synthetic, moco_r18):
    """A ResNet checkpoint for a ViTDet model, found out in the two processes (where the model is built): one
    ``error:`` line and the user-error status, not each process's traceback through torch's spawn."""
    train_json, val_json = synthetic
    proc = run_tool(TOOL, "--config-file", REPO / "configs" / "detectron2" / "tiny" / "mask_rcnn_vitdet_pico.py",
                    "--train-json", train_json, "--test-json", val_json, "--checkpoint", moco_r18, "--device", "cpu",
                    "--num-gpus", 2, "--max-iters", 1, "--output-dir", tmp_path / "det", env=ONE_THREAD, check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "does not fit this model" in errors[0], proc.stderr[-3000:]
