"""Many checkpoints, one report: ``tools/evaluate.py A.pth B.pth C.pth ...``.

Each checkpoint gets its own ladder (``transfer.ladder.plan``); checkpoints of one backbone share their
baseline's jobs (``share_baselines``: the first plan's folders, so each runs once). ``write_comparison`` then
puts them side by side: per rung a table of every checkpoint's mean ± std over its seeds and the baselines',
the verdict of every pair (Welch's t-test on the rung's primary metric, ``transfer.ladder.verdict``), and one
chart with a panel per rung. The question a researcher asks is "is mine better than DINOv2 and MAE", not only
"is mine better than random".
"""
from __future__ import annotations

import csv
import hashlib
import io
import itertools
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

from transfer.ladder import Aggregate, Job, Plan, summarise, verdict
from transfer.ladder.rung import all_rungs, primary_metric


def share_baselines(plans: Sequence[Plan]) -> int:
    """Give every plan the first plan's baseline job of the same backbone, rung and seed when the two commands
    are the same but for their folders (same baseline, same arguments): it runs once and every checkpoint's
    report reads it. Returns how many jobs are shared."""
    first: Dict[Tuple[str, str, int], Job] = {}
    shared = 0
    for p in plans:
        for i, job in enumerate(p.jobs):
            if job.subject.role != "baseline":
                continue
            key = (p.checkpoint.arch, job.rung, job.seed)
            other = first.setdefault(key, job)
            if other is not job and _without_folder(other) == _without_folder(job):
                p.jobs[i] = other
                shared += 1
    return shared


def _without_folder(job: Job) -> List[str]:
    return [arg.replace(job.folder, "<folder>") for arg in job.command]


def unique_jobs(plans: Sequence[Plan]) -> List[Job]:
    """Every job of the plans once (a shared baseline job is one job)."""
    seen, out = set(), []
    for p in plans:
        for job in p.jobs:
            if job.folder not in seen:
                seen.add(job.folder)
                out.append(job)
    return out


def names(plans: Sequence[Plan]) -> List[str]:
    """Each checkpoint's name in the report: its file name, with its digest where two files share a name."""
    files = [Path(p.checkpoint.path).name for p in plans]
    return [f"{f} ({p.checkpoint.digest[:8]})" if files.count(f) > 1 else f for f, p in zip(files, plans)]


def comparison_folder(out_root, plans: Sequence[Plan]) -> Path:
    digest = hashlib.sha256("".join(sorted(p.checkpoint.digest for p in plans)).encode()).hexdigest()
    return Path(out_root) / f"comparison-{digest[:12]}"


def write_comparison(plans: Sequence[Plan], out_dir) -> Path:
    """``report.md`` (a table and the pairwise verdicts per rung), ``<rung>.csv``, and ``comparison.png``."""
    from pretrain.checkpoint import write_text_atomic

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    labels = names(plans)
    summaries = [{(a.rung, a.role): a for a in summarise(p)} for p in plans]
    lines = [f"# Comparison of {len(plans)} checkpoints", "",
             "Per rung: each checkpoint's mean ± std over its seeds (n) on the rung's primary metric, the baselines' "
             "beside them, and every pair's verdict (Welch's t-test, p < 0.05; \"undecided\" with fewer than 2 seeds "
             "a side). Each checkpoint's own ladder report has every metric and the published numbers.", ""]
    panels = []
    for rung in all_rungs():
        entries = [(label, s[(rung, "pretrained")]) for label, s in zip(labels, summaries) if (rung, "pretrained") in s]
        if not entries:
            continue
        metric = primary_metric(entries[0][1].task) or ""
        baselines: Dict[str, Aggregate] = {}
        for label, s in zip(labels, summaries):
            base = s.get((rung, "baseline"))
            if base is not None:  # one row per distinct baseline (shared jobs: one row for all)
                baselines.setdefault(f"baseline: {base.pretrain} ({base.backbone})", base)
        rows = [(label, a) for label, a in entries] + list(baselines.items())
        lines += [f"## {rung} ({metric})", "", "| checkpoint | pretraining | backbone | "
                  f"{metric} | n |", "|---|---|---|---|---|"]
        lines += [f"| {label} | {a.pretrain} | {a.backbone} | {_cell(a, metric)} | {len(a.values.get(metric, []))} |"
                  for label, a in rows]
        lines += [""] + [f"- {x} vs {y}: **{word}** ({why})" for (x, y), (word, why) in pairwise(entries, metric)]
        lines.append("")
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(["checkpoint", "pretraining", "backbone", metric, f"{metric}_std", "n"])
        for label, a in rows:
            vals = a.values.get(metric, [])
            writer.writerow([label, a.pretrain, a.backbone, a.mean.get(metric), a.std.get(metric), len(vals)])
        write_text_atomic(out / f"{rung}.csv", buf.getvalue())
        panels.append((rung, metric, rows))
    if not panels:
        lines.append("No rung has finished for any checkpoint yet.")
    chart = write_chart(panels, out / "comparison.png")
    if chart:
        lines += ["![comparison](comparison.png)", ""]
    return write_text_atomic(out / "report.md", "\n".join(lines))


def pairwise(entries: Sequence[Tuple[str, Aggregate]], metric: str):
    """((a, b), verdict of a against b) for every pair of checkpoints, in the order given."""
    for (x, a), (y, b) in itertools.combinations(entries, 2):
        yield (x, y), verdict(a.values.get(metric, []), b.values.get(metric, []))


def _cell(a: Aggregate, metric: str) -> str:
    return "—" if not a.values.get(metric) else f"{a.mean[metric]:.2f} ± {a.std[metric]:.2f}"


def write_chart(panels, path: Path):
    """One panel per rung: a bar per checkpoint and baseline, the seeds' standard deviation as error bars."""
    if not panels:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(max(4.0, 1.2 * max(len(r) for *_, r in panels)) * len(panels),
                                                      3.8), squeeze=False)
    for ax, (rung, metric, rows) in zip(axes[0], panels):
        means = [a.mean.get(metric, 0.0) for _, a in rows]
        stds = [a.std.get(metric, 0.0) for _, a in rows]
        colours = ["tab:blue" if not label.startswith("baseline") else "tab:gray" for label, _ in rows]
        ax.bar(range(len(rows)), means, yerr=stds, capsize=3, color=colours)
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels([label for label, _ in rows], rotation=25, ha="right", fontsize=7)
        ax.set_title(rung)
        ax.set_ylabel(metric)
    fig.tight_layout()
    from pretrain.checkpoint import write_bytes_atomic

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return write_bytes_atomic(path, buf.getvalue())
