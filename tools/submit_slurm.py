#!/usr/bin/env python
"""Submit a pretraining run to SLURM: one torchrun per node, auto-resume on requeue.

  python tools/submit_slurm.py configs/pretrain/mae_vit_large_in1k.yaml --nodes 8 --gpus-per-node 8 \
      --partition gpu --time 72:00:00 data.path=/datasets/imagenet
  python tools/submit_slurm.py ... --dry-run      # write and print the script, submit nothing

The script is written to <train.output_dir>/slurm/<name>.sh. Preemption sends
SIGTERM: the trainer checkpoints at the next step, and the requeued job resumes
from it (--resume). The rendezvous port derives from the job's id (PORT_BASE + SLURM_JOB_ID mod PORT_SPAN,
20000-29999, as the evaluation ladder's multi-node jobs), so that two jobs sharing a node do not collide;
--port fixes one.
"""
import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from pretrain.cli import positive_int  # noqa: E402
from transfer.ladder import PORT_BASE, PORT_SPAN  # noqa: E402  (one port range for every multi-node job)


def tcp_port(text: str) -> int:
    """An argparse ``type`` for --port: a TCP port a rendezvous can listen on (1024-65535, not a privileged one)."""
    value = positive_int(text)
    if not 1024 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port in 1024-65535, got {value}")
    return value


def slurm_time(text: str) -> str:
    """An argparse ``type`` for --time, in one of sbatch's forms: MINUTES, [D-]HH:MM[:SS], D-HH, UNLIMITED."""
    if re.fullmatch(r"(\d+-)?\d+(:\d+){0,2}|UNLIMITED|INFINITE", text) is None:
        raise argparse.ArgumentTypeError(f"expected a SLURM time limit such as 72:00:00, 3-00:00:00 or 4320 "
                                         f"(minutes), got {text!r}")
    return text


def slurm_memory(text: str) -> str:
    """An argparse ``type`` for --mem: sbatch's per-node memory, a number with an optional unit (0 = all)."""
    if re.fullmatch(r"\d+[KMGT]?", text) is None:
        raise argparse.ArgumentTypeError(f"expected memory per node such as 0 (all), 500G or 256000M, got {text!r}")
    return text


def render(args, cfg) -> str:
    overrides = " ".join(shlex.quote(o) for o in args.overrides)
    sbatch = {
        "job-name": args.job_name or Path(cfg.train.output_dir).name,
        "nodes": args.nodes,
        "ntasks-per-node": 1,
        "gpus-per-node": args.gpus_per_node,
        "cpus-per-task": args.cpus_per_task,
        "mem": args.mem,
        "time": args.time,
        "output": f"{Path(cfg.train.output_dir).resolve()}/slurm/%j.out",
        "signal": "TERM@120",
        "requeue": None,
    }
    if args.partition:
        sbatch["partition"] = args.partition
    if args.account:
        sbatch["account"] = args.account
    lines = ["#!/bin/bash"] + [f"#SBATCH --{k}" + ("" if v is None else f"={v}") for k, v in sbatch.items()]
    lines += [
        "set -euo pipefail",
        # Where the job was submitted from: relative paths in the config and overrides
        # (train.output_dir, data.path) mean there what they meant here.
        f"cd {shlex.quote(os.getcwd())}",
        'MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        f"MASTER_PORT={args.port}" if args.port else f"MASTER_PORT=$(({PORT_BASE} + SLURM_JOB_ID % {PORT_SPAN}))",
        "export OMP_NUM_THREADS=1",
        f"srun --kill-on-bad-exit=1 {shlex.quote(sys.executable)} -m torch.distributed.run "
        f"--nnodes \"$SLURM_NNODES\" --nproc_per_node {args.gpus_per_node} "
        f"--rdzv_backend c10d --rdzv_endpoint \"$MASTER_ADDR:$MASTER_PORT\" --rdzv_id \"$SLURM_JOB_ID\" "
        f"{shlex.quote(str(REPO / 'tools' / 'pretrain_net.py'))} {shlex.quote(str(Path(args.config).resolve()))} {overrides} --resume",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--nodes", type=positive_int, default=1)
    p.add_argument("--gpus-per-node", type=positive_int, default=8)
    p.add_argument("--cpus-per-task", type=positive_int, default=80)
    p.add_argument("--mem", type=slurm_memory, default="0", help="per node; 0 = all")
    p.add_argument("--time", type=slurm_time, default="72:00:00")
    p.add_argument("--partition")
    p.add_argument("--account")
    p.add_argument("--job-name")
    p.add_argument("--port", type=tcp_port, default=None,
                   help=f"rendezvous port (default: {PORT_BASE} + SLURM_JOB_ID mod {PORT_SPAN}, one per job)")
    p.add_argument("--dry-run", action="store_true")
    args = p.parse_intermixed_args(argv)  # overrides may follow the options

    from pretrain.checkpoint import write_text_atomic
    from pretrain.config import load_config
    from pretrain.errors import ConfigError
    from transfer.ladder import NoSlurm

    # The config and SLURM are checked before the script is written (a user error: one line, run_tool).
    cfg = load_config(args.config, args.overrides)
    sbatch = shutil.which("sbatch")
    if sbatch is None and not args.dry_run:
        raise NoSlurm("sbatch not found on PATH: run this on a SLURM login node (or use --dry-run to write and "
                      "print the script)")
    script = render(args, cfg)
    path = write_text_atomic(Path(cfg.train.output_dir) / "slurm" / f"{Path(args.config).stem}.sh", script)
    print(f"wrote {path}")
    if args.dry_run:
        print(script)
        return
    submitted = subprocess.run([sbatch, str(path)], capture_output=True, text=True)
    if submitted.returncode != 0:
        raise ConfigError(f"sbatch refused {path} (exit {submitted.returncode}; check --partition, --account, --time): "
                      f"{' '.join((submitted.stderr or submitted.stdout).split()) or 'no message'}")
    print(submitted.stdout.strip())


if __name__ == "__main__":
    from pretrain.cli import run_tool

    run_tool(main)
