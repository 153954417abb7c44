#!/usr/bin/env python
r"""A study: a sweep of pretraining settings, each point pretrained and put through the evaluation ladder.

  python tools/study.py configs/studies/mae_mask_sampling.yaml --data imagenet=/data/imagenet --dry-run
  python tools/study.py mae_mask_sampling --data imagenet=/data/imagenet           # a shipped study, by name
  python tools/study.py mae_mask_sampling --data imagenet=/data/imagenet --report-only   # redraw
  python tools/study.py mae_mask_sampling --data imagenet=/data/imagenet --launcher slurm --partition gpu

Per point (the sweep's grid, or the study's list of points): pretraining (tools/pretrain_net.py, resumed
when interrupted, skipped when finished), then its ladder (tools/evaluate.py's jobs, seeds and verdicts).
A failed point is recorded as failed and the others go on; a rerun continues where the study stopped.
--launcher slurm submits each pretraining (--nodes x --gpus-per-node, requeued on preemption) and each point's
ladder after it (afterok); a point whose pretraining finished is not submitted again. When the jobs have
ended, --report-only collects every point's results from its folders (the --data of the run, by default).
Writes <out>/<study>/: plan.json, results.json, table.md, table.csv and figure_<rung>_<metric>.png (the
paper's series beside the run's). --dry-run prints every point's jobs and the study's GPU-hours.
Study files: configs/studies/*.yaml (transfer/ladder/study.py says what they hold). See docs/ladder.md.
"""
import argparse
from pathlib import Path

from pretrain.cli import positive_int
from pretrain.errors import InputNotFound


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("study", help="a study file, or the name of a shipped one (configs/studies/NAME.yaml)")
    p.add_argument("--out", default="study", help="output root (default ./study): <out>/<study name>/")
    p.add_argument("--data", nargs="*", metavar="KEY=PATH", help="the rungs' datasets, as tools/evaluate.py takes "
                                                                 "them (imagenet=..., ade20k=..., coco=...)")
    p.add_argument("--data-file", help="a YAML mapping of the same")
    p.add_argument("--weights", help="folder of the supervised twins' weights (the ladder's --weights)")
    p.add_argument("--dry-run", action="store_true", help="print the points, their jobs and GPU-hours; run nothing")
    p.add_argument("--report-only", action="store_true",
                   help="collect each point's results from its folders and redraw the tables and figures")
    p.add_argument("--launcher", choices=["local", "slurm"], default="local",
                   help="local: every point here, one after the other; slurm: submit the study's jobs")
    p.add_argument("--partition", help="SLURM partition")
    p.add_argument("--nodes", type=positive_int, default=1, help="nodes of each pretraining job (slurm)")
    p.add_argument("--gpus-per-node", type=positive_int, default=8, help="GPUs per node of each pretraining (slurm)")
    p.add_argument("--cluster", default=None, help=argparse.SUPPRESS)  # submitit's cluster: "local" in tests
    return p.parse_args(argv)


def study_path(name: str) -> Path:
    from transfer.ladder.study import STUDIES, shipped

    path = Path(name)
    if path.is_file():
        return path
    if (STUDIES / f"{name}.yaml").is_file():
        return STUDIES / f"{name}.yaml"
    raise InputNotFound(f"study not found: {name} (a study file, or one of the shipped: {', '.join(shipped())})")


def main(argv=None):
    args = parse_args(argv)
    from transfer.ladder import absolute, parse_data, require_slurm  # tools/evaluate.py's --data reading
    from transfer.ladder.study import Study, plan_rows, report_from_disk, run_study, submit_study

    if args.launcher == "slurm" and args.cluster is None and not (args.dry_run or args.report_only):
        require_slurm()  # before anything is read or written: submitit would run the jobs here instead

    study = Study.load(study_path(args.study))
    data = parse_data(args.data, args.data_file)
    out = Path(absolute(args.out)) / study.name
    if args.dry_run:
        rows = plan_rows(study, out, data)
        for r in rows["points"]:
            pre = r["pretrain"]["gpu_hours"]
            ladder = ", ".join(f"{j['rung']} x{j['jobs']} ({j['gpu_hours']} h)" for j in r["ladder"]) or "none"
            pre = "shared with an earlier point" if r["pretrain"]["shared"] else f"{'?' if pre is None else pre} GPU-h"
            print(f"{r['label']}: pretraining {pre}; ladder {ladder}"
                  + (f"; no recipe for {', '.join(r['missing_recipes'])}" if r["missing_recipes"] else ""))
            print("    " + " ".join(r["pretrain"]["command"]))
        print(f"{study.name}: {len(rows['points'])} points, {rows['seeds']} seed(s), rungs {', '.join(rows['rungs'])}: "
              f"{rows['gpu_hours']} GPU-hours (A100-class estimates)")
        return rows
    weights = args.weights and absolute(args.weights)
    if args.launcher == "slurm" and not args.report_only:
        jobs = submit_study(study, out, data, args.partition, args.nodes, args.gpus_per_node, args.cluster, weights)
        if args.cluster != "local":
            print(f"{study.name}: submitted {len(jobs)} jobs; when they have ended: python tools/study.py "
                  f"{args.study} --out {args.out} --report-only")
            return jobs
        for job in jobs:  # the local executor (tests): wait for every job, then report as after SLURM
            error = job.exception()
            if error is not None:
                print(f"{job.job_id}: {type(error).__name__}: {str(error).splitlines()[0]}")
    if args.report_only or args.launcher == "slurm":  # the records of jobs that ran elsewhere: from their folders
        results = report_from_disk(study, out, data, weights)
        print(f"{study.name}: " + "; ".join(f"{r['label']} {r['status']}" for r in results["points"])
              + f"; report in {out}")
        return results
    results = run_study(study, out, data, weights=weights)
    failed = [r["label"] for r in results["points"] if r["status"] == "failed"]
    print(f"{study.name}: {len(results['points']) - len(failed)} of {len(results['points'])} points done"
          + (f"; failed: {', '.join(failed)}" if failed else "") + f"; report in {out}")
    return results


if __name__ == "__main__":
    from pretrain.cli import run_tool

    run_tool(main)
