#!/usr/bin/env python
"""Turn finished runs into the papers' comparison: tables (Markdown + CSV) and charts per task.

  python tools/report.py output/ --out report/                 # every results.json under output/
  python tools/report.py runs/mae_lin runs/sup_lin --out report/ --baseline supervised
  python tools/report.py demo_output/runs --out demo_output/report --baseline random

Reads the results.json that tools/train_cls.py, tools/train_net.py and tools/train_seg.py
write; adds the published numbers (transfer/published.py, each with its source) unless
--no-published. A malformed results file, or none found, stops the report with its name and the
problem, before anything is written.
"""
import argparse
from pathlib import Path


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="results.json files or folders to search")
    p.add_argument("--out", default="report")
    p.add_argument("--baseline", default="supervised", help="pretraining the others are compared with")
    p.add_argument("--no-published", action="store_true", help="leave the published numbers out")
    p.add_argument("--all-published", action="store_true",
                   help="show every published number of a task, not only those of the backbones run")
    p.add_argument("--title", default="Benchmark report")
    args = p.parse_args(argv)

    from pretrain.errors import ConfigError
    from transfer.report import load_runs, write_report
    from transfer.results import RESULTS_FILE, ResultsError

    # Every input is read and checked before the first file is written (a user error: one line, run_tool).
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise ConfigError(f"--out {args.out}: a file, not a folder; give the folder the report goes to")
    rows = load_runs(args.runs)
    if not rows:
        raise ResultsError(f"no {RESULTS_FILE} under {' '.join(args.runs)}: give the output folders of the "
                           "evaluation tools (train_cls.py, train_net.py, train_seg.py, knn_eval.py, dense_probe.py, "
                           "evaluate.py) or their results files")
    path = write_report(rows, args.out, args.baseline, not args.no_published, args.title, args.all_published)
    print(f"{len(rows)} runs -> {path}")


if __name__ == "__main__":
    from pretrain.cli import run_tool

    run_tool(main)
