"""Studies: a sweep of pretraining settings, each point pretrained and put through the ladder.

A study (``configs/studies/*.yaml``, read by ``Study.load``) names a base pretraining config, the keys it
sweeps (one key, a grid of several, or an explicit list of points), the pretraining length, the ladder's
rungs, seeds and baseline, and the paper's series to draw beside it (``transfer.published.STUDY_SERIES``).
Per point, ``run_point``: the pretraining (``tools/pretrain_net.py`` as its own process: resumed when
interrupted, skipped when finished), then the ladder on its final checkpoint (``transfer.ladder``'s own
plan, jobs, seeds and verdicts). A point that fails is recorded as failed and the others go on.
``submit_study`` does the same through SLURM: each pretraining a job (requeued on preemption), each point's
ladder a job that starts after it (``afterok``) and submits the ladder's own jobs (``transfer.ladder.run_slurm``).
``collect`` reads every point's record back from its folders (the report after SLURM jobs, ``--report-only``).

Output ``<out>/<name>/``: ``plan.json`` (points, commands, GPU-hours), ``pretrain/<its keys>/`` (shared by
the points whose only differences are their rungs' keys) and ``points/<label>/ladder/``, ``results.json`` (per point: status, per rung the mean, std and n of each
metric, the pretraining's images/s and wall-clock), and per rung and metric a figure (x: the swept
value, y: mean +- std over seeds, the paper's series beside it) and a table (Markdown and CSV) with the
pretraining speed-up against the study's reference point (the paper's Table 2 layout).
"""
from __future__ import annotations

import csv
import io
import itertools
import json
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

from pretrain.errors import ConfigError, InputNotFound

REPO = Path(__file__).resolve().parents[2]
STUDIES = REPO / "configs" / "studies"

# Pretraining throughput per GPU (images / s through every view, A100-class, bf16) for the dry run's
# GPU-hours: estimates from the papers' reported schedules and hardware, not measurements.
PRETRAIN_IMAGES_PER_GPU_S = {
    "mae_vit_base_patch16": 400.0, "mae_vit_large_patch16": 160.0, "mae_vit_huge_patch14": 70.0,
    "resnet50": 320.0, "vit_base": 140.0, "vit_small": 300.0,
}
IMAGENET_TRAIN_IMAGES = 1_281_167
# The rung of a paper's series about the pretraining itself (MAE Table 2: its hours and speed-up), not a ladder rung.
PRETRAIN = "pretrain"


@dataclass(frozen=True)
class Point:
    """A study's point. Its keys are pretraining config keys, or ``<rung>:<key>``: an override of that rung's
    tool (e.g. ``finetune:model.tune_blocks``), the pretraining then shared by the points that differ only
    there."""
    label: str  # a file-name-safe name: key=value,...
    overrides: Dict[str, Any]  # swept key -> value

    @property
    def pretraining(self) -> Dict[str, Any]:
        return {k: v for k, v in self.overrides.items() if ":" not in k}

    def rung_overrides(self, rung: str) -> List[str]:
        return [f"{k.split(':', 1)[1]}={format_value(v)}" for k, v in self.overrides.items()
                if k.startswith(f"{rung}:")]

    @property
    def x(self):
        """The value drawn on the figure's x axis: the point's one swept value, else its label."""
        return next(iter(self.overrides.values())) if len(self.overrides) == 1 else self.label


@dataclass
class Study:
    name: str
    base: str  # the pretraining config (a path, relative to the repository or absolute)
    sweep: Dict[str, List[Any]] = field(default_factory=dict)  # a grid over every key's values
    points: List[Dict[str, Any]] = field(default_factory=list)  # or the points themselves
    overrides: List[str] = field(default_factory=list)  # for every point: the length, ...
    pretrain_data: Optional[str] = None  # the --data key whose folder is the pretraining's data.path
    rungs: List[str] = field(default_factory=lambda: ["linear"])
    seeds: int = 1
    baseline: str = "none"
    rung_args: Dict[str, List[str]] = field(default_factory=dict)
    series: List[str] = field(default_factory=list)  # transfer.published.STUDY_SERIES keys: the paper's values
    reference: Optional[str] = None  # the point the speed-ups are measured against (its label)
    paper: str = ""  # what the study reproduces, for the report's title

    @classmethod
    def load(cls, path) -> "Study":
        import yaml

        path = Path(path)
        if not path.is_file():
            raise InputNotFound(f"study file not found: {path} (shipped studies: {', '.join(shipped())})")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({' '.join(str(e).split())})") from None
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ConfigError(f"{path}: unknown study keys {unknown}; expected some of {sorted(known)}")
        raw.setdefault("name", path.stem)
        study = cls(**raw)
        study.check(str(path))
        return study

    def check(self, where: str) -> None:
        from transfer.ladder.rung import all_rungs

        if bool(self.sweep) == bool(self.points):
            raise ConfigError(f"{where}: give either sweep (key: [values]) or points (a list of key: value maps)")
        if not self.base_path().is_file():
            raise InputNotFound(f"{where}: base config not found: {self.base}")
        unknown = sorted(set(self.rungs) - set(all_rungs()))
        if unknown:
            raise ConfigError(f"{where}: unknown rungs {unknown}; expected some of {', '.join(all_rungs())}")
        if self.seeds < 1:
            raise ConfigError(f"{where}: seeds must be >= 1, got {self.seeds}")
        labels = [p.label for p in self.grid()]
        rung_keys = sorted({k.split(":", 1)[0] for p in self.grid() for k in p.overrides if ":" in k})
        if set(rung_keys) - set(self.rungs):
            raise ConfigError(f"{where}: keys of rungs the study does not run: {sorted(set(rung_keys) - set(self.rungs))}")
        if len(set(labels)) != len(labels):
            raise ConfigError(f"{where}: two points are the same: {labels}")
        if self.reference is not None and self.reference not in labels:
            raise ConfigError(f"{where}: reference {self.reference!r} is not a point ({', '.join(labels)})")
        from transfer.published import STUDY_SERIES

        unknown = [s for s in self.series if s not in STUDY_SERIES]
        if unknown:
            raise ConfigError(f"{where}: series {unknown} are not in transfer.published.STUDY_SERIES")
        elsewhere = [s for s in self.series if STUDY_SERIES[s].rung not in (*self.rungs, PRETRAIN)]
        if elsewhere:
            raise ConfigError(f"{where}: series {elsewhere} are of rungs the study does not run")
        for p in self.grid():  # every point's config must load: a typo fails before any run
            self.config(p)

    def base_path(self) -> Path:
        base = Path(self.base)
        return base if base.is_absolute() else REPO / base

    def grid(self) -> List[Point]:
        if self.points:
            return [Point(point_label(p), dict(p)) for p in self.points]
        keys = list(self.sweep)
        return [Point(point_label(dict(zip(keys, values))), dict(zip(keys, values)))
                for values in itertools.product(*(self.sweep[k] for k in keys))]

    def point_overrides(self, point: Point, out: Path, data: Mapping[str, str]) -> List[str]:
        """The point's pretraining overrides: the study's, the point's keys, its output folder, its data."""
        if self.pretrain_data and self.pretrain_data not in data:
            raise ConfigError(f"the study pretrains on --data {self.pretrain_data}=PATH, which was not given")
        return [*self.overrides, *(f"{k}={format_value(v)}" for k, v in point.pretraining.items()),
                f"train.output_dir={out}"] + ([f"data.path={data[self.pretrain_data]}"] if self.pretrain_data else [])

    def config(self, point: Point, out: Path = Path("/nonexistent"), data: Optional[Mapping[str, str]] = None):
        """The point's pretraining config (``data`` None: checked with a stand-in for the dataset's path)."""
        from pretrain.config import load_config

        if data is None:
            data = {self.pretrain_data: "/path/to/data"} if self.pretrain_data else {}
        return load_config(self.base_path(), self.point_overrides(point, out, data))


def point_label(overrides: Mapping[str, Any]) -> str:
    """``model.mask_ratio=0.75,model.mask_sampling=block`` -> ``mask_ratio=0.75,mask_sampling=block``."""
    return ",".join(f"{k.rsplit('.', 1)[-1]}={format_value(v)}" for k, v in overrides.items()).replace("/", "_")


def format_value(v) -> str:
    return str(v).lower() if isinstance(v, bool) else str(v)


def shipped() -> List[str]:
    return sorted(p.stem for p in STUDIES.glob("*.yaml"))


# ---------------------------------------------------------------- one point
def pretrain_folder(out: Path, point: Point) -> Path:
    """One pretraining per distinct set of pretraining keys (``base``: the study's config as it is)."""
    return out / "pretrain" / (point_label(point.pretraining) or "base")


def pretrain_failure(folder: Path) -> Path:
    """The record of a pretraining that ended without its final checkpoint (as a ladder job's ``failed.json``):
    the report tells such a point from one that has not run yet, or is still running."""
    return folder / "failed.json"


def record_pretrain_failure(folder: Path, rc: int) -> None:
    from pretrain.checkpoint import write_text_atomic

    write_text_atomic(pretrain_failure(folder), json.dumps(
        {"returncode": rc, "log": str(folder / "output.txt"), "when": time.strftime("%Y-%m-%dT%H:%M:%S")}))


def pretrain_command(study: Study, point: Point, out: Path, data: Mapping[str, str], python: str = sys.executable
                     ) -> List[str]:
    return [python, "tools/pretrain_net.py", str(study.base_path()), "--resume",
            *study.point_overrides(point, pretrain_folder(out, point), data)]


def finished_checkpoint(study: Study, point: Point, out: Path, data: Mapping[str, str]) -> Optional[Path]:
    """The point's final checkpoint when its pretraining ran its whole schedule, else None."""
    from pretrain.checkpoint import load_file
    from pretrain.methods import get_method

    cfg = study.config(point, pretrain_folder(out, point), data)
    method = get_method(cfg.method)
    last = pretrain_folder(out, point) / method.checkpoint_name("last")
    if not last.is_file():
        return None
    ckpt = load_file(last)
    position = ckpt.get("trainer") or {}
    return last if position.get("epoch", 0) >= cfg.train.epochs and position.get("iter", 0) == 0 else None


def pretrain_speed(folder: Path) -> Dict[str, Optional[float]]:
    """Median images/s of the pretraining's logged windows, and its wall-clock: the sum of the gaps
    between log records, without the gaps of an interruption (> 10x the median gap)."""
    path = folder / "metrics.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    speeds = [r["images_per_s"] for r in records if r.get("images_per_s")]
    times = [r["time"] for r in records if "time" in r]
    gaps = [b - a for a, b in zip(times, times[1:])]
    typical = statistics.median(gaps) if gaps else 0.0
    return {"images_per_s": statistics.median(speeds) if speeds else None,
            "wall_clock_s": sum(g for g in gaps if g <= 10 * typical) if gaps else None}


def ladder_plan(study: Study, checkpoint: Path, out: Path, point: Point, data: Mapping[str, str], weights=None):
    from transfer import ladder

    rung_args = {rung: [*study.rung_args.get(rung, []), *point.rung_overrides(rung)] for rung in study.rungs}
    return ladder.plan(checkpoint, out / "points" / point.label / "ladder", study.rungs, data, seeds=study.seeds,
                       baseline=study.baseline, rung_args=rung_args, weights=weights)


def run_point(study: Study, point: Point, out: Path, data: Mapping[str, str], echo: Callable[[str], None] = print,
              env: Optional[Mapping[str, str]] = None, weights=None) -> Dict:
    """Pretrain the point (resumed, or skipped when finished), then run its ladder; the point's record."""
    from transfer import ladder

    folder = pretrain_folder(out, point)
    checkpoint = finished_checkpoint(study, point, out, data)
    if checkpoint is None:
        folder.mkdir(parents=True, exist_ok=True)
        echo(f"[{point.label}] pretraining ({'resuming' if any(folder.glob('*.pth*')) else 'starting'}) ...")
        start = time.time()
        pretrain_failure(folder).unlink(missing_ok=True)
        with open(folder / "output.txt", "a") as log:
            rc = subprocess.call(pretrain_command(study, point, out, data), cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                 env=ladder.job_env(env))
        checkpoint = finished_checkpoint(study, point, out, data)
        if rc != 0 or checkpoint is None:
            record_pretrain_failure(folder, rc)
            echo(f"[{point.label}] pretraining FAILED (exit {rc}; log {folder / 'output.txt'})")
            return {"label": point.label, "overrides": point.overrides, "status": "failed",
                    "log": str(folder / "output.txt")}
        echo(f"[{point.label}] pretrained in {time.time() - start:.0f} s")
    else:
        echo(f"[{point.label}] pretraining done earlier, skipped")
    p = ladder_plan(study, checkpoint, out, point, data, weights)
    for reason in p.skipped:
        echo(f"[{point.label}] skipped {reason}")
    ladder.run_local(p, echo=lambda line: echo(f"[{point.label}] {line}"), env=env)
    return point_record(point, p, folder)


def point_record(point: Point, p, folder: Path) -> Dict:
    """The point's record from its folders: per rung and subject the seeds' summary, and its status: done,
    failed (a ladder job failed), or unfinished (ladder jobs not run yet, or still running under SLURM)."""
    from transfer import ladder

    rungs = {}
    for a in ladder.summarise(p):
        rungs.setdefault(a.rung, {})[a.role] = {"mean": a.mean, "std": a.std, "n": a.n, "task": a.task,
                                                "failed": a.failed}
    states = {ladder.job_state(job) for job in p.jobs}
    status = "failed" if "failed" in states else "done" if states <= {"done"} else "unfinished"
    return {"label": point.label, "overrides": point.overrides, "status": status, "ladder": p.folder,
            "rungs": rungs, "skipped": list(p.skipped), "pretrain": pretrain_speed(folder)}


def point_from_disk(study: Study, point: Point, out: Path, data: Mapping[str, str], weights=None) -> Dict:
    """A point's record from what its jobs left on disk, wherever they ran: its pretraining folder, and its
    ladder re-planned from the finished checkpoint (the same folder the ladder's jobs wrote: it is keyed by
    the checkpoint's content), summarised. Writes nothing."""
    folder = pretrain_folder(out, point)
    checkpoint = finished_checkpoint(study, point, out, data)
    if checkpoint is None:
        failed = pretrain_failure(folder).is_file()
        return {"label": point.label, "overrides": point.overrides,
                "status": "failed" if failed else "unfinished" if folder.is_dir() else "not started",
                "log": str(folder / "output.txt"), "pretrain": pretrain_speed(folder)}
    return point_record(point, ladder_plan(study, checkpoint, out, point, data, weights), folder)


def collect(study: Study, out: Path, data: Mapping[str, str], weights=None) -> Dict:
    """Every point's record from disk (``point_from_disk``): the study's results however its jobs ran."""
    records = []
    for point in study.grid():
        try:
            records.append(point_from_disk(study, point, out, data, weights))
        except Exception as e:  # noqa: BLE001  (one point's unreadable folder does not hide the others)
            records.append({"label": point.label, "overrides": point.overrides, "status": "failed",
                            "error": f"{type(e).__name__}: {e}"})
    return {"study": study.name, "paper": study.paper, "points": records}


def report_from_disk(study: Study, out: Path, data: Mapping[str, str], weights=None) -> Dict:
    """``--report-only`` and the report after SLURM jobs: ``collect``, then results.json and the report. The
    datasets and weights default to those of the plan the study was run with (``plan.json``): the ladder's
    jobs are found by re-planning, and a rung planned without its data would have none."""
    from pretrain.checkpoint import write_text_atomic

    plan = out / "plan.json"
    if not plan.is_file():
        raise InputNotFound(f"{plan}: no study run here to report on; run the study first (or give its --out)")
    ran = json.loads(plan.read_text())
    results = collect(study, out, {**ran.get("data", {}), **data}, weights or ran.get("weights"))
    write_text_atomic(out / "results.json", json.dumps(results, indent=2))
    write_report(study, out, results)
    return results


# ---------------------------------------------------------------- the whole study
def plan_rows(study: Study, out: Path, data: Mapping[str, str]) -> Dict:
    """What the study will run, and its cost: per point the pretraining command and GPU-hours, and the
    ladder's jobs from the rungs' shipped recipes for the point's backbone."""
    from transfer.ladder.rung import all_rungs

    rows, total, pretrainings = [], 0.0, set()
    stand_in = {study.pretrain_data: data.get(study.pretrain_data, f"<{study.pretrain_data}>")} if (
        study.pretrain_data) else {}
    for point in study.grid():
        cfg = study.config(point, pretrain_folder(out, point), {**data, **stand_in})
        pre = pretrain_gpu_hours(cfg)
        recipes = {name: r.recipes[backbone_of(cfg)] for name, r in all_rungs().items()
                   if backbone_of(cfg) in r.recipes}
        subjects = 1 if study.baseline == "none" else 2
        jobs = [(rung, recipes[rung].gpu_hours * subjects * study.seeds) for rung in study.rungs if rung in recipes]
        shared = pretrain_folder(out, point) in pretrainings  # counted with the first point that needs it
        pretrainings.add(pretrain_folder(out, point))
        hours = (0.0 if shared else pre or 0.0) + sum(h for _, h in jobs)
        total += hours
        rows.append({"label": point.label, "overrides": point.overrides,
                     "pretrain": {"command": pretrain_command(study, point, out, {**data, **stand_in}, "python"),
                                  "gpu_hours": pre, "shared": shared},
                     "ladder": [{"rung": r, "jobs": subjects * study.seeds, "gpu_hours": round(h, 2)} for r, h in jobs],
                     "missing_recipes": [r for r in study.rungs if r not in recipes],
                     "gpu_hours": round(hours, 1)})
    return {"study": study.name, "paper": study.paper, "points": rows, "gpu_hours": round(total, 1),
            "seeds": study.seeds, "rungs": study.rungs, "baseline": study.baseline,
            "data": {k: v for k, v in data.items()}}


def backbone_of(cfg) -> str:
    """The results' backbone name of a pretraining config's network (the ladder's recipes are keyed by it)."""
    arch = cfg.model.arch
    if arch.startswith("mae_"):
        return arch[len("mae_"):]
    return {"vit_base": "vit_base_patch16", "vit_small": "vit_small_patch16", "vit_pico": "vit_pico_patch8"}.get(
        arch, arch)


def pretrain_gpu_hours(cfg) -> Optional[float]:
    """A pretraining's A100-hours on ImageNet-1k from ``PRETRAIN_IMAGES_PER_GPU_S``; 0 for the CPU-sized
    configs (synthetic or small data), None where no estimate exists."""
    if cfg.data.synthetic or cfg.model.arch in ("mae_vit_pico_patch8", "mae_vit_tiny_patch16", "vit_pico", "resnet18"):
        return 0.0
    rate = PRETRAIN_IMAGES_PER_GPU_S.get(cfg.model.arch)
    return None if rate is None else round(cfg.train.epochs * IMAGENET_TRAIN_IMAGES / rate / 3600, 1)


def run_study(study: Study, out: Path, data: Mapping[str, str], echo: Callable[[str], None] = print,
              env: Optional[Mapping[str, str]] = None, weights=None) -> Dict:
    from pretrain.checkpoint import write_text_atomic

    if study.pretrain_data and study.pretrain_data not in data:  # before anything is written
        raise ConfigError(f"study {study.name} pretrains on --data {study.pretrain_data}=PATH, which was not given")
    write_plan(study, out, data, weights)
    records = []
    for point in study.grid():
        try:
            records.append(run_point(study, point, out, data, echo, env, weights))
        except Exception as e:  # noqa: BLE001  (a point's failure is recorded; the others go on)
            echo(f"[{point.label}] FAILED: {type(e).__name__}: {e}")
            records.append({"label": point.label, "overrides": point.overrides, "status": "failed",
                            "error": f"{type(e).__name__}: {e}"})
    results = {"study": study.name, "paper": study.paper, "points": records}
    write_text_atomic(out / "results.json", json.dumps(results, indent=2))
    write_report(study, out, results)
    return results


def write_plan(study: Study, out: Path, data: Mapping[str, str], weights=None) -> Path:
    """``plan.json``: what ``plan_rows`` prices, and the datasets and weights the report re-plans the ladders with."""
    from pretrain.checkpoint import write_text_atomic

    out.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(out / "plan.json", json.dumps({**plan_rows(study, out, data), "weights": weights},
                                                           indent=2))


# ---------------------------------------------------------------- SLURM
def pretrain_launch(command: Sequence[str], nodes: int, gpus_per_node: int, node_rank: int = 0,
                    master: str = "127.0.0.1", port: Optional[int] = None) -> List[str]:
    """``python tools/pretrain_net.py ...`` on the GPUs this node has (at most ``gpus_per_node``): through
    torchrun when there are several processes, rendezvous on ``master:port`` across nodes (as
    tools/submit_slurm.py's script); one process without GPUs (submitit's local executor, in the tests)."""
    from transfer import ladder

    python, *tool = command
    per_node = max(1, min(gpus_per_node, ladder._cuda_devices()))
    if nodes > 1:
        return [python, "-m", "torch.distributed.run", "--nnodes", str(nodes), "--node_rank", str(node_rank),
                "--nproc_per_node", str(per_node), "--master_addr", master, "--master_port", str(port), *tool]
    if per_node > 1:
        return [python, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(per_node), *tool]
    return list(command)


class PretrainJob:
    """A submitit callable: one point's pretraining (``pretrain_command``, always ``--resume``: a requeued job
    continues from its newest checkpoint). ``checkpoint`` makes submitit requeue it on preemption or timeout;
    SLURM's SIGTERM reaches the trainer, which stops at the next step with a checkpoint."""

    def __init__(self, command: Sequence[str], folder: Path, nodes: int, gpus_per_node: int):
        self.command, self.folder, self.nodes, self.gpus_per_node = list(command), Path(folder), nodes, gpus_per_node

    def __call__(self) -> None:
        import submitit

        from transfer import ladder

        env = submitit.JobEnvironment()
        master = env.hostnames[0] if env.hostnames else "127.0.0.1"
        cmd = pretrain_launch(self.command, self.nodes, self.gpus_per_node, env.node, master,
                              ladder.job_port(env.job_id))
        if env.node == 0:
            pretrain_failure(self.folder).unlink(missing_ok=True)
        log = self.folder / ("output.txt" if env.node == 0 else f"output.node{env.node}.txt")
        with open(log, "a") as f:
            f.write(f"\n$ {' '.join(cmd)}\n")
            f.flush()
            rc = subprocess.call(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, env=ladder.job_env())
        if rc != 0:  # afterok: the point's ladder job never starts
            if env.node == 0:
                record_pretrain_failure(self.folder, rc)
            raise RuntimeError(f"pretraining failed with exit {rc} on node {env.node}; log: {log}")

    def checkpoint(self):
        import submitit

        return submitit.helpers.DelayedSubmission(PretrainJob(self.command, self.folder, self.nodes,
                                                              self.gpus_per_node))


class PointLadderJob:
    """A submitit callable, started after the point's pretraining succeeded (``afterok``): plans the point's
    ladder from the final checkpoint (``ladder_plan``: the folder and jobs a local run and the report use) and
    submits its jobs with the ladder's own ``run_slurm`` (GPUs, requeue, skipping what finished). A CPU job of
    a few minutes (it hashes the checkpoint); the compute node must reach ``sbatch``, as on most clusters."""

    def __init__(self, study: Study, point: Point, out: Path, data: Mapping[str, str], weights=None,
                 partition: Optional[str] = None, cluster: Optional[str] = None):
        self.study, self.point, self.out, self.data = study, point, Path(out), dict(data)
        self.weights, self.partition, self.cluster = weights, partition, cluster

    def __call__(self) -> List[str]:
        from transfer import ladder

        checkpoint = finished_checkpoint(self.study, self.point, self.out, self.data)
        if checkpoint is None:
            raise RuntimeError(f"{self.point.label}: its pretraining has no final checkpoint in "
                               f"{pretrain_folder(self.out, self.point)}")
        p = ladder_plan(self.study, checkpoint, self.out, self.point, self.data, self.weights)
        jobs = ladder.run_slurm(p, partition=self.partition, cluster=self.cluster)
        if self.cluster == "local":  # the local executor's jobs are this process's children: wait for them
            for job in jobs:
                job.exception()
        return [job.job_id for job in jobs]


def still_queued(folder: Path) -> Optional[str]:
    """The SLURM job id recorded for this pretraining (``slurm_job``) when ``squeue`` still lists it (queued,
    running, or requeued): its pretraining and the ladders after it are in SLURM's hands already."""
    record = folder / "slurm_job"
    squeue = shutil.which("squeue")
    if not record.is_file() or squeue is None:
        return None
    job_id = record.read_text().strip()
    listed = subprocess.run([squeue, "-h", "-j", job_id, "-o", "%i"], capture_output=True, text=True)
    return job_id if listed.returncode == 0 and listed.stdout.strip() else None


def executor(folder: Path, cluster: str, name: str, timeout_min: int, max_requeues: int, nodes: int = 1,
             gpus_per_node: int = 0, partition: Optional[str] = None, after: Optional[str] = None):
    """A submitit executor for one study job; ``after``: a job id this one waits for (``afterok``: it never
    starts if that one fails). SLURM's parameters only where there is SLURM (the local executor has none)."""
    import submitit

    ex = submitit.AutoExecutor(folder=str(folder), cluster=cluster, slurm_max_num_timeout=max_requeues)
    params: Dict[str, Any] = dict(name=name, timeout_min=timeout_min, nodes=nodes, tasks_per_node=1)
    if cluster != "local":
        params.update(slurm_partition=partition, slurm_additional_parameters={
            "requeue": True, **({"dependency": f"afterok:{after}"} if after else {})})
        if gpus_per_node:
            params.update(gpus_per_node=gpus_per_node, cpus_per_task=10 * gpus_per_node)
    ex.update_parameters(**{k: v for k, v in params.items() if v is not None})
    return ex


def submit_study(study: Study, out: Path, data: Mapping[str, str], partition: Optional[str] = None,
                 nodes: int = 1, gpus_per_node: int = 8, cluster: Optional[str] = None, weights=None,
                 timeout_min: int = 4320, max_requeues: int = 3, echo: Callable[[str], None] = print) -> List:
    """Submit the study to SLURM: each unfinished pretraining once (points that share one share its job), and
    each point's ladder after it (``PointLadderJob``, ``afterok``); a point whose pretraining finished has
    its ladder submitted now, from here (``run_slurm``: its finished jobs skipped). ``cluster``: submitit's
    (``local`` runs the jobs here, for tests; by default SLURM, or ``NoSlurm`` before anything is written).
    Returns the submitted submitit jobs (the ladder's own, for finished points, included)."""
    from pretrain.checkpoint import write_text_atomic
    from transfer import ladder

    if cluster is None:  # never submitit's silent fallback to running the jobs here
        ladder.require_slurm()
        cluster = "slurm"
    if study.pretrain_data and study.pretrain_data not in data:  # before anything is written
        raise ConfigError(f"study {study.name} pretrains on --data {study.pretrain_data}=PATH, which was not given")
    write_plan(study, out, data, weights)
    submitit_folder = out / "submitit"
    # pretraining folder -> its job; None: finished earlier; "queued": SLURM has it, and the ladders after it
    pretrainings: Dict[Path, Any] = {}
    submitted = []
    for point in study.grid():  # every pretraining first: they run side by side
        folder = pretrain_folder(out, point)
        if folder not in pretrainings:
            if finished_checkpoint(study, point, out, data) is not None:
                echo(f"[{point.label}] pretraining done earlier, skipped")
                pretrainings[folder] = None
            elif cluster != "local" and (queued := still_queued(folder)):
                echo(f"[{point.label}] pretraining still queued or running as {queued}, with its ladder after it: "
                     "not submitted again")
                pretrainings[folder] = "queued"
            else:
                folder.mkdir(parents=True, exist_ok=True)
                job = executor(submitit_folder, cluster, f"pretrain-{study.name}-{folder.name}", timeout_min,
                               max_requeues, nodes, gpus_per_node, partition).submit(
                    PretrainJob(pretrain_command(study, point, out, data), folder, nodes, gpus_per_node))
                echo(f"[{point.label}] pretraining submitted as {job.job_id} ({nodes} node(s) x {gpus_per_node} GPUs)")
                write_text_atomic(folder / "slurm_job", str(job.job_id))
                pretrainings[folder] = job
                submitted.append(job)
    for point in study.grid():
        pre = pretrainings[pretrain_folder(out, point)]
        if pre == "queued":
            continue
        if pre is None:  # its checkpoint is here: the ladder's jobs go now
            p = ladder_plan(study, finished_checkpoint(study, point, out, data), out, point, data, weights)
            submitted += ladder.run_slurm(p, partition=partition, cluster=cluster, max_requeues=max_requeues,
                                          echo=lambda line: echo(f"[{point.label}] {line}"))
            continue
        if cluster == "local":  # the local executor has no dependencies: wait here for the pretraining
            pre.exception()
        job = executor(submitit_folder, cluster, f"ladder-{study.name}-{point.label}", 60, max_requeues,
                       partition=partition, after=pre.job_id).submit(
            PointLadderJob(study, point, out, data, weights, partition, cluster))
        echo(f"[{point.label}] ladder submitted as {job.job_id}, after {pre.job_id} (afterok)")
        submitted.append(job)
    return submitted


# ---------------------------------------------------------------- report
def metric_values(record: Dict, rung: str, metric: str, role: str = "pretrained"):
    r = (record.get("rungs") or {}).get(rung, {}).get(role)
    if not r or metric not in r["mean"]:
        return None
    return r["mean"][metric], r["std"].get(metric, 0.0), r["n"]


def report_metrics(results: Dict) -> List[tuple]:
    """(rung, metric) pairs with a value at some point: each rung's primary metric."""
    from transfer.ladder.rung import primary_metric

    pairs = []
    for record in results["points"]:
        for rung, roles in (record.get("rungs") or {}).items():
            task = roles.get("pretrained", {}).get("task")
            metric = primary_metric(task)
            if metric and (rung, metric) not in pairs:
                pairs.append((rung, metric))
    return pairs


def write_report(study: Study, out: Path, results: Optional[Dict] = None) -> List[Path]:
    """The tables (Markdown, CSV) and one figure per rung and metric; from ``results.json`` when not given."""
    from pretrain.checkpoint import write_text_atomic
    from transfer.published import STUDY_SERIES

    if results is None:
        path = out / "results.json"
        if not path.is_file():
            raise InputNotFound(f"{path}: no results to report; run the study first")
        results = json.loads(path.read_text())
    series = [STUDY_SERIES[key] for key in study.series]
    records = results["points"]
    reference = next((r for r in records if r["label"] == study.reference), None)
    ref_speed = ((reference or {}).get("pretrain") or {}).get("images_per_s")
    speedups = {r["label"]: (r.get("pretrain") or {}).get("images_per_s") / ref_speed for r in records
                if ref_speed and (r.get("pretrain") or {}).get("images_per_s")}
    pairs = report_metrics(results)
    header = ["point", "status"] + [f"{rung} {metric}" for rung, metric in pairs] + [
        f"paper: {s.name}" for s in series] + ["pretrain images/s", "wall-clock h", "speed-up"]
    rows = []
    for r in records:
        row = [r["label"], r["status"]]
        for rung, metric in pairs:
            v = metric_values(r, rung, metric)
            row.append("-" if v is None else f"{v[0]:.2f} ± {v[1]:.2f} (n={v[2]})")
        for s in series:
            paper = s.values.get(r["label"])
            row.append("-" if paper is None else f"{paper:g}")
        speed = (r.get("pretrain") or {}).get("images_per_s")
        wall = (r.get("pretrain") or {}).get("wall_clock_s")
        row += ["-" if speed is None else f"{speed:.1f}", "-" if wall is None else f"{wall / 3600:.3f}",
                "-" if r["label"] not in speedups else f"{speedups[r['label']]:.2f}x"]
        rows.append(row)
    md = [f"# {study.name}: {study.paper}".rstrip(": "), "",
          "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(row) + " |" for row in rows]
    for s in series:
        md += ["", f"Paper, {s.name}: {s.source}" + ("" if s.checked else " (values not re-checked against the paper)")]
    if study.reference:
        md += [f"Speed-up: pretraining images/s against the point {study.reference}."]
    written = [write_text_atomic(out / "table.md", "\n".join(md) + "\n")]
    buf = io.StringIO()
    csv.writer(buf).writerows([header] + rows)
    written.append(write_text_atomic(out / "table.csv", buf.getvalue()))
    for rung, metric in pairs:
        written.append(draw_figure(study, records, rung, metric, [s for s in series if s.rung == rung],
                                   out / f"figure_{rung}_{metric}.png"))
    if speedups:  # Table 2 as a figure: the measured speed-ups beside the paper's
        written.append(draw_figure(study, records, PRETRAIN, "speedup",
                                   [s for s in series if (s.rung, s.metric) == (PRETRAIN, "speedup")],
                                   out / f"figure_{PRETRAIN}_speedup.png",
                                   value=lambda r: (speedups[r["label"]], 0.0, 1) if r["label"] in speedups else None))
    return written


def draw_figure(study: Study, records: Sequence[Dict], rung: str, metric: str, series: Sequence, path: Path,
                value: Optional[Callable[[Dict], Optional[tuple]]] = None) -> Path:
    """x: the points; y: ``value(record)`` (mean, std, n), by default the rung's metric over its seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = {p.label: p for p in study.grid()}
    xs = [points[r["label"]].x if r["label"] in points else r["label"] for r in records]
    numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in xs)
    position = {r["label"]: (x if numeric else i) for i, (r, x) in enumerate(zip(records, xs))}
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    over_seeds = value is None
    value = value or (lambda r: metric_values(r, rung, metric))
    done = [(position[r["label"]], value(r)) for r in records]
    done = [(x, v) for x, v in done if v is not None]
    if done:
        ax.errorbar([x for x, _ in done], [v[0] for _, v in done], yerr=[v[1] for _, v in done], marker="o",
                    capsize=3, label=f"this run ({rung}" + (", mean ± std over seeds)" if over_seeds else ")"))
    failed = [position[r["label"]] for r in records if r["status"] == "failed"]
    for x in failed:
        ax.axvline(x, color="red", alpha=0.3, linestyle=":")
    if series:
        ax2 = ax.twinx()  # the paper's scale (ImageNet, ViT-L) is not a small run's: its own axis
        for s in series:
            paper = [(position[label], v) for label, v in s.values.items() if label in position]
            ax2.plot([x for x, _ in paper], [v for _, v in paper], "s--", color="gray", label=f"paper: {s.name}")
        ax2.set_ylabel("paper", color="gray")
        ax2.legend(loc="lower right", fontsize=7)
    if not numeric:
        ax.set_xticks(list(range(len(records))))
        ax.set_xticklabels([str(x) for x in xs], rotation=20, ha="right", fontsize=7)
    ax.set_xlabel(", ".join(study.sweep) if study.sweep else "point")
    ax.set_ylabel(f"{rung} {metric}")
    ax.set_title(study.name + (" (red: failed)" if failed else ""), fontsize=9)
    ax.legend(loc="lower left", fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
