"""tools/train_seg.py end to end on a CPU: tiny UperNets train, evaluate, resume, write results.json."""
import importlib.util
import json
import pickle

import pytest
import torch

from conftest import REPO, free_port, run_tool, shared_data

# mmseg is looked up, not imported: collection stays light.
pytestmark = [pytest.mark.skipif(importlib.util.find_spec("mmseg") is None,
                                 reason="mmsegmentation is not installed (tools/setup_env.sh installs it)")]


TINY = REPO / "configs" / "mmseg" / "tiny"
CAMVID = "Sky,Building,Pole,Road,Pavement,Tree,SignSymbol,Fence,Car,Pedestrian,Bicyclist"


def train_seg(*args, **kw):
    return run_tool("tools/train_seg.py", *map(str, args), **kw)


def read_json(path):
    return json.loads(path.read_text())


def logged(work_dir, key):
    """{iteration: value} of a training scalar, from mmengine's vis_data/scalars.json of every run."""
    out = {}
    for f in sorted(work_dir.glob("2*/vis_data/scalars.json")):  # <timestamp>/vis_data
        for line in f.read_text().splitlines():
            rec = json.loads(line)
            if key in rec and "iter" in rec:
                out[rec["iter"]] = rec[key]
    return out


@pytest.fixture
def synthetic_seg(tmp_path):
    from pretrain.synthetic import write_segmentation_dataset

    root = tmp_path / "seg"
    write_segmentation_dataset(root, "train", 12, size=(64, 80))
    write_segmentation_dataset(root, "val", 4, size=(64, 80), seed=1)
    return root


def check_results(path, task, backbone, pretrain, iterations, batch):
    rec = read_json(path)
    assert (rec["task"], rec["backbone"], rec["pretrain"]) == (task, backbone, pretrain)
    assert set(rec["metrics"]) == {"mIoU", "mAcc", "aAcc"}
    assert all(0.0 <= v <= 100.0 for v in rec["metrics"].values())
    assert rec["recipe"]["iterations"] == iterations and rec["recipe"]["batch"] == batch
    assert rec["recipe"]["crop_size"] == 64
    from transfer.results import read_results

    read_results(path)  # the report's reader accepts it
    return rec


def test_print_config_applies_the_command_line(tmp_path):
    proc = train_seg(TINY / "upernet_r18_folder-64x64.py", "--print-config", "--data-root", tmp_path,
                     "--classes", "a,b,c", "--ignore-label", "11", "--max-iters", "16",
                     "--cfg-options", "train_dataloader.batch_size=2")
    from mmengine.config import Config

    cfg = Config.fromstring(proc.stdout, file_format=".py")
    for split in ("train", "val", "test"):
        ds = cfg[f"{split}_dataloader"].dataset
        assert (ds.data_root, list(ds.classes), list(ds.ignore_labels)) == (str(tmp_path), ["a", "b", "c"], [11])
    assert cfg.model.decode_head.num_classes == cfg.model.auxiliary_head.num_classes == 3
    assert cfg.train_cfg.max_iters == 16 and cfg.param_scheduler[-1].end == 16
    assert cfg.train_dataloader.batch_size == 2 and cfg.model.backbone.init_cfg is None
    missing = train_seg(TINY / "upernet_r18_folder-64x64.py", "--checkpoint", tmp_path / "nope.pth", check=False)
    assert missing.returncode != 0 and "checkpoint not found" in missing.stderr


def test_trained_record_labels_the_pretraining(tmp_path):
    from pretrain.checkpoint import save_atomic
    from pretrain.methods.moco import build_moco, moco_checkpoint
    from transfer.segmentation.runner import load_seg_config, set_backbone_checkpoint, trained_record

    cfg = load_seg_config(TINY / "upernet_r18_folder-64x64.py")  # labelled moco_v2
    v1 = save_atomic(moco_checkpoint(build_moco("resnet18", K=64), "resnet18", epoch=200), tmp_path / "v1.pth.tar")
    set_backbone_checkpoint(cfg, v1)
    rec = trained_record(cfg, world_size=2)
    assert rec == {"pretrain": "moco_v1", "checkpoint": str(v1), "iterations": 40, "batch": 8, "pretrain_epochs": 200}
    assert trained_record(cfg, 1, pretrain="supervised")["pretrain"] == "supervised"  # --pretrain wins
    assert "pretrain_epochs" not in trained_record(cfg, 1, inspect_checkpoint=False)
    set_backbone_checkpoint(cfg, None)
    assert trained_record(cfg, 1, pretrain="supervised")["pretrain"] == "random"  # no weights: random
    # A supervised classifier through a MoCo config is recorded as supervised, not as the config's label;
    # a bare backbone (e.g. a converted file) says nothing, and the config's label stands.
    import torchvision

    sup = save_atomic(torchvision.models.resnet18().state_dict(), tmp_path / "resnet18-sup.pth")
    set_backbone_checkpoint(cfg, sup)
    assert trained_record(cfg, 1)["pretrain"] == "supervised"
    bare = {k: v for k, v in torchvision.models.resnet18().state_dict().items() if not k.startswith("fc.")}
    set_backbone_checkpoint(cfg, save_atomic(bare, tmp_path / "backbone.pth"))
    assert trained_record(cfg, 1)["pretrain"] == "moco_v2"


def test_tiny_vit_upernet_from_a_mocov3_checkpoint(tiny_mocov3_checkpoint, synthetic_seg, tmp_path):
    """MoCo v3 through tools/train_seg.py: the base encoder fills mmseg's MAE ViT, labelled moco_v3."""
    work = tmp_path / "seg_run"
    proc = train_seg(TINY / "upernet_vit-pico_folder-64x64.py", "--data-root", synthetic_seg, "--output-dir", work,
                     "--checkpoint", tiny_mocov3_checkpoint, "--max-iters", "2")
    assert "MoCo v3" in proc.stdout and "mismatched:                   none" in proc.stdout
    rec = check_results(work / "results.json", "semantic_seg", "vit_pico_patch8", "moco_v3", iterations=2, batch=4)
    assert rec["recipe"]["pretrain_epochs"] == 1


@pytest.mark.slow
def test_tiny_vit_upernet_from_a_project_mae_checkpoint_trains_evaluates_and_resumes(
        tiny_mae_overrides, synthetic_seg, tmp_path):
    from pretrain.config import load_config
    from pretrain.trainer import Trainer
    from transfer.segmentation.checkpoint import mmengine_checkpoint_globals

    Trainer(load_config(None, tiny_mae_overrides + ["train.epochs=1"], method="mae")).fit()
    mae = tmp_path / "run" / "checkpoint-last.pth"  # the project's pretraining checkpoint (32 px)
    work = tmp_path / "seg_run"
    cmd = [TINY / "upernet_vit-pico_folder-64x64.py", "--data-root", synthetic_seg, "--output-dir", work,
           "--checkpoint", mae, "--max-iters", "8",
           "--cfg-options", "default_hooks.checkpoint.interval=4", "default_hooks.logger.interval=1"]
    proc = train_seg(*cmd)
    assert "converted tensors:            60" in proc.stdout and "mismatched:                   none" in proc.stdout
    assert "resized pos_embed (1, 17, 96) -> (1, 65, 96)" in proc.stdout  # 32 px pretraining -> 64 px crops
    rec = check_results(work / "results.json", "semantic_seg", "vit_pico_patch8", "mae", iterations=8, batch=4)
    assert rec["checkpoint"] == str(mae) and rec["recipe"]["test_mode"] == "slide"
    assert rec["recipe"]["pretrain_epochs"] == 1  # train.epochs=1 above
    lrs = logged(work, "lr")
    assert sorted(lrs) == list(range(1, 9))

    # Resume from the iteration-4 checkpoint, as after a crash: mmengine's checkpoint (message hub
    # HistoryBuffers, numpy state) loads under torch's weights-only default, schedule and optimizer continue.
    with pytest.raises(pickle.UnpicklingError):
        torch.load(work / "iter_4.pth", weights_only=True)
    with mmengine_checkpoint_globals():
        step4 = torch.load(work / "iter_4.pth", weights_only=True)
    assert step4["meta"]["iter"] == 4 and step4["meta"]["sslkit_trained"]["batch"] == 4
    (work / "iter_8.pth").unlink()
    (work / "last_checkpoint").write_text(str(work / "iter_4.pth"))
    for d in work.glob("2*"):  # earlier logs out of the way, to read the resumed run's own
        d.rename(work / f"old_{d.name}")
    resumed = train_seg(*cmd, "--resume")
    assert "resumed epoch: 0, iter: 4" in resumed.stdout + resumed.stderr
    relogged = logged(work, "lr")
    assert sorted(relogged) == [5, 6, 7, 8]
    for i in (5, 6, 7, 8):
        assert relogged[i] == pytest.approx(lrs[i], rel=1e-6)
    with mmengine_checkpoint_globals():
        final = torch.load(work / "iter_8.pth", weights_only=True)
    steps = {int(s["step"]) for s in final["optimizer"]["state"].values()}
    assert steps == {8}  # AdamW's state went on from step 4, not from scratch

    # Evaluating the trained segmentor alone gives the same numbers and records the training batch.
    metrics = read_json(work / "results.json")["metrics"]
    evaluated = tmp_path / "eval"
    # (the tiny config as it is: 40 iterations, random init; the checkpoint's meta says otherwise)
    train_seg(TINY / "upernet_vit-pico_folder-64x64.py", "--data-root", synthetic_seg, "--output-dir", evaluated,
              "--eval-only", "--resume", work / "iter_8.pth")
    rec = check_results(evaluated / "results.json", "semantic_seg", "vit_pico_patch8", "mae", iterations=8, batch=4)
    assert rec["metrics"] == pytest.approx(metrics) and rec["recipe"]["pretrain_epochs"] == 1
    assert rec["segmentor_checkpoint"] == str(work / "iter_8.pth")

    # The trained segmentor's backbone is itself a checkpoint the converter / encoders read.
    from transfer.segmentation.convert import convert

    report = convert(str(work / "iter_8.pth"))
    # 60 tensors + the 4 trained relative position tables
    assert report.ok and report.source_kind.startswith("mmseg-vit") and report.converted == 64
    assert any(k.startswith("decode_head.") for k in report.dropped)


@pytest.mark.slow
def test_tiny_resnet_upernet_from_moco_on_ade20k_sample(tmp_path):
    from pretrain.checkpoint import save_atomic
    from pretrain.methods.moco import build_moco, moco_checkpoint

    root = shared_data("ade20k_sample") / "ADEChallengeData2016"
    moco = build_moco("resnet18", K=64)  # a v1 head: the checkpoint says moco_v1, the config moco_v2
    ckpt = save_atomic(moco_checkpoint(moco, "resnet18", epoch=1), tmp_path / "moco.pth.tar")
    work = tmp_path / "ade"
    proc = train_seg(TINY / "upernet_r18_ade20k-64x64.py", "--data-root", root, "--output-dir", work,
                     "--checkpoint", ckpt, "--max-iters", "4", "--cfg-options", "train_dataloader.batch_size=2")
    assert "MoCo query encoder taken" in proc.stdout
    rec = check_results(work / "results.json", "ade20k_seg", "resnet18", "moco_v1", iterations=4, batch=2)
    assert rec["checkpoint"] == str(ckpt) and rec["recipe"]["pretrain_epochs"] == 1
    from transfer.segmentation.convert import convert

    report = convert(str(work / "iter_4.pth"))  # the trained segmentor's backbone, for a next transfer
    assert report.ok and report.converted == 120 and any(k.startswith("decode_head.") for k in report.dropped)


@pytest.mark.slow
def test_tiny_vit_upernet_random_init_on_camvid(tmp_path):
    root = shared_data("camvid_val")
    work = tmp_path / "camvid"
    train_seg(TINY / "upernet_vit-pico_folder-64x64.py", "--data-root", root, "--classes", CAMVID,
              "--ignore-label", "11", "--random-init", "--output-dir", work, "--max-iters", "4",
              "--cfg-options", "train_dataloader.batch_size=2")
    rec = check_results(work / "results.json", "semantic_seg", "vit_pico_patch8", "random", iterations=4, batch=2)
    assert rec["checkpoint"] is None


@pytest.mark.slow
def test_two_process_torchrun_on_cpu(synthetic_seg, tmp_path):
    work = tmp_path / "ddp"
    run_tool("-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", free_port(),
             "tools/train_seg.py", TINY / "upernet_r18_folder-64x64.py", "--data-root", synthetic_seg,
             "--output-dir", work, "--max-iters", "2", "--pretrain", "supervised",
             "--cfg-options", "train_dataloader.batch_size=2", env={"OMP_NUM_THREADS": "1"})
    # Two processes of 2 images: a batch of 4; pretrain "random" since no checkpoint was given.
    check_results(work / "results.json", "semantic_seg", "resnet18", "random", iterations=2, batch=4)


@pytest.mark.slow
def test_one_iteration(synthetic_seg, tmp_path):
    """--max-iters 1: the warm-up takes the only iteration and the poly decay, left with none, is dropped
    (mmengine refuses a scheduler that ends where it begins)."""
    work = tmp_path / "one"
    train_seg(TINY / "upernet_r18_folder-64x64.py", "--data-root", synthetic_seg, "--output-dir", work,
              "--max-iters", "1", "--cfg-options", "train_dataloader.batch_size=2")
    check_results(work / "results.json", "semantic_seg", "resnet18", "random", iterations=1, batch=2)
    assert (work / "iter_1.pth").is_file()


@pytest.mark.slow
def test_two_process_torchrun_on_cpu_with_the_mae_recipes_neck(synthetic_seg, tmp_path):
    """The MAE recipe's neck as mmseg configures it: Feature2Pyramid without a norm_cfg, so SyncBN from its
    class default, which gloo cannot run; the CPU fallback makes it BN (issue 22)."""
    config = tmp_path / "vit_pico_default_neck.py"
    config.write_text(f'_base_ = ["{TINY / "upernet_vit-pico_folder-64x64.py"}"]\n'
                      'model = dict(neck=dict(_delete_=True, type="Feature2Pyramid", embed_dim=96, '
                      'rescales=[4, 2, 1, 0.5]))\n')  # x4: the rescale that has a norm layer
    work = tmp_path / "ddp_vit"
    run_tool("-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", free_port(),
             "tools/train_seg.py", config, "--data-root", synthetic_seg, "--output-dir", work, "--max-iters", "2",
             "--cfg-options", "train_dataloader.batch_size=2", env={"OMP_NUM_THREADS": "1"}, timeout=120)
    check_results(work / "results.json", "semantic_seg", "vit_pico_patch8", "random", iterations=2, batch=4)
