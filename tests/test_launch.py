"""How the evaluation ladder launches a job (transfer.ladder): on fewer GPUs than the recipe's, the recipe's batch
kept (gradient accumulation) or the framework's scaling rule applied (detectron2's reference world size, mmseg's
auto_scale_lr), recorded in results.json and marked in the report; rendezvous ports that two jobs never share;
multi-node jobs whose other nodes keep no records. The visible GPUs are injected (``_cuda_devices``), SLURM is faked
with its environment variables, and the tool's processes with a stand-in for ``transfer.warm_start.call``."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, run_tool

needs_mmseg = pytest.mark.skipif(importlib.util.find_spec("mmseg") is None,
                                 reason="mmsegmentation is not installed (tools/setup_env.sh installs it)")
PYTHON = sys.executable


def tool(name):
    """tools/<name>.py as a module."""
    spec = importlib.util.spec_from_file_location(f"tool_{name}", REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def ladder_job(rung, backbone="vit_base_patch16", folder="/tmp/ladder-job", extra=(), data=None, random=False):
    """The ladder's job of ``rung`` for a ``backbone`` checkpoint (``random``: its random baseline), its command as
    ``plan`` makes it."""
    from pathlib import Path

    from transfer.ladder import CheckpointInfo, Job, Subject
    from transfer.ladder.rung import get_rung

    info = CheckpointInfo("/ckpt/model.pth", "0" * 64, "vit" if "vit" in backbone else "resnet", backbone,
                          f"mae_{backbone}" if "vit" in backbone else backbone, "mae")
    subject = Subject("baseline", None, "random") if random else Subject("pretrained", info.path)
    recipe = get_rung(rung).recipes[backbone]
    data_args, task = get_rung(rung).data_args(Path(data or "/data/none"))
    cmd = get_rung(rung).command(recipe, subject, info, 0, str(folder), data_args, extra)
    return Job(rung, subject, 0, str(folder), cmd, recipe.gpus, recipe.gpu_hours, task)


@pytest.fixture
def gpus(monkeypatch):
    """``gpus(n)``: the ladder sees ``n`` GPUs."""
    import transfer.ladder as ladder

    return lambda n: monkeypatch.setattr(ladder, "_cuda_devices", lambda: n)


def launched_cls_config(cmd):
    """The classification config a launched ``tools/train_cls.py`` command trains with, and its processes."""
    from transfer.classification.config import load_cls_config

    from pretrain.cli import is_key_value

    at = cmd.index("tools/train_cls.py")
    procs = int(cmd[cmd.index("--nproc_per_node") + 1]) if "--nproc_per_node" in cmd else 1
    return load_cls_config(cmd[at + 1], [a for a in cmd[at + 2:] if is_key_value(a)]), procs


# ------------------------------------------------------------ fewer GPUs
@pytest.mark.parametrize("visible,procs", [(1, 1), (2, 2), (3, 2), (6, 4), (8, 8)])
def test_fewer_gpus_keep_the_recipes_batch_by_accumulation(gpus, visible, procs):
    """A 32-GPU linear probe on a machine of 1-8 GPUs: as many processes as GPUs (a divisor of the recipe's per-node
    GPUs), and the recipe's effective batch kept by train.accum_iter (today: 8 processes whatever is visible)."""
    from transfer.ladder import launch_command

    gpus(visible)
    job = ladder_job("linear")
    recipe, _ = launched_cls_config([PYTHON, *job.command])
    cmd = launch_command(job, resume=False)
    cfg, used = launched_cls_config(cmd)
    assert used == procs
    if procs > 1:
        assert cmd[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node"]
    else:
        assert cmd[:2] == [PYTHON, "tools/train_cls.py"]
    # The effective batch of the recipe: per-GPU batch x accumulation x its 32 GPUs.
    assert cfg.train.batch_size * cfg.train.accum_iter * used == recipe.train.batch_size * recipe.train.accum_iter * 32
    from transfer.ladder import job_launch

    launch = job_launch(job)
    assert launch.record() == {"recipe_gpus": 32, "gpus": procs, "nodes": 1,
                               "rule": f"batch kept by gradient accumulation: train.accum_iter={32 // procs}"}


def test_accumulation_multiplies_the_users_own(gpus):
    """A rung run with train.accum_iter=2 already (--rung-args) keeps its batch too: 2 x 4 on 8 of 32 GPUs."""
    from transfer.ladder import launch_command

    gpus(8)
    job = ladder_job("finetune", extra=["train.accum_iter=2"])
    cfg, used = launched_cls_config(launch_command(job, resume=True))
    assert (used, cfg.train.accum_iter) == (8, 8)


def test_as_many_gpus_as_the_recipe_changes_nothing(gpus):
    from transfer.ladder import launch_command

    gpus(8)
    job = ladder_job("linear", backbone="resnet50")  # MoCo's 8-GPU linear classification
    cmd = launch_command(job, resume=False)
    assert cmd[:6] == [PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "8"]
    assert not any("accum_iter" in a for a in cmd)
    gpus(0)  # no GPU: one process, as one GPU; the recipe's one-GPU rungs are unchanged
    knn = ladder_job("knn")
    assert launch_command(knn, resume=False) == [PYTHON, *knn.command]
    from transfer.ladder import job_launch

    assert not job_launch(knn).differs
    gpus(8)
    assert not job_launch(job).differs


def test_detection_on_fewer_gpus_passes_the_reference_world_size(gpus):
    """ViTDet-B's 64-GPU recipe on one GPU: detectron2 starts one process (today: --num-gpus 8, its launch
    assertion on one GPU), told the recipe's world size."""
    from transfer.ladder import launch_command

    gpus(1)
    job = ladder_job("detection")
    cmd = launch_command(job, resume=True)
    args = tool("train_net").parse_args(cmd[cmd.index("tools/train_net.py") + 1:])
    assert (args.num_gpus, args.num_machines, args.reference_world_size, args.dist_url) == (1, 1, 64, "auto")
    assert args.resume == "auto" and args.opts == ["train.seed=0"]


@pytest.mark.detectron2
def test_reference_world_size_rule_on_lazyconfig_and_yacs(moco_yacs):
    """detectron2's rule: batch and lr x world/reference, iterations, steps, warm-up and periods x reference/world;
    on a LazyConfig (ViTDet-B, 64 -> 8 GPUs) and a yacs config (the MoCo authors' VOC recipe, 8 -> 2)."""
    from transfer.detection.engine import Recipe
    from transfer.detection.scaling import scale_to_world_size

    lazy = Recipe.load(REPO / "configs/detectron2/COCO/mask_rcnn_vitdet_b_100ep.py", device="cpu")
    c = lazy.cfg
    before = (c.dataloader.train.total_batch_size, c.optimizer.lr, c.train.max_iter, c.train.eval_period,
              c.train.checkpointer.period)
    assert before[:3] == (64, 1e-4, 184375)
    assert scale_to_world_size(lazy, 64, 64) is None
    note = scale_to_world_size(lazy, 64, 8)
    assert "batch 64 -> 8" in note and "iterations 184375 -> 1475000" in note
    assert (c.dataloader.train.total_batch_size, c.train.max_iter, c.train.eval_period, c.train.checkpointer.period) \
        == (8, 184375 * 8, before[3] * 8, before[4] * 8)
    assert c.optimizer.lr == pytest.approx(1e-4 / 8)
    # The lr schedule is a function of the fraction of train.max_iter done: its milestones follow.
    from detectron2.config import instantiate

    schedule = instantiate(c.lr_multiplier)
    assert schedule(163000 / 184375) == 1.0 and schedule(164000 / 184375) == pytest.approx(0.1)

    yacs = Recipe.load(moco_yacs / "pascal_voc_R_50_C4_24k_moco.yaml", device="cpu")
    s = yacs.cfg.SOLVER
    assert (s.IMS_PER_BATCH, s.BASE_LR, s.MAX_ITER, tuple(s.STEPS), s.WARMUP_ITERS) == (16, 0.02, 24000,
                                                                                      (18000, 22000), 100)
    period = yacs.cfg.SOLVER.CHECKPOINT_PERIOD
    scale_to_world_size(yacs, 8, 2)
    s = yacs.cfg.SOLVER
    assert (s.IMS_PER_BATCH, s.MAX_ITER, tuple(s.STEPS), s.WARMUP_ITERS, s.CHECKPOINT_PERIOD) == (
        4, 96000, (72000, 88000), 400, period * 4)
    assert s.BASE_LR == pytest.approx(0.005) and yacs.cfg.is_frozen()


@pytest.mark.slow
@pytest.mark.detectron2
def test_a_detection_job_on_fewer_gpus_trains_the_scaled_recipe(gpus, tmp_path):
    """run_job of a 2-GPU tiny ViTDet job on one: tools/train_net.py gets --reference-world-size 2 and trains half the
    batch for twice the iterations; its results.json records both, and the launch."""
    from pretrain.synthetic import write_coco_dataset
    from transfer.ladder import Job, Subject, run_job
    from transfer.results import read_results

    gpus(1)
    train_json, _ = write_coco_dataset(tmp_path / "shapes", "train", 8, size=(128, 128), seed=0)
    val_json, _ = write_coco_dataset(tmp_path / "shapes", "val", 4, size=(128, 128), seed=1)
    folder = tmp_path / "det"
    cmd = ["tools/train_net.py", "--config-file", "configs/detectron2/tiny/mask_rcnn_vitdet_pico.py", "--random-init",
           "--train-json", str(train_json), "--test-json", str(val_json), "--output-dir", str(folder),
           "--max-iters", "2", "train.seed=0"]
    job = Job("detection", Subject("baseline", None, "random"), 0, str(folder), cmd, 2, 0.0, "coco_instance_seg")
    assert run_job(job, resume=False, env={"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}) == 0, \
        job.log.read_text()[-3000:]
    record = read_results(job.results)
    assert (record["recipe"]["batch"], record["recipe"]["iterations"]) == (2, 4)  # the tiny recipe: 4 x 2 iterations
    assert record["launch"]["recipe_gpus"] == 2 and record["launch"]["gpus"] == 1
    assert "reference world size rule scales batch 4 -> 2" in job.log.read_text()


@needs_mmseg
def test_segmentation_on_fewer_gpus_enables_mmsegs_auto_scale_lr(gpus, tmp_path):
    """UperNet ViT-B (8 GPUs x 2) on one GPU: mmseg's auto_scale_lr with the recipe's batch 16 as its base, inside the
    --cfg-options of the command, the seed kept."""
    from transfer.ladder import job_launch, launch_command

    gpus(1)
    job = ladder_job("segmentation", folder=tmp_path / "seg", data=str(tmp_path), random=True)
    cmd = launch_command(job, resume=False)
    assert cmd[:2] == [PYTHON, "tools/train_seg.py"]
    t = tool("train_seg")
    cfg, _ = t.build_config(t.parse_args(cmd[2:]))
    assert cfg.auto_scale_lr.enable is True and cfg.auto_scale_lr.base_batch_size == 16
    assert cfg.randomness.seed == 0 and cfg.train_dataloader.batch_size == 2
    assert job_launch(job).record()["gpus"] == 1


# ------------------------------------------------------------ results and report
def test_the_launch_is_recorded_in_results_and_marked_in_the_report(tmp_path, monkeypatch):
    from transfer.report import build_table, load_runs, to_markdown
    from transfer.results import LAUNCH_ENV, read_results, write_results

    launch = {"recipe_gpus": 32, "gpus": 1, "nodes": 1, "rule": "batch kept by gradient accumulation: "
                                                                "train.accum_iter=32"}
    recipe = {"epochs": 90, "batch": 16384, "img_size": 224}
    write_results(tmp_path / "plain", "imagenet_linear", "vit_base_patch16", "supervised", {"top1": 60.0}, recipe)
    monkeypatch.setenv(LAUNCH_ENV, json.dumps(launch))
    write_results(tmp_path / "fewer", "imagenet_linear", "vit_base_patch16", "mae", {"top1": 68.0}, recipe)
    assert read_results(tmp_path / "fewer")["launch"] == launch
    assert "launch" not in read_results(tmp_path / "plain")
    table = build_table("imagenet_linear", load_runs([tmp_path]))
    notes = {c.row.name: c.notes for c in table.comparisons if c.row.origin == "run"}
    assert "† launch: 1 GPU(s) instead of the recipe's 32 (batch kept by gradient accumulation: " \
           "train.accum_iter=32)" in notes["fewer"]
    assert not any("launch" in n for n in notes["plain"])
    rows = {line.split("|")[2].strip(): line for line in to_markdown(table).splitlines() if "| run" in line}
    assert "| run † |" in rows["mae (fewer)"] and "| run |" in rows["supervised (plain)"]


@pytest.mark.slow
def test_a_job_on_fewer_gpus_records_its_launch_end_to_end(gpus, tmp_path):
    """run_job on a 2-GPU recipe with one GPU visible: the log says so, the tool's own results.json records the
    launch, the ladder's report marks the row (kNN has no batch rule: it says so)."""
    from transfer.classification.data import write_synthetic_folder
    from transfer.ladder import CheckpointInfo, Job, Plan, Subject, run_job, write_ladder_report

    gpus(1)
    data = write_synthetic_folder(tmp_path / "cls", per_class=4, size=32)
    folder = tmp_path / "out" / "knn" / "baseline" / "seed0"
    cmd = ["tools/knn_eval.py", "--random-init", "resnet18", "--train", str(data / "train"), "--val",
           str(data / "val"), "--out", str(folder), "--img-size", "32", "--batch", "16", "--num-workers", "0"]
    job = Job("knn", Subject("baseline", None, "random"), 0, str(folder), cmd, 2, 0.0, "knn")
    assert run_job(job, resume=False, env={"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}) == 0
    assert "launch: 1 GPU(s) for a recipe of 2; none: the tool has no" in job.log.read_text()
    record = json.loads(job.results.read_text())
    assert record["launch"] == {"recipe_gpus": 2, "gpus": 1, "nodes": 1,
                                "rule": "none: the tool has no accumulation or scaling rule"}
    info = CheckpointInfo("/ckpt/model.pth", "0" * 64, "resnet", "resnet18", "resnet18", "random")
    report = write_ladder_report(Plan(info, "random", 1, str(tmp_path / "out"), [job])).read_text()
    assert "| run † |" in report and "† launch: 1 GPU(s) instead of the recipe's 2" in report


# ------------------------------------------------------------ ports
def test_one_node_jobs_rendezvous_on_a_free_port_and_multi_node_ones_on_the_jobs(gpus, monkeypatch):
    from transfer.ladder import launch_command

    gpus(8)
    one = launch_command(ladder_job("linear", backbone="resnet50"), resume=False)
    assert "--standalone" in one and "--master_port" not in one and "29500" not in one
    det = launch_command(ladder_job("detection", backbone="resnet50"), resume=False)  # 8 GPUs, one node
    assert "--dist-url" not in det  # detectron2's default "auto": a free port
    monkeypatch.setenv("SLURM_JOB_ID", "4242424")
    multi = launch_command(ladder_job("linear"), resume=False, nodes=4, node_rank=2, master="node0")
    at = multi.index("torch.distributed.run")
    assert multi[at + 1:at + 11] == ["--nnodes", "4", "--node_rank", "2", "--nproc_per_node", "8", "--master_addr",
                                     "node0", "--master_port", "22424"]
    vitdet = launch_command(ladder_job("detection"), resume=False, nodes=8, node_rank=1, master="node0")
    assert vitdet[vitdet.index("--dist-url") + 1] == "tcp://node0:22424"
    assert vitdet[vitdet.index("--num-gpus") + 1] == "8" and "--reference-world-size" not in vitdet
    # Jobs one id apart never share a port (within the range); an array task's id counts too.
    from transfer.ladder import PORT_BASE, PORT_SPAN, job_port

    ports = {job_port(i) for i in range(1000, 1000 + PORT_SPAN)}
    assert len(ports) == PORT_SPAN and min(ports) == PORT_BASE and max(ports) < 32768  # below the ephemeral range
    assert job_port("123_4") == PORT_BASE + 1234


def test_submit_slurm_derives_its_port_from_the_job(tmp_path):
    from transfer.ladder import job_port

    run_tool("tools/submit_slurm.py", "configs/pretrain/mae_vit_large_in1k.yaml", "--nodes", "2", "--dry-run",
             f"train.output_dir={tmp_path}/out", "data.path=/data/in1k")
    script = (tmp_path / "out" / "slurm" / "mae_vit_large_in1k.sh").read_text()
    assert "29500" not in script and '--rdzv_endpoint "$MASTER_ADDR:$MASTER_PORT"' in script
    line = next(ln for ln in script.splitlines() if ln.startswith("MASTER_PORT="))
    port = subprocess.run(["bash", "-c", f"SLURM_JOB_ID=4242424; {line}; echo $MASTER_PORT"], capture_output=True,
                          text=True, check=True).stdout.strip()
    assert int(port) == job_port(4242424)
    run_tool("tools/submit_slurm.py", "configs/pretrain/mae_vit_large_in1k.yaml", "--port", "29999", "--dry-run",
             f"train.output_dir={tmp_path}/fixed", "data.path=/data/in1k")
    assert "MASTER_PORT=29999" in (tmp_path / "fixed" / "slurm" / "mae_vit_large_in1k.sh").read_text()


def test_submit_slurm_without_sbatch_or_refused_says_so_in_one_line(tmp_path):
    """No sbatch on PATH: refused before the script is written. sbatch refusing the job: its reason, one line."""
    args = ("tools/submit_slurm.py", "configs/pretrain/mae_vit_large_in1k.yaml", f"train.output_dir={tmp_path}/out",
            "data.path=/data/in1k")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    proc = run_tool(*args, env={"PATH": str(bin_dir)}, check=False)
    assert proc.returncode == 2 and proc.stderr.splitlines() == [proc.stderr.strip()], proc.stderr
    assert proc.stderr.startswith("error: sbatch not found on PATH") and not (tmp_path / "out").exists()
    sbatch = bin_dir / "sbatch"
    sbatch.write_text("#!/bin/sh\necho 'sbatch: error: invalid partition specified: gpu' >&2\nexit 1\n")
    sbatch.chmod(0o755)
    proc = run_tool(*args, env={"PATH": os.pathsep.join([str(bin_dir), os.environ["PATH"]])}, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.splitlines() == [proc.stderr.strip()] and "invalid partition specified: gpu" in proc.stderr


# ------------------------------------------------------------ multi-node
def fake_slurm(monkeypatch, node, nodes=8, job_id="777001"):
    """The environment task ``node`` of a submitit SLURM job of ``nodes`` nodes (one task each) runs in: SLURM's
    variables, and submitit's name of its executor (its sbatch script exports it)."""
    for key, value in {"SLURM_JOB_ID": job_id, "SLURM_JOB_NUM_NODES": str(nodes), "SLURM_NODEID": str(node),
                       "SLURM_PROCID": str(node), "SLURM_LOCALID": "0", "SLURM_NTASKS": str(nodes),
                       "SLURM_JOB_NODELIST": f"gpu[{100}-{100 + nodes - 1}]", "SUBMITIT_EXECUTOR": "slurm"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)


def test_only_node_zero_of_a_multi_node_job_keeps_its_records(gpus, monkeypatch, tmp_path):
    """An 8-node ViTDet job that succeeds: nodes 1-7 end before node 0 has written results.json (only the tool's rank
    0 writes it). Today each of them writes failed.json, appends to output.txt and fails reading the results; here
    they log to their own file and record nothing, and the job is done, not failed."""
    import transfer.warm_start as warm_start
    from transfer.ladder import LadderJob, job_state
    from transfer.results import write_results

    gpus(8)
    job = ladder_job("detection", folder=tmp_path / "det")
    launched = {}

    def tool_on_node(cmd, log, env, cwd, warm):
        """What the tool does on one node: its lines in the log; results.json from rank 0 (on node 0) only."""
        node = int(cmd[cmd.index("--machine-rank") + 1])
        launched[node] = (cmd, env)
        log.write(f"node {node} trained\n")
        if node == 0:
            write_results(job.folder, "coco_instance_seg", "vit_base_patch16", "mae", {"box_AP": 50.0}, {})
        return 0

    monkeypatch.setattr(warm_start, "call", tool_on_node)
    for node in range(1, 8):
        fake_slurm(monkeypatch, node)
        assert LadderJob(job)() is None
        assert not job.failure.exists() and not job.log.exists()
        assert f"node {node} trained" in (tmp_path / "det" / f"output.node{node}.txt").read_text()
    fake_slurm(monkeypatch, 0)
    assert LadderJob(job)()["metrics"]["box_AP"] == 50.0
    assert job_state(job) == "done" and not job.failure.exists()
    assert job.log.read_text().count("trained") == 1  # node 0's lines only
    from transfer.ladder import job_port
    from transfer.results import LAUNCH_ENV

    for node, (cmd, env) in launched.items():
        assert cmd[cmd.index("--dist-url") + 1] == f"tcp://gpu100:{job_port(777001)}"
        assert (cmd[cmd.index("--num-machines") + 1], cmd[cmd.index("--num-gpus") + 1]) == ("8", "8")
        assert env[LAUNCH_ENV] == ""  # 8 nodes x 8 GPUs: the recipe's


def test_a_failing_other_node_raises_without_recording(gpus, monkeypatch, tmp_path):
    import transfer.warm_start as warm_start
    from transfer.ladder import LadderJob

    gpus(8)
    job = ladder_job("detection", folder=tmp_path / "det")
    monkeypatch.setattr(warm_start, "call", lambda cmd, log, env, cwd, warm: 1)
    fake_slurm(monkeypatch, 3)
    with pytest.raises(RuntimeError, match="on node 3; log: .*output.node3.txt"):
        LadderJob(job)()
    assert not job.failure.exists() and not job.log.exists()
    fake_slurm(monkeypatch, 0)  # node 0's failure is the job's: recorded
    with pytest.raises(RuntimeError, match="on node 0"):
        LadderJob(job)()
    assert json.loads(job.failure.read_text())["returncode"] == 1


def test_no_launch_record_leaks_from_the_environment(gpus, monkeypatch, tmp_path):
    """A job run as its recipe says clears a launch record the ladder's own environment might hold."""
    import transfer.warm_start as warm_start
    from transfer.ladder import run_job
    from transfer.results import LAUNCH_ENV

    gpus(0)
    monkeypatch.setenv(LAUNCH_ENV, json.dumps({"gpus": 1}))
    seen = {}
    monkeypatch.setattr(warm_start, "call", lambda cmd, log, env, cwd, warm: seen.update(env) or 0)
    run_job(ladder_job("knn", folder=tmp_path / "knn"), resume=False)
    assert seen[LAUNCH_ENV] == "" and os.environ[LAUNCH_ENV]
