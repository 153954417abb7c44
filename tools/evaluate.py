#!/usr/bin/env python
"""The evaluation ladder: one command from a checkpoint to a seeded verdict, cheapest rungs first.

  python tools/evaluate.py CKPT --suite quick --data imagenet=/data/imagenet ade20k=/data/ADEChallengeData2016
  python tools/evaluate.py CKPT --suite full --data-file data.yaml --dry-run          # jobs, GPUs, GPU-hours
  python tools/evaluate.py CKPT --suite full --data-file data.yaml --launcher slurm --partition gpu
  python tools/evaluate.py CKPT --rungs knn,dense_probe --seeds 5 --baseline random --data ...
  python tools/evaluate.py A.pth B.pth C.pth --suite quick --data ...   # each ladder, then one comparison

Rungs (one file each in transfer/ladder/rungs/; ``--suite quick`` = the first three): knn (weighted kNN,
k = 20, T = 0.07), linear (the MAE / MoCo linear protocols), dense_probe (BN + 1x1 conv on frozen patch
features, the DINOv2 linear head), finetune, detection (detectron2), segmentation (mmseg UperNet), and
the papers' other transfer tasks (``--suite moco_table6``, ``--suite mae_transfer``). Each runs for the checkpoint and for its
baseline (``--baseline supervised``, the default: the backbone's supervised ImageNet twin, from the
weights folder; ``random``; or a checkpoint file), ``--seeds`` times. A rung whose data is absent
is skipped with a line saying so. Results go to ``<out>/<name>-<sha256[:12]>/``; a rerun skips what
finished and resumes what was interrupted. Several checkpoints: checkpoints of one backbone share their
baseline's jobs, and ``<out>/comparison-<hash>/report.md`` puts them side by side (a table per rung, every
pair's verdict, one chart). See docs/ladder.md.
"""
import argparse
import dataclasses
import shlex
from pathlib import Path

from pretrain.cli import positive_int
from pretrain.errors import ConfigError
from transfer.ladder import absolute, parse_data  # the --data reading tools/study.py shares


def parse_rung_args(items):
    out = {}
    for item in items or []:
        rung, sep, args = item.partition("=")
        if not sep:
            raise ConfigError(f"--rung-args takes RUNG='ARGS' (e.g. linear='train.epochs=2'), got {item!r}")
        out.setdefault(rung, []).extend(shlex.split(args))
    return out


def rung_count(text: str):
    """An argparse ``type`` for ``--rung-seeds RUNG=N``: (rung, a positive count), checked where it is parsed."""
    rung, sep, count = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected RUNG=N (e.g. detection=1), got {text!r}")
    return rung, positive_int(count)


def main(argv=None):
    from transfer.ladder.rung import all_rungs, suites

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+", metavar="checkpoint",
                   help="any checkpoint the project reads (MAE, MoCo, DINO, DINOv2, iBOT, I-JEPA, SSL ResNets, timm, "
                        "DeiT, torchvision); several: each one's ladder, then one comparison report")
    p.add_argument("--suite", choices=sorted(suites()), default="quick",
                   help="; ".join(f"{name}: {', '.join(rungs)}" for name, rungs in suites().items()))
    p.add_argument("--rungs", help=f"comma-separated rungs instead of a suite ({', '.join(all_rungs())})")
    p.add_argument("--baseline", default="supervised",
                   help="supervised (the backbone's supervised ImageNet twin, found in --weights; the default) | "
                        "random | PATH of a checkpoint | none")
    p.add_argument("--weights", help="folder of released weights for --baseline supervised "
                                     "(default: torch.hub's, $TORCH_HOME/hub/checkpoints)")
    p.add_argument("--seeds", type=positive_int, default=3, help="seeds per rung and subject (2+ for a verdict)")
    p.add_argument("--rung-seeds", nargs="*", type=rung_count, default=[], metavar="RUNG=N",
                   help="another seed count for some rungs, e.g. detection=1")
    p.add_argument("--data", nargs="*", metavar="KEY=PATH", help="imagenet=DIR (train/ val/), ade20k=DIR, coco=DIR")
    p.add_argument("--data-file", help="YAML mapping of the same keys to paths")
    p.add_argument("--rung-args", nargs="*", metavar="RUNG=ARGS", help="extra arguments of a rung's tool")
    p.add_argument("--out", default="output/ladder",
                   help="root of the per-checkpoint folders (relative: to the current directory)")
    p.add_argument("--launcher", choices=["local", "slurm"], default="local")
    p.add_argument("--partition", help="SLURM partition")
    p.add_argument("--cluster", default=None, help=argparse.SUPPRESS)  # submitit's cluster: "local" in tests
    p.add_argument("--dry-run", action="store_true", help="print the plan (jobs, GPUs, GPU-hours); run nothing")
    p.add_argument("--report-only", action="store_true", help="summarise what finished; run nothing")
    p.add_argument("--allow-pickle", action="store_true", help="trust the checkpoint's pickled objects")
    p.add_argument("--variant", help="which network of a checkpoint that holds several: DINO / iBOT / DINOv2 teacher "
                                     "(default) or student, I-JEPA target (default) or context; passed to each rung's "
                                     "tool that takes it (the others are skipped), results in <name>-VARIANT-<sha>/")
    args = p.parse_args(argv)

    from transfer import ladder
    from transfer.ladder.compare import comparison_folder, share_baselines, unique_jobs, write_comparison

    # Every path the user gave, against the caller's directory (the jobs run in the repository's).
    args.checkpoints, args.out = [absolute(c) for c in args.checkpoints], absolute(args.out)
    args.weights = args.weights and absolute(args.weights)
    if args.baseline not in ("supervised", "random", "none"):
        args.baseline = absolute(args.baseline)
    # Every input is checked before anything is written (a user error ends in one line: pretrain.cli.run_tool).
    if args.launcher == "slurm" and args.cluster is None and not (args.dry_run or args.report_only):
        ladder.require_slurm()  # submitit would run the jobs here instead
    rungs = args.rungs.split(",") if args.rungs else list(suites()[args.suite])
    data, rung_args = parse_data(args.data, args.data_file), parse_rung_args(args.rung_args)
    plans = [ladder.plan(checkpoint, args.out, rungs, data, args.seeds, args.baseline, rung_args,
                         dict(args.rung_seeds), args.allow_pickle, args.weights, args.variant)
             for checkpoint in args.checkpoints]
    shared = share_baselines(plans)  # checkpoints of one backbone: one baseline job each, run once
    for plan in plans:
        ladder.check_records(plan)  # the finished jobs' results, which the run and the report read
        info = plan.checkpoint
        print(f"{info.path}: {info.family} {info.backbone}, pretraining {info.pretrain}, sha256 {info.digest[:12]}")
        print(f"output: {plan.folder}")
        for line in plan.skipped:
            print(f"skipped {line}")
    if args.dry_run:
        for plan in plans:
            print_plan(plan)
        if len(plans) > 1:
            jobs = unique_jobs(plans)
            print(f"all {len(plans)} checkpoints: {len(jobs)} jobs ({shared} baseline jobs shared), about "
                  f"{sum(j.gpu_hours for j in jobs):.1f} GPU-hours")
        return
    from pretrain.checkpoint import save_atomic

    for plan in plans:
        save_atomic(plan.to_json(), Path(plan.folder) / "plan.json")  # creates the folder
    if not args.report_only:
        if args.launcher == "local":
            for plan in plans:
                ladder.run_local(plan)
        else:
            every = dataclasses.replace(plans[0], jobs=unique_jobs(plans),  # a shared job is submitted once
                                        twins={k: v for plan in plans for k, v in plan.twins.items()})
            jobs = ladder.run_slurm(every, partition=args.partition, cluster=args.cluster)
            if args.cluster != "local":
                print(f"submitted {len(jobs)} jobs; when they end: python tools/evaluate.py "
                      f"{' '.join(args.checkpoints)} ... --report-only (the same arguments)")
                return
            for job in jobs:  # the local executor: wait, then report
                try:
                    job.result()
                except Exception as e:  # noqa: BLE001  (recorded in failed.json; the others go on)
                    print(f"{job.job_id}: {type(e).__name__}: {str(e).splitlines()[0]}")
    for plan in plans:
        report = ladder.write_ladder_report(plan)
        print(f"report: {report}")
        verdicts = report.read_text().split("## Verdicts", 1)[-1].split("## ")[0]
        print("\n".join(line for line in verdicts.splitlines() if line.startswith("- ")))
    if len(plans) > 1:
        print(f"comparison: {write_comparison(plans, comparison_folder(args.out, plans))}")


def print_plan(plan):
    from collections import OrderedDict

    rows = OrderedDict()
    for job in plan.jobs:
        key = (job.rung, job.subject.role)
        n, gpus, hours, cmd = rows.get(key, (0, job.gpus, 0.0, job.command))
        rows[key] = (n + 1, gpus, hours + job.gpu_hours, cmd)
    width = max([12] + [len(rung) for rung, _ in rows]) + 2  # a rung's name and its subject stay apart
    print(f"{'rung':<{width}}{'subject':<12}{'seeds':>6}{'GPUs/job':>10}{'GPU-hours':>11}  command (first seed)")
    for (rung, role), (n, gpus, hours, cmd) in rows.items():
        print(f"{rung:<{width}}{role:<12}{n:>6}{gpus:>10}{hours:>11.1f}  {shlex.join(cmd)}")
    print(f"{len(plan.jobs)} jobs, about {plan.gpu_hours:.1f} GPU-hours (A100-class estimates: docs/ladder.md)")


if __name__ == "__main__":
    from pretrain.cli import run_tool

    run_tool(main)
