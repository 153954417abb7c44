"""The evaluation ladder: from one checkpoint to seeded results of every rung, cheapest first.

A *rung* is one protocol (weighted kNN, linear probe, frozen dense probe, fine-tuning,
detectron2, mmseg UperNet, ...) run by the project's own tool for it as its own process, so that
every rung is the same code a user runs by hand. Each is declared in one file of
``transfer/ladder/rungs/`` (``transfer.ladder.rung``: its tool, data, tasks, suites and recipes). ``plan`` turns a checkpoint into *jobs*:
rung x subject (the checkpoint, and its baseline through the same protocol) x seed, each
with its command, its output folder, the GPUs its recipe needs and an estimate of its cost.
``run_local`` runs them one after another (a finished job is skipped, an interrupted one
resumed, a failed one recorded with its log and the rest go on); ``run_slurm`` submits one
job each through submitit. ``summarise`` aggregates the seeds (mean, standard deviation, n)
and gives each rung a verdict from the seeds' spread (Welch's t-test, see ``verdict``).

Output folder, one per checkpoint *content* (two files named alike never mix):
``<out>/<file stem>-<sha256[:12]>/plan.json``, ``<rung>/<subject>/seed<k>/results.json``
(``transfer.results``' schema, with ``seed``), ``failed.json`` beside a failed job's log,
and ``report/`` (tables with mean ± std, the published numbers, charts with error bars,
training curves).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shlex
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from pretrain.errors import ConfigError, InputNotFound, UserError
from transfer.ladder.rung import all_rungs, backbones, data_keys, get_rung, primary_metric

REPO = Path(__file__).resolve().parents[2]

SIGNIFICANCE = 0.05  # two-sided p of Welch's t-test below which a gap is called a difference


# --------------------------------------------------------------- datasets
def absolute(path: str) -> str:
    """``path`` against the caller's directory: ladder jobs run with the repository as theirs."""
    return os.path.abspath(os.path.expanduser(path))


def parse_data(pairs, data_file) -> Dict[str, str]:
    """The datasets' folders of ``--data KEY=PATH ...`` and ``--data-file`` (a YAML mapping), absolute: relative
    ones, in either, are the caller's directory's (tools/evaluate.py, tools/study.py)."""
    data = {}
    if data_file:
        import yaml

        if not Path(data_file).is_file():
            raise InputNotFound(f"--data-file {data_file}: no such file (expected a YAML mapping like "
                                "'imagenet: /data/imagenet')")
        try:
            loaded = yaml.safe_load(Path(data_file).read_text()) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise ConfigError(f"--data-file {data_file}: not valid YAML ({' '.join(str(e).split())}); expected a "
                              "mapping like 'imagenet: /data/imagenet'") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"--data-file {data_file}: expected a mapping like 'imagenet: /data/imagenet', "
                              f"found a {type(loaded).__name__}")
        data.update({str(k): str(v) for k, v in loaded.items()})
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key or not value:
            raise ConfigError(f"--data takes KEY=PATH (imagenet=..., ade20k=..., coco=...), got {pair!r}")
        data[key] = value
    return {key: absolute(value) for key, value in data.items()}


# --------------------------------------------------------------- subjects
@dataclass(frozen=True)
class Subject:
    """What a job evaluates: the checkpoint, or its baseline (a checkpoint, or random initialisation)."""
    role: str  # "pretrained" | "baseline"
    checkpoint: Optional[str]  # None: random initialisation of the backbone
    label: Optional[str] = None  # results' pretraining label to force (random init: "random")
    variant: Optional[str] = None  # which network of the checkpoint (DINO's student, I-JEPA's context); None: default


@dataclass(frozen=True)
class CheckpointInfo:
    path: str
    digest: str  # sha256 of the file's bytes
    family: str  # vit | resnet
    backbone: str  # results name: vit_base_patch16, resnet50, ...
    arch: str  # what the tools build for random initialisation: mae_vit_base_patch16, resnet50, ...
    pretrain: str
    variant: Optional[str] = None  # the network of the file evaluated (read_backbone's); None: the default
    # No preset name builds its network (``BackboneExport.preset`` is None: LayerScale, registers, CLIP's norms,
    # BEiT's tables, a shape of no preset): the frameworks' recipes that build it from the file serve it
    # (``Rung.recipe_for``), and its random baseline is a twin file of the same network (``random_twin_path``).
    needs_checkpoint: bool = False
    vit_size: Tuple[int, ...] = ()  # a ViT's (width, depth, patch): the recipes' cost is scaled by its FLOPs
    network: str = ""  # sha256[:12] of the export's architecture and shape: one network, one random twin


def file_digest(path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def inspect_checkpoint(path, allow_pickle: bool = False, variant: Optional[str] = None) -> CheckpointInfo:
    """Family, backbone name and pretraining of any checkpoint the project reads."""
    from pretrain.backbones import read_backbone

    path = str(path)
    if not Path(path).is_file():
        raise InputNotFound(f"checkpoint not found: {path} (expected a checkpoint file: check the path)")
    export = read_backbone(path, allow_pickle, variant=variant)
    arch = f"mae_{export.arch}" if export.family == "vit" else export.arch
    size = tuple(int(export.shape[k]) for k in ("embed_dim", "depth", "patch_size")) if export.family == "vit" else ()
    network = hashlib.sha256(json.dumps([export.arch, export.shape], sort_keys=True, default=str).encode())
    return CheckpointInfo(path, file_digest(path), export.family, export.arch, arch, export.label, variant,
                          export.preset is None, size, network.hexdigest()[:12])


# -------------------------------------------------------------------- jobs
@dataclass
class Job:
    rung: str
    subject: Subject
    seed: int
    folder: str
    command: List[str]
    gpus: int
    gpu_hours: float
    task: str

    @property
    def key(self) -> str:
        return f"{self.rung}/{self.subject.role}/seed{self.seed}"

    @property
    def results(self) -> Path:
        return Path(self.folder) / "results.json"

    @property
    def failure(self) -> Path:
        return Path(self.folder) / "failed.json"

    @property
    def log(self) -> Path:  # the tool's whole output (its own log.txt, where it writes one, has the same lines)
        return Path(self.folder) / "output.txt"

    def node_log(self, node: int) -> Path:  # the output of node ``node`` > 0 of a multi-node job
        return Path(self.folder) / f"output.node{node}.txt"


@dataclass
class Plan:
    checkpoint: CheckpointInfo
    baseline: str
    seeds: int
    folder: str
    jobs: List[Job] = field(default_factory=list)
    skipped: List[str] = field(default_factory=list)  # rungs that cannot run here, with the reason
    # Files the jobs read that the launchers write first (``write_random_twins``): path -> what it is drawn from.
    twins: Dict[str, Dict] = field(default_factory=dict)

    def to_json(self) -> Dict:
        return {"checkpoint": dataclasses.asdict(self.checkpoint), "baseline": self.baseline, "seeds": self.seeds,
                "skipped": self.skipped, "gpu_hours": self.gpu_hours, "random_twins": self.twins,
                "jobs": [{**dataclasses.asdict(j), "subject": dataclasses.asdict(j.subject), "key": j.key}
                         for j in self.jobs]}

    @property
    def gpu_hours(self) -> float:
        return round(sum(j.gpu_hours for j in self.jobs), 2)


def checkpoint_folder(out_root, info: CheckpointInfo) -> Path:
    variant = f"-{info.variant}" if info.variant else ""  # each network of one file has its own results
    return Path(out_root) / f"{Path(info.path).name.split('.')[0]}{variant}-{info.digest[:12]}"


# The supervised ImageNet-1k twin of each backbone: the released files' names, as torch.hub caches them
# (torchvision's V1 weights, the MoCo papers' kind of baseline; DeiT's for ViT-B, the supervised ViT-B the
# MAE transfer comparisons start from). The first one found in the weights folder is used.
SUPERVISED_TWINS: Dict[str, Tuple[str, ...]] = {
    "resnet50": ("resnet50-0676ba61.pth", "resnet50-19c8e357.pth"),
    "resnet18": ("resnet18-f37072fd.pth", "resnet18-5c106cde.pth"),
    "vit_base_patch16": ("deit_base_patch16_224-b5f2ef4d.pth",),
    "vit_small_patch16": ("deit_small_patch16_224-cd65a155.pth",),  # DINO's and iBOT's ViT-S/16 comparisons
}


def weights_folder() -> Path:
    """Where torch.hub keeps downloaded weights (``$TORCH_HOME/hub/checkpoints``): where these files are."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints"


def supervised_twin(backbone: str, folder=None) -> Path:
    """The supervised twin's file for ``backbone`` in ``folder`` (default: torch.hub's), or a clear error."""
    folder = Path(folder) if folder else weights_folder()
    names = SUPERVISED_TWINS.get(backbone, ())
    for name in names:
        if (folder / name).is_file():
            return folder / name
    if not names:
        raise ConfigError(f"--baseline supervised: no supervised twin is known for {backbone}; pass --baseline PATH "
                          "or --baseline random")
    raise InputNotFound(f"--baseline supervised: the supervised {backbone} ({' or '.join(names)}) is not in "
                            f"{folder}; no weights are downloaded by this tool: put the file there "
                            "(torchvision / DeiT download it there), pass --baseline PATH, or --baseline random")


RANDOM_TWIN = "<random twin>"  # the random baseline's checkpoint, before plan gives each seed its file


def random_twin_path(out_root, info: CheckpointInfo, seed: int) -> Path:
    """Where the random twin of ``info``'s network for the jobs of ``seed`` is written: one file per network (its
    shape and options) and seed, so that checkpoints of one network share it and its jobs, and each seed is
    another draw (as the tools' ``--random-init`` under their ``--seed``)."""
    return Path(out_root) / "random-twins" / f"{info.backbone}-{info.network}-seed{seed}.pth"


def write_random_twins(p: Plan) -> None:
    """Write the random twins ``p``'s jobs read (``Plan.twins``) that are not there yet."""
    from pretrain.backbones import read_backbone
    from transfer.backbone import random_twin

    for path, source in p.twins.items():
        if not Path(path).is_file():
            export = read_backbone(source["checkpoint"], source["allow_pickle"], variant=source["variant"])
            random_twin(export, seed=source["seed"]).save_file(path)


def _subjects(info: CheckpointInfo, baseline: str, weights=None) -> List[Subject]:
    """The checkpoint and its baseline: ``supervised`` (the twin's file, found in ``weights`` or torch.hub's
    folder), ``random`` (the tools' ``--random-init ARCH``; ``RANDOM_TWIN`` when no preset name builds the
    network: ``plan`` gives each seed's job its twin file), a checkpoint's path, or ``none``."""
    subjects = [Subject("pretrained", info.path, variant=info.variant)]
    if baseline == "random":
        subjects.append(Subject("baseline", RANDOM_TWIN if info.needs_checkpoint else None, "random"))
    elif baseline == "supervised":
        subjects.append(Subject("baseline", str(supervised_twin(info.backbone, weights))))
    elif baseline != "none":
        if not Path(baseline).is_file():
            raise InputNotFound(f"baseline checkpoint not found: {baseline} (expected supervised, random, none or "
                                "the path of a checkpoint file)")
        subjects.append(Subject("baseline", str(baseline)))
    return subjects


def check_inputs(rungs: Sequence[str], data: Mapping[str, str], rung_args: Optional[Mapping] = None,
                 rung_seeds: Optional[Mapping[str, int]] = None) -> None:
    """The rung names (``--rungs``, ``--rung-args``, ``--rung-seeds``) and dataset keys (``--data``) a user gave:
    a misspelt one would otherwise be skipped or ignored without a word."""
    known = all_rungs()
    for flag, names in (("--rungs", rungs), ("--rung-args", rung_args or {}), ("--rung-seeds", rung_seeds or {})):
        unknown = [r for r in names if r not in known]
        if unknown:
            raise ConfigError(f"{flag}: unknown rung(s) {', '.join(map(repr, unknown))}; expected some of "
                              f"{', '.join(known)}")
    keys = data_keys()
    unknown = [k for k in data if k not in keys]
    if unknown:
        raise ConfigError(f"--data: unknown dataset key(s) {', '.join(map(repr, unknown))}; expected KEY=PATH with "
                          f"KEY one of {', '.join(keys)}")
    bad = {r: n for r, n in (rung_seeds or {}).items() if not isinstance(n, int) or n < 1}
    if bad:
        raise ConfigError(f"--rung-seeds: seed counts must be positive integers, got {bad}")


def plan(checkpoint, out_root, rungs: Sequence[str], data: Mapping[str, str], seeds: int = 3,
         baseline: str = "supervised", rung_args: Optional[Mapping[str, Sequence[str]]] = None,
         rung_seeds: Optional[Mapping[str, int]] = None, allow_pickle: bool = False, weights=None,
         variant: Optional[str] = None) -> Plan:
    """Jobs of every requested rung for the checkpoint and its baseline, ``seeds`` seeds each (``rung_seeds``:
    another number for some rungs, e.g. one seed of an expensive one). A rung without a shipped recipe for
    the backbone, or without its dataset, is listed in ``skipped`` with the reason; so is, with a ``variant``
    (``read_backbone``'s), a rung whose tool cannot pick it."""
    from pretrain.checkpoint import CheckpointFormatError

    check_inputs(rungs, data, rung_args, rung_seeds)  # before reading the checkpoint: a typo fails at once
    info = inspect_checkpoint(checkpoint, allow_pickle, variant)
    known = all_rungs()
    if not any(r.recipe_for(info) for r in known.values()):
        raise CheckpointFormatError(f"{checkpoint}: a {info.backbone} backbone, which the ladder has no recipes for "
                                    f"(known backbones: {', '.join(backbones())}); evaluate it with the "
                                    "rungs' tools directly (docs/ladder.md)")
    folder = checkpoint_folder(out_root, info)
    p = Plan(info, baseline, seeds, str(folder))
    subjects = _subjects(info, baseline, weights)
    for rung in known.values():
        if rung.name not in rungs:
            continue
        recipe = rung.recipe_for(info)
        if recipe is None:
            p.skipped.append(f"{rung.name}: no shipped recipe for {info.backbone}"
                             + (" (a network its configs would not build as the file has it)"
                                if info.needs_checkpoint and info.backbone in rung.recipes else ""))
            continue
        if variant and not rung.takes_variant:
            p.skipped.append(f"{rung.name}: {rung.tool} takes no --variant (it would evaluate the default network)")
            continue
        root = data.get(rung.data)
        if not root or not Path(root).exists():
            p.skipped.append(f"{rung.name}: no {rung.data} data (--data {rung.data}=PATH)"
                             + (f"; {root} does not exist" if root else ""))
            continue
        rung.check_data(Path(root))
        data_args, task = rung.data_args(Path(root))
        for subject in subjects:
            for seed in range((rung_seeds or {}).get(rung.name, seeds)):
                evaluated = subject
                if subject.checkpoint == RANDOM_TWIN:
                    twin = str(random_twin_path(out_root, info, seed))
                    p.twins[twin] = {"checkpoint": info.path, "variant": info.variant, "allow_pickle": allow_pickle,
                                     "seed": seed}
                    evaluated = dataclasses.replace(subject, checkpoint=twin)
                job_folder = str(folder / rung.name / subject.role / f"seed{seed}")
                cmd = rung.command(recipe, evaluated, info, seed, job_folder, data_args,
                                   (rung_args or {}).get(rung.name, ()))
                p.jobs.append(Job(rung.name, evaluated, seed, job_folder, cmd, recipe.gpus, recipe.gpu_hours, task))
    return p


# --------------------------------------------------------------- launchers
def job_state(job: Job) -> str:
    if job.results.is_file():
        return "done"
    if job.failure.is_file():
        return "failed"
    return "started" if Path(job.folder).is_dir() else "new"


def check_records(p: Plan) -> None:
    """Read every finished job's results.json before the ladder writes anything: a malformed one (a file
    edited by hand, copied half) is named with how to fix it, instead of ending a run or a report midway."""
    from transfer.results import ResultsError, read_results

    for job in p.jobs:
        if job.results.is_file():
            try:
                read_results(job.results)
            except ResultsError as e:
                raise ResultsError(f"{e}; delete it to run job {job.key} again") from None


GPUS_PER_NODE = 8  # the recipes' nodes; a recipe of more GPUs spans ceil(GPUs / 8) nodes
# Multi-node rendezvous ports: PORT_BASE + job id mod PORT_SPAN, so that two jobs whose first nodes share a host
# (SLURM packing) do not collide; below Linux's ephemeral range (32768-60999), whose ports the OS hands out.
PORT_BASE, PORT_SPAN = 20000, 10000


def job_port(job_id) -> int:
    """The rendezvous port of a multi-node job: from its id (SLURM_JOB_ID; an array task's ``123_4`` counts as
    1234), in [PORT_BASE, PORT_BASE + PORT_SPAN)."""
    digits = "".join(ch for ch in str(job_id) if ch.isdigit())
    return PORT_BASE + int(digits or 0) % PORT_SPAN


@dataclass(frozen=True)
class Launch:
    """How a job runs on the GPUs it finds: processes per node, and, when they are fewer than its recipe's GPUs,
    the tool's arguments that keep the recipe's batch (or apply the framework's scaling rule) and what they do."""
    recipe_gpus: int
    nodes: int
    per_node: int  # processes on each node: one a GPU (one on a machine without GPUs)
    args: Tuple[str, ...] = ()
    rule: str = ""

    @property
    def gpus(self) -> int:
        return self.nodes * self.per_node

    @property
    def differs(self) -> bool:
        return self.gpus != self.recipe_gpus

    def record(self) -> Dict:
        """What ``results.json`` records as ``launch`` (``transfer.results.LAUNCH_ENV``)."""
        return {"recipe_gpus": self.recipe_gpus, "gpus": self.gpus, "nodes": self.nodes, "rule": self.rule}


def job_launch(job: Job, nodes: int = 1) -> Launch:
    """The processes ``job`` starts on ``nodes`` nodes of the GPUs visible here, and how its recipe's batch is kept
    with fewer: by gradient accumulation where the tool has it (``train.accum_iter``, as the MAE authors advise
    for fewer GPUs), else by the framework's rule (detectron2's reference world size: batch and lr scaled
    linearly, iterations and periods inversely; mmseg's ``auto_scale_lr``: the lr scaled by the batch). The
    processes per node are the largest divisor of the recipe's GPUs per node that the node has, so that the
    accumulation is a whole number and the batch exactly the recipe's (8-GPU recipes use 4 of 6 GPUs)."""
    recipe_gpus = max(1, job.gpus)
    wanted = math.ceil(recipe_gpus / nodes)
    have = max(1, _cuda_devices())  # a machine without GPUs runs one process, as one GPU would
    per_node = max(d for d in range(1, min(wanted, have) + 1) if wanted % d == 0)
    launch = Launch(recipe_gpus, nodes, per_node)
    if not launch.differs:
        return launch
    args, rule = get_rung(job.rung).keep_batch(job.command, recipe_gpus, launch.gpus)
    return dataclasses.replace(launch, args=tuple(args), rule=rule)


def launch_command(job: Job, resume: bool, python: str = sys.executable, nodes: int = 1, node_rank: int = 0,
                   master: str = "127.0.0.1", port: Optional[int] = None,
                   launch: Optional[Launch] = None) -> List[str]:
    """``python TOOL ...``, through torchrun for multi-GPU jobs (detectron2 launches its own processes), with
    ``launch``'s (default: ``job_launch``'s) processes and arguments; ``resume`` adds the tool's resume flag for a
    job that started before. One node: torchrun's ``--standalone`` and detectron2's ``auto`` URL rendezvous on
    a free port; several: on ``master:port`` (default: ``job_port`` of ``SLURM_JOB_ID``)."""
    launch = launch or job_launch(job, nodes)
    rung = get_rung(job.rung)
    cmd = rung.with_launch_args(rung.resumed(job.command) if resume else job.command, launch.args)
    if nodes > 1 and port is None:
        port = job_port(os.environ.get("SLURM_JOB_ID", 0))
    own = rung.own_launcher(cmd, launch.per_node, nodes, node_rank, f"tcp://{master}:{port}" if nodes > 1 else None)
    if own is not None:
        return [python, *own]
    if nodes > 1:
        return [python, "-m", "torch.distributed.run", "--nnodes", str(nodes), "--node_rank", str(node_rank),
                "--nproc_per_node", str(launch.per_node), "--master_addr", master, "--master_port", str(port), *cmd]
    if launch.per_node > 1:
        return [python, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(launch.per_node),
                *cmd]
    return [python, *cmd]


def _cuda_devices() -> int:
    """The GPUs this process sees (after CUDA_VISIBLE_DEVICES): the most processes a job starts here."""
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # noqa: BLE001  (no torch CUDA: CPU runs)
        return 0


def job_env(env: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}


def run_job(job: Job, resume: bool, env: Optional[Mapping[str, str]] = None, warm=None, nodes: int = 1,
            node_rank: int = 0, master: str = "127.0.0.1") -> int:
    """Run one job as its own process (a subprocess, or a child of ``warm``, a ``WarmStarter``), its output in
    ``output.txt``; a failure is recorded in ``failed.json``. A launch on other GPUs than the recipe's is logged
    and passed to the tool for its ``results.json`` (``transfer.results.LAUNCH_ENV``). In a multi-node job every
    node runs this, and only node 0 keeps the job's records (``output.txt``, ``failed.json``; ``results.json`` is
    the tool's rank 0's): another node logs to ``output.node<k>.txt`` and records nothing, since it may end
    before node 0 has written the results of a job that succeeded."""
    from transfer.results import LAUNCH_ENV
    from transfer.warm_start import call

    Path(job.folder).mkdir(parents=True, exist_ok=True)
    if node_rank == 0:
        job.failure.unlink(missing_ok=True)
    rc, cmd = 1, list(job.command)
    with open(job.log if node_rank == 0 else job.node_log(node_rank), "a") as log:
        try:  # reads the tool's config (its batch): one the tool would refuse fails this job, not the ladder
            launch = job_launch(job, nodes)
        except Exception as e:  # noqa: BLE001
            log.write(f"\nerror: cannot plan the launch of {shlex.join(cmd)}: {type(e).__name__}: {e}\n")
        else:
            cmd = launch_command(job, resume, nodes=nodes, node_rank=node_rank, master=master, launch=launch)
            env = {**(env or {}), LAUNCH_ENV: json.dumps(launch.record()) if launch.differs else ""}
            if launch.differs:
                log.write(f"\nlaunch: {launch.gpus} GPU(s) for a recipe of {launch.recipe_gpus}; {launch.rule}")
            log.write(f"\n$ {shlex.join(cmd)}\n")
            log.flush()
            rc = call(cmd, log, job_env(env), REPO, warm)
    if node_rank == 0 and (rc != 0 or not job.results.is_file()):
        from pretrain.checkpoint import write_text_atomic

        # Whole or absent (never a half-written record): a full disk here ends the ladder with its one line.
        write_text_atomic(job.failure, json.dumps({"returncode": rc, "log": str(job.log), "command": cmd,
                                                   "when": time.strftime("%Y-%m-%dT%H:%M:%S")}, indent=1))
    return rc


def run_local(p: Plan, echo: Callable[[str], None] = print, env: Optional[Mapping[str, str]] = None) -> None:
    """Every job in order, one line as each starts and ends. Finished jobs are skipped, started ones resumed,
    failed ones tried again; a failure never stops the others. Each job is its own process, forked from a
    server that has imported torch once (``transfer.warm_start``)."""
    from transfer.warm_start import WarmStarter

    write_random_twins(p)
    warm = None
    try:
        for i, job in enumerate(p.jobs, 1):
            state = job_state(job)
            head = f"[{i}/{len(p.jobs)}] {job.key}"
            if state == "done":
                echo(f"{head}: done earlier, skipped ({result_line(job)})")
                continue
            echo(f"{head}: {'resuming' if state in ('started', 'failed') else 'starting'} ...")
            start = time.time()
            if warm is None and WarmStarter.enabled():
                warm = WarmStarter(job_env(env))
            rc = run_job(job, resume=state in ("started", "failed"), env=env, warm=warm)
            took = f"{time.time() - start:.0f} s"
            echo(f"{head}: {'FAILED (exit ' + str(rc) + f', log {job.log})' if job.failure.is_file() else result_line(job)}"
                 f" in {took}")
    finally:
        if warm is not None:
            warm.close()


def result_line(job: Job) -> str:
    from transfer.results import read_results

    metric = primary_metric(job.task) or ""
    value = read_results(job.results)["metrics"].get(metric)
    return f"{metric} {value:.2f}" if value is not None else f"{metric} missing"


class NoSlurm(UserError, RuntimeError):
    """``--launcher slurm`` where there is no SLURM: a user error, told in one line."""


def require_slurm() -> None:
    """Refuse where SLURM's ``sbatch`` is not on PATH: submitit's AutoExecutor would otherwise fall back to its
    local executor, run the jobs here one by one, and crash on the first multi-node job."""
    if shutil.which("sbatch") is None:
        raise NoSlurm("--launcher slurm: no SLURM here (sbatch not found on PATH); run this on a SLURM login "
                      "node, or use --launcher local to run the jobs on this machine")


def run_slurm(p: Plan, folder: Optional[str] = None, partition: Optional[str] = None, timeout_min: int = 4320,
              max_requeues: int = 3, cluster: Optional[str] = None, echo: Callable[[str], None] = print):
    """One submitit job per unfinished rung x subject x seed, GPUs per job from the recipe, requeued on
    preemption or timeout (``max_requeues`` times; the tool resumes from its last checkpoint). ``cluster``:
    submitit's (``local`` runs them here, for tests: the only way to them; by default SLURM, or ``NoSlurm``).
    Returns the submitit jobs."""
    import submitit

    if cluster is None:  # never submitit's silent fallback to running the jobs here
        require_slurm()
        cluster = "slurm"
    write_random_twins(p)  # here: the jobs only read them
    submitted = []
    for job in p.jobs:
        if job_state(job) == "done":
            echo(f"{job.key}: done earlier, skipped")
            continue
        executor = submitit.AutoExecutor(folder=folder or str(Path(p.folder) / "submitit"), cluster=cluster,
                                         slurm_max_num_timeout=max_requeues)
        gpus = max(1, job.gpus)
        nodes = math.ceil(gpus / GPUS_PER_NODE)
        params = dict(name=f"ladder-{job.key.replace('/', '-')}", timeout_min=timeout_min, nodes=nodes,
                      tasks_per_node=1)
        if cluster != "local":
            params.update(gpus_per_node=min(gpus, GPUS_PER_NODE), cpus_per_task=10 * min(gpus, GPUS_PER_NODE),
                          slurm_partition=partition, slurm_additional_parameters={"requeue": True})
        executor.update_parameters(**{k: v for k, v in params.items() if v is not None})
        submitted.append(executor.submit(LadderJob(job)))
        echo(f"{job.key}: submitted as {submitted[-1].job_id} ({gpus} GPU{'s' * (gpus > 1)}, {nodes} node(s))")
    return submitted


class LadderJob:
    """A submitit callable: runs the job's tool (resuming after a requeue) and returns its results record (on
    node 0; None on the other nodes of a multi-node job, which keep no records, see ``run_job``).
    ``checkpoint`` makes submitit requeue it on preemption or timeout with the same job."""

    def __init__(self, job: Job, resume: bool = False):
        self.job, self.resume = job, resume

    def __call__(self) -> Optional[Dict]:
        import submitit

        from transfer.results import read_results

        env = submitit.JobEnvironment()
        master = env.hostnames[0] if env.hostnames else "127.0.0.1"
        resume = self.resume or job_state(self.job) in ("started", "failed")
        rc = run_job(self.job, resume, nodes=env.num_nodes, node_rank=env.node, master=master)
        if rc != 0:
            log = self.job.log if env.node == 0 else self.job.node_log(env.node)
            raise RuntimeError(f"{self.job.key} failed with exit {rc} on node {env.node}; log: {log}")
        # The tool's rank 0, on node 0, writes the results: another node may end before it has.
        return read_results(self.job.results) if env.node == 0 else None

    def checkpoint(self):
        import submitit

        return submitit.helpers.DelayedSubmission(LadderJob(self.job, resume=True))


# --------------------------------------------------------------- summaries
@dataclass
class Aggregate:
    rung: str
    role: str
    task: str
    backbone: str
    pretrain: str
    mean: Dict[str, float]
    std: Dict[str, float]
    n: int
    values: Dict[str, List[float]]
    recipe: Dict
    failed: List[str] = field(default_factory=list)  # logs of failed seeds
    launch: Optional[Dict] = None  # a seed's results' ``launch``: run on other GPUs than the recipe's


def summarise(p: Plan) -> List[Aggregate]:
    """Mean, standard deviation (n - 1) and n per rung x subject over its finished seeds; failed seeds
    listed with their logs."""
    from transfer.results import read_results

    groups: Dict[Tuple[str, str], List[Job]] = {}
    for job in p.jobs:
        groups.setdefault((job.rung, job.subject.role), []).append(job)
    out = []
    for (rung, role), jobs in groups.items():
        records = [read_results(j.results) for j in jobs if j.results.is_file()]
        failed = [str(j.log) for j in jobs if not j.results.is_file() and j.failure.is_file()]
        values: Dict[str, List[float]] = {}
        for r in records:
            for k, v in r["metrics"].items():
                if v is not None:
                    values.setdefault(k, []).append(float(v))
        mean = {k: sum(v) / len(v) for k, v in values.items()}
        std = {k: (math.sqrt(sum((x - mean[k]) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else 0.0)
               for k, v in values.items()}
        first = records[0] if records else {}
        recipe = {k: v for k, v in (first.get("recipe") or {}).items() if k != "seed"}
        launch = next((r["launch"] for r in records if r.get("launch")), None)
        out.append(Aggregate(rung, role, jobs[0].task, first.get("backbone", p.checkpoint.backbone),
                             first.get("pretrain", "?"), mean, std, len(records), values, recipe, failed, launch))
    return out


def verdict(pretrained: Sequence[float], baseline: Sequence[float], alpha: float = SIGNIFICANCE) -> Tuple[str, str]:
    """("better" | "worse" | "no clear difference" | "undecided", why) from the seeds of both sides.

    Welch's t-test (unequal variances) on the primary metric: a difference when its two-sided p < alpha,
    its sign from the means. With fewer than 2 seeds a side, or no spread at all on either side, the
    test is undefined: "undecided" (never a verdict from one run)."""
    if len(pretrained) < 2 or len(baseline) < 2:
        return "undecided", f"needs 2+ seeds a side (have {len(pretrained)} and {len(baseline)})"
    from scipy import stats

    gap = sum(pretrained) / len(pretrained) - sum(baseline) / len(baseline)
    if all(x == pretrained[0] for x in pretrained) and all(x == baseline[0] for x in baseline):
        return ("better" if gap > 0 else "worse" if gap < 0 else "no clear difference"), "no spread across seeds"
    t, pval = stats.ttest_ind(pretrained, baseline, equal_var=False)
    if pval < alpha:
        return ("better" if gap > 0 else "worse"), f"Welch t = {t:.2f}, p = {pval:.3f}"
    return "no clear difference", f"Welch t = {t:.2f}, p = {pval:.3f} >= {alpha}"


# ----------------------------------------------------------------- report
def training_curve(folder) -> List[Tuple[int, float]]:
    """(step, training loss) of one job, from whichever log its tool writes: the project's
    ``metrics.jsonl``, mmengine's ``*/vis_data/scalars.json``, detectron2's ``metrics.json``."""
    folder = Path(folder)
    points: Dict[int, float] = {}
    sources = [(folder / "metrics.jsonl", "step", "loss"), (folder / "metrics.json", "iteration", "total_loss")]
    sources += [(f, "iter", "loss") for f in sorted(folder.glob("*/vis_data/scalars.json"))]
    for path, step_key, loss_key in sources:
        if not path.is_file():
            continue
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict) and loss_key in rec and step_key in rec and "images" not in rec:
                points[int(rec[step_key])] = float(rec[loss_key])
    return sorted(points.items())


def write_curves(p: Plan, path) -> Optional[Path]:
    """One panel per rung that trains: the training loss of the checkpoint against its baseline, the seeds'
    mean at each logged step (a line per subject)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels: Dict[str, Dict[str, List[List[Tuple[int, float]]]]] = {}
    for job in p.jobs:
        curve = training_curve(job.folder)
        if curve:
            panels.setdefault(job.rung, {}).setdefault(job.subject.role, []).append(curve)
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.4), squeeze=False)
    for ax, (rung, by_role) in zip(axes[0], panels.items()):
        for role, curves in sorted(by_role.items(), reverse=True):
            steps = sorted({s for c in curves for s, _ in c})
            mean = [sum(dict(c)[s] for c in curves if s in dict(c)) / sum(s in dict(c) for c in curves) for s in steps]
            ax.plot(steps, mean, label=f"{role} ({len(curves)} seed{'s' * (len(curves) > 1)})")
        ax.set_title(rung)
        ax.set_xlabel("step")
        ax.set_ylabel("training loss")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def write_ladder_report(p: Plan, out_dir=None) -> Path:
    """``report/`` of the checkpoint's folder: the tables of ``tools/report.py`` with mean ± std over the
    seeds (and the published numbers), charts with error bars, training curves, and the verdicts."""
    from transfer.report import Row, write_report

    out = Path(out_dir or Path(p.folder) / "report")
    aggregates = summarise(p)
    base_label = {a.role: a.pretrain for a in aggregates}.get("baseline", "random")
    rows = []
    for a in aggregates:
        status = ""
        if a.failed:
            status = f"failed: {len(a.failed)} of {len(a.failed) + a.n} seeds (log: {a.failed[0]})"
        if a.n == 0 and not a.failed:
            status = "not run yet"
        metrics = dict(a.mean) or {primary_metric(a.task) or "mIoU": None}
        rows.append(Row(a.task, a.backbone, a.pretrain if a.n else (a.pretrain if a.pretrain != "?" else a.role),
                        "run", metrics, a.recipe, str(Path(p.folder) / a.rung / a.role), f"{a.rung}, {a.role}",
                        None, dict(a.std), a.n, status, a.launch))
    out.mkdir(parents=True, exist_ok=True)
    curves = write_curves(p, out / "curves.png")
    lines = ["## Verdicts", "",
             f"Each rung: the checkpoint against its baseline ({p.baseline}) through the same protocol, "
             f"{p.seeds} seed(s) each; a difference is one with Welch's t-test p < {SIGNIFICANCE} on the "
             "rung's primary metric (docs/ladder.md).", ""]
    by = {(a.rung, a.role): a for a in aggregates}
    for rung in all_rungs():
        pre, base = by.get((rung, "pretrained")), by.get((rung, "baseline"))
        if pre is None:
            continue
        metric = primary_metric(pre.task) or ""
        if base is None:
            lines.append(f"- {rung}: {metric} {_mean_std(pre, metric)} (no baseline)")
            continue
        word, why = verdict(pre.values.get(metric, []), base.values.get(metric, []))
        failed = " (some seeds FAILED, see the table)" if pre.failed or base.failed else ""
        lines.append(f"- {rung}: {metric} {_mean_std(pre, metric)} vs {_mean_std(base, metric)}: "
                     f"**{word}** ({why}){failed}")
    lines += ["", f"Skipped: {'; '.join(p.skipped)}" if p.skipped else ""]
    lines += paper_tables(p, aggregates)
    if curves:
        lines += ["", "## Training curves", "", f"![training curves]({curves.name})"]
    # One write of the whole report.md, verdicts included: a rerun that fails leaves the earlier one whole.
    return write_report(rows, out, baseline=base_label, title=f"Evaluation ladder: {Path(p.checkpoint.path).name}",
                        appendix=lines + [""])


def paper_tables(p: Plan, aggregates: Sequence[Aggregate]) -> List[str]:
    """A section per paper table (``rung.PAPER_TABLES``) of which some rung ran, laid out as the paper: a column
    per rung and metric it shows, a row for the checkpoint, its baseline, and each pretraining the papers
    published for this backbone (``transfer.published``; * marks values not re-checked against the paper)."""
    from transfer.ladder.rung import PAPER_TABLES, SUITES, suites
    from transfer.published import PUBLISHED

    by = {(a.rung, a.role): a for a in aggregates}
    rungs = all_rungs()
    lines: List[str] = []
    for table in PAPER_TABLES:
        ran = [by[(name, "pretrained")] for name in suites()[table] if (name, "pretrained") in by]
        if not ran:
            continue
        columns = [(a, metric) for a in ran for metric in rungs[a.rung].columns(a.task)]
        header = ["", *(f"{a.rung} {metric}" for a, metric in columns)]
        rows = []
        for role in ("pretrained", "baseline"):
            if any((a.rung, role) in by for a in ran):
                label = next(by[(a.rung, role)].pretrain for a in ran if (a.rung, role) in by)
                rows.append([f"this run: {role} ({label})", *(_cell(by.get((a.rung, role)), m) for a, m in columns)])
        published: Dict[str, List[str]] = {}
        for i, (a, metric) in enumerate(columns):
            for row in PUBLISHED:
                if (row.task, row.backbone) == (a.task, p.checkpoint.backbone) and metric in row.metrics:
                    epochs = row.recipe.get("pretrain_epochs")
                    name = row.pretrain + (f", {epochs} ep" if epochs else "")
                    cells = published.setdefault(name, ["—"] * len(columns))
                    cells[i] = f"{row.metrics[metric]:g}" + ("" if row.checked else "*")
        rows += [[f"published: {pretrain}", *cells] for pretrain, cells in published.items()]
        lines += ["", f"## {SUITES[table]}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        if any(c.endswith("*") for row in rows for c in row):
            lines += ["", "\\* entered from the paper, not re-checked against it here (transfer/published.py)."]
    return lines


def _cell(a: Optional[Aggregate], metric: str) -> str:
    return "—" if a is None or not a.values.get(metric) else f"{a.mean[metric]:.2f} ± {a.std[metric]:.2f}"


def _mean_std(a: Aggregate, metric: str) -> str:
    vals = a.values.get(metric, [])
    if not vals:
        return "—"
    return f"{a.mean[metric]:.2f} ± {a.std[metric]:.2f} (n={len(vals)})"
