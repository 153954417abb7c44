"""The comparison the papers make: finished runs beside their counterparts and the published numbers.

Input: ``results.json`` files (``transfer.results``) under the given folders. For
each task, one Markdown table, one CSV and one PNG bar chart: a row per
backbone x pretraining (the project's runs, then the published numbers), a
column per metric, the difference to the baseline counterpart (supervised by
default; ``random`` for from-scratch comparisons) and to the published number of
the same backbone and pretraining, and each row's recipe. Differences between
rows whose recipes differ are marked (``†``) with the differing keys in the
note, so unlike recipes are never compared silently; so are differences to a
published baseline whose supervised weights are not the run's (``weights``:
the MSRA R-50 behind the MoCo papers' rows, mmseg's ResNetV1c), and runs launched
on other GPUs than their recipe's (``launch``, written by the ladder). ImageNet runs
report the final epoch (``top1``) and the best (``top1_best``, what the authors
publish). Missing metrics show as ``—``.
"""
from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence

from .published import NOT_PUBLISHED, PUBLISHED, WEIGHTS, Published
from .results import TASKS, ResultsError, find_results, read_results

# Recipe keys that make two evaluations comparable; against the published number of the
# same method, the pretraining length must match too.
EVAL_RECIPE_KEYS = ("epochs", "iterations", "batch", "img_size", "crop_size", "detector")
COMPARED_RECIPE_KEYS = EVAL_RECIPE_KEYS + ("pretrain_epochs",)
# Shown in the recipe column too; free text, so not compared.
DISPLAY_RECIPE_KEYS = COMPARED_RECIPE_KEYS + ("schedule", "lr_schedule")
MISSING = "—"
MARK = "†"


@dataclass
class Row:
    task: str
    backbone: str
    pretrain: str
    origin: str  # "run" or "published"
    metrics: Dict[str, Optional[float]]
    recipe: Dict = field(default_factory=dict)
    source: str = ""
    name: str = ""
    weights: Optional[str] = None  # the backbone's weights layout where it matters (transfer.published.WEIGHTS)
    # Several seeds of one run (tools/evaluate.py): metrics are their means, std their standard deviations.
    std: Dict[str, float] = field(default_factory=dict)
    n: int = 1
    status: str = ""  # e.g. "failed: 1 of 3 seeds (log ...)": shown, never silently missing
    launch: Optional[Dict] = None  # results' ``launch``: run on other GPUs than the recipe's (transfer.ladder)


@dataclass
class Comparison:
    row: Row
    baseline: Optional[Row]
    published: Optional[Row]
    notes: List[str] = field(default_factory=list)


@dataclass
class TaskTable:
    task: str
    metrics: List[str]
    baseline_name: str
    comparisons: List[Comparison]


def load_runs(paths: Iterable) -> List[Row]:
    """Rows from results.json files or the folders holding them (searched recursively)."""
    rows = []
    for p in paths:
        p = Path(p)
        if not p.exists():
            raise ResultsError(f"{p}: no such file or folder; expected results.json files or folders holding them")
        files = [p] if p.is_file() else find_results(p)
        for f in files:
            r = read_results(f)
            rows.append(Row(r["task"], r["backbone"], r["pretrain"], "run", dict(r["metrics"]), dict(r["recipe"]),
                            str(f), r.get("name") or f.parent.name, r.get("weights"), launch=r.get("launch")))
    return rows


def published_rows(tasks: Optional[Sequence[str]] = None, published: Sequence[Published] = PUBLISHED) -> List[Row]:
    """The published numbers as rows; a value not re-read against its paper here says so in its source."""
    return [Row(p.task, p.backbone, p.pretrain, "published", dict(p.metrics), dict(p.recipe),
                p.source + ("" if p.checked else " (entered from the paper, not re-checked here)"), "published",
                p.weights) for p in published if tasks is None or p.task in tasks]


def differences(row: Row, other: Row, keys: Sequence[str]) -> List[str]:
    """What makes ``row`` and ``other`` unlike: recipe keys, and the supervised weights when ``other`` is a
    published baseline that names weights ``row`` does not use."""
    diffs = recipe_differences(row.recipe, other.recipe, keys)
    if other.origin == "published" and other.weights is not None and other.weights != row.weights:
        mine = WEIGHTS.get(row.weights, row.weights or "unrecorded weights")
        diffs.append(f"baseline weights differ from the published baseline's: {mine} vs "
                     f"{WEIGHTS.get(other.weights, other.weights)}")
    return diffs


def recipe_differences(a: Dict, b: Dict, keys: Sequence[str] = COMPARED_RECIPE_KEYS) -> List[str]:
    """Keys on which two recipes differ (a key recorded by one side only counts)."""
    diffs = []
    for k in keys:
        if k in a or k in b:
            va, vb = a.get(k, "unrecorded"), b.get(k, "unrecorded")
            if str(va) != str(vb):
                diffs.append(f"{k} {va} vs {vb}")
    return diffs


def _closest(candidates: List[Row], recipe: Dict, keys: Sequence[str]) -> Optional[Row]:
    """The project's own run if there is one, else a published number; among them, the one
    whose recipe differs on the fewest keys."""
    if not candidates:
        return None
    return min(candidates, key=lambda r: (r.origin != "run", len(recipe_differences(recipe, r.recipe, keys))))


def build_table(task: str, rows: List[Row], baseline: str = "supervised", all_published: bool = False) -> TaskTable:
    task_rows = [r for r in rows if r.task == task]
    if not all_published:  # published rows only for backbones the runs evaluated
        run_backbones = {r.backbone for r in task_rows if r.origin == "run"}
        task_rows = [r for r in task_rows if r.origin == "run" or r.backbone in run_backbones]
    metrics = [m for m in TASKS[task] if any(r.metrics.get(m) is not None for r in task_rows)]
    metrics += sorted({m for r in task_rows for m in r.metrics} - set(metrics) - set(TASKS[task]))
    comparisons = []
    ordered = sorted(task_rows, key=lambda r: (r.origin != "run", r.backbone, r.pretrain != baseline, r.pretrain,
                                               r.name))
    for r in ordered:
        notes = []
        base = None
        if r.pretrain != baseline:
            base = _closest([b for b in task_rows if b.backbone == r.backbone and b.pretrain == baseline], r.recipe,
                            EVAL_RECIPE_KEYS)
            if base is not None:
                diffs = differences(r, base, EVAL_RECIPE_KEYS)
                if diffs:
                    notes.append(f"{MARK} vs {baseline} ({base.origin}): " + ", ".join(diffs))
        pub = None
        if r.origin == "run":
            pub = _closest([p for p in task_rows if p.origin == "published" and p.backbone == r.backbone
                            and p.pretrain == r.pretrain], r.recipe, COMPARED_RECIPE_KEYS)
            if pub is None and (task, r.backbone, r.pretrain) in NOT_PUBLISHED:
                notes.append(f"none published: {NOT_PUBLISHED[(task, r.backbone, r.pretrain)]}")
            if pub is not None:
                diffs = differences(r, pub, COMPARED_RECIPE_KEYS)
                if diffs:
                    notes.append(f"{MARK} vs published: " + ", ".join(diffs))
        if r.origin == "run" and str(r.recipe.get("iterations")) == "0":  # tools/train_net.py --eval-only
            notes.append(f"{MARK} not trained: heads evaluated as initialised (0 iterations)")
        if r.launch:
            notes.append(f"{MARK} launch: {launch_note(r.launch)}")
        if r.status:
            notes.append(r.status)
        missing = [m for m in metrics if r.metrics.get(m) is None and m in TASKS[task]]
        if missing and r.origin == "run":
            notes.append("missing: " + ", ".join(missing))
        comparisons.append(Comparison(r, base, pub, notes))
    return TaskTable(task, metrics, baseline, comparisons)


def launch_note(launch: Dict) -> str:
    """A results' ``launch`` record in words: the GPUs used against the recipe's, and what kept the batch."""
    return (f"{launch.get('gpus', '?')} GPU(s) instead of the recipe's {launch.get('recipe_gpus', '?')}"
            + (f" ({launch['rule']})" if launch.get("rule") else ""))


def _delta(a: Optional[float], b: Optional[float]) -> Optional[float]:
    if a is None or b is None:
        return None
    return a - b


def _fmt(v: Optional[float], signed: bool = False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return MISSING
    return f"{v:+.2f}" if signed else f"{v:.2f}"


def _recipe_str(recipe: Dict) -> str:
    return ", ".join(f"{k}={recipe[k]}" for k in DISPLAY_RECIPE_KEYS if k in recipe) or "unrecorded"


def table_records(t: TaskTable) -> List[Dict[str, object]]:
    """One dict per row: values, deltas (None when missing), recipe, notes."""
    out = []
    for c in t.comparisons:
        r = c.row
        rec: Dict[str, object] = {"backbone": r.backbone, "pretrain": r.pretrain, "origin": r.origin,
                                  "name": r.name}
        for m in t.metrics:
            rec[m] = r.metrics.get(m)
        rec["n"] = r.n if r.origin == "run" else None
        for m in t.metrics:
            rec[f"{m}_std"] = r.std.get(m) if r.n > 1 else None
        for m in t.metrics:
            rec[f"d_{t.baseline_name}_{m}"] = _delta(r.metrics.get(m), c.baseline.metrics.get(m)) if c.baseline else None
        for m in t.metrics:
            rec[f"d_published_{m}"] = _delta(r.metrics.get(m), c.published.metrics.get(m)) if c.published else None
        rec["recipe"] = _recipe_str(r.recipe)
        rec["notes"] = "; ".join(c.notes)
        rec["source"] = r.source
        out.append(rec)
    return out


def to_markdown(t: TaskTable) -> str:
    """The task's table: its standard metrics (extras stay in the CSV), the deltas that exist."""
    recs = table_records(t)
    marked = lambda c, kind: any(n.startswith(f"{MARK} vs {kind}") for n in c.notes)  # noqa: E731
    shown = [m for m in t.metrics if m in TASKS[t.task]] or t.metrics
    with_base = any(c.baseline for c in t.comparisons)
    with_pub = any(c.published for c in t.comparisons)
    head = (["backbone", "pretraining", "origin"] + shown
            + ([f"Δ {t.baseline_name} {m}" for m in shown] if with_base else [])
            + ([f"Δ published {m}" for m in shown] if with_pub else []) + ["recipe", "notes"])
    lines = [f"### {t.task}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c, rec in zip(t.comparisons, recs):
        mb = MARK if marked(c, t.baseline_name) else ""
        launched = any(n.startswith(f"{MARK} launch") for n in c.notes)  # not on the recipe's GPUs
        mp = MARK if marked(c, "published") or launched else ""
        cells = [rec["backbone"], rec["pretrain"] + (f" ({rec['name']})" if c.row.origin == "run" else ""),
                 rec["origin"] + (f" {MARK}" if launched else "")]
        cells += [_fmt(rec[m]) + (f" ± {rec[m + '_std']:.2f} (n={c.row.n})" if rec[m + "_std"] is not None
                                  and rec[m] is not None else "") for m in shown]
        if with_base:
            cells += [_fmt(rec[f"d_{t.baseline_name}_{m}"], True)
                      + (mb if rec[f"d_{t.baseline_name}_{m}"] is not None else "") for m in shown]
        if with_pub:
            cells += [_fmt(rec[f"d_published_{m}"], True) + (mp if rec[f"d_published_{m}"] is not None else "")
                      for m in shown]
        cells += [str(rec["recipe"]), str(rec["notes"]) or ""]
        lines.append("| " + " | ".join(cells) + " |")
    sources = sorted({c.row.source for c in t.comparisons if c.row.origin == "published"})
    if sources:
        lines += ["", "Published numbers: " + "; ".join(sources) + "."]
    if any(m.endswith("_best") for m in shown):
        lines += ["", "top1 / top5: the final epoch's; top1_best: the best epoch's, as the MAE and MoCo authors "
                      "report (the published ImageNet numbers are best-epoch numbers)."]
    lines += ["", f"{MARK}: the compared rows' recipes or baseline weights differ, or the run was launched on other "
                  f"GPUs than its recipe's (see notes); {MISSING}: missing."]
    return "\n".join(lines) + "\n"


def write_csv(t: TaskTable, path) -> Path:
    from pretrain.checkpoint import write_text_atomic

    recs = table_records(t)
    text = io.StringIO(newline="")
    w = csv.DictWriter(text, fieldnames=list(recs[0]) if recs else ["backbone"])
    w.writeheader()
    for rec in recs:
        w.writerow({k: ("" if v is None else v) for k, v in rec.items()})
    return write_text_atomic(path, text.getvalue())


def write_chart(t: TaskTable, path) -> Optional[Path]:
    """Grouped bars: one group per row, one bar per metric; missing values are left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [m for m in t.metrics if m in TASKS[t.task]] or t.metrics
    if not t.comparisons or not metrics:
        return None
    labels = [f"{c.row.backbone}\n{c.row.pretrain}" + (f"\n({c.row.name})" if c.row.origin == "run" else "\n(published)")
              for c in t.comparisons]
    n, k = len(labels), len(metrics)
    width = 0.8 / k
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * n + 2), 4.2))
    for j, m in enumerate(metrics):
        color = f"C{j}"
        for i, c in enumerate(t.comparisons):
            v = c.row.metrics.get(m)
            if v is None:
                continue
            x = i + (j - (k - 1) / 2) * width
            err = c.row.std.get(m) if c.row.n > 1 else None  # seeds' standard deviation
            # Published numbers hatched, the project's runs solid.
            ax.bar(x, v, width, yerr=err, capsize=3 if err else 0, color=color,
                   hatch="//" if c.row.origin == "published" else None,
                   edgecolor="white" if c.row.origin == "published" else color, label=m if i == 0 or
                   all(cc.row.metrics.get(m) is None for cc in t.comparisons[:i]) else None)
            ax.annotate(f"{v:.1f}", (x, v), ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(n))
    ax.set_xticklabels(labels, fontsize=7)
    ax.set_ylabel("%")
    ax.set_title(t.task)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(rows: List[Row], out_dir, baseline: str = "supervised", include_published: bool = True,
                 title: str = "Benchmark report", all_published: bool = False, appendix: Sequence[str] = ()) -> Path:
    """Tables, CSVs and charts per task, and ``report.md`` that gathers them (then the lines of ``appendix``);
    returns its path. Each table and the report are written whole (temp file + rename): a rerun that fails
    midway leaves the earlier ones as they were."""
    from pretrain.checkpoint import write_text_atomic

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tasks = [t for t in TASKS if any(r.task == t for r in rows)]
    all_rows = rows + (published_rows(tasks) if include_published else [])
    parts = [f"# {title}", "",
             f"Runs: {len(rows)} results files. Baseline counterpart: `{baseline}`. "
             "Δ columns are differences in points; † marks a difference between rows whose recipes differ.", ""]
    for task in tasks:
        table = build_table(task, all_rows, baseline, all_published)
        md = to_markdown(table)
        write_text_atomic(out / f"{task}.md", md)
        write_csv(table, out / f"{task}.csv")
        chart = write_chart(table, out / f"{task}.png")
        parts += [md, f"![{task}]({chart.name})" if chart else "", ""]
    if not tasks:
        parts.append("No results found.")
    return write_text_atomic(out / "report.md", "\n".join(parts + list(appendix)))
