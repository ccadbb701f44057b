"""What the client commands show a person: rich tables and progress bars, and the JSON they
print for scripts. Tables go to stdout (`out`); progress and messages to stderr (`err`)."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Column, Table

from bnlab import (
    Dataset,
    DoneEvent,
    EpochEvent,
    Event,
    Experiment,
    Job,
    Prediction,
    StatusEvent,
    Study,
    StudyReport,
)
from bnlab.types import StudyData

out = Console(soft_wrap=True)  # tables on stdout
err = Console(stderr=True)

FINAL_SHOWN = ("loss", "accuracy", "val_loss", "val_accuracy")


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def dump(model: Job | Experiment) -> dict[str, Any]:
    return model.model_dump(mode="json")


def short_metrics(metrics: dict[str, float | None]) -> str:
    names = (("loss", "loss"), ("accuracy", "acc"), ("val_accuracy", "val_acc"))
    return " ".join(f"{short} {metrics[k]:.3f}" for k, short in names
                    if metrics.get(k) is not None)


# -- live progress -----------------------------------------------------------------------------

class LiveProgress:
    """A rich progress bar per job (per child for an experiment) with its latest metrics."""

    def __init__(self, console: Console) -> None:
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"), TextColumn("{task.fields[metrics]}"),
            TimeElapsedColumn(), console=console)
        self.tasks: dict[str, TaskID] = {}

    def __enter__(self) -> LiveProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def add(self, key: str, label: str, total: int | None, epoch: int = 0,
            status: str = "") -> TaskID:
        if key not in self.tasks:
            self.tasks[key] = self.progress.add_task(label, total=total or None,
                                                     completed=epoch, status=status, metrics="")
        return self.tasks[key]

    def __call__(self, event: Event) -> None:
        if isinstance(event, StatusEvent):
            key = event.job_id or "job"
            task = self.add(key, key, event.epochs)
            self.progress.update(task, status=event.status, total=event.epochs or None,
                                 completed=event.epoch or 0)
        elif isinstance(event, EpochEvent):
            key = event.job_id or "job"
            label = f"{event.variant} seed={event.seed}" if event.variant is not None else key
            task = self.add(key, label, None)
            self.progress.update(task, completed=event.epoch, status="running",
                                 metrics=short_metrics(event.metrics))
        elif isinstance(event, DoneEvent):
            self._final(event.data)

    def _final(self, data: dict[str, Any]) -> None:
        children = data.get("children") or [
            {"job_id": data.get("id"), "status": data.get("status"), "epoch": data.get("epoch")}]
        for child in children:
            task = self.tasks.get(str(child.get("job_id")))
            if task is not None:
                self.progress.update(task, status=child.get("status"),
                                     completed=child.get("epoch") or 0)


# -- jobs and experiments ----------------------------------------------------------------------

def fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def show(item: Job | Experiment, as_json: bool) -> None:
    if as_json:
        print_json(dump(item))
    else:
        show_status(item)


def show_status(item: Job | Experiment) -> None:
    if isinstance(item, Job):
        rows = [("id", item.id), ("name", item.name), ("status", item.status),
                ("epoch", f"{item.epoch}/{item.epochs}"), ("worker", item.worker),
                ("elapsed_s", item.elapsed_s), ("best_epoch", item.best_epoch),
                ("error", item.error)]
        rows += [(k, (item.final_metrics or {}).get(k)) for k in FINAL_SHOWN
                 if item.final_metrics]
        for k, v in rows:
            if v is not None:
                out.print(f"[bold]{k:>12}[/bold]  {fmt(v)}", highlight=False)
        for w in item.warnings:
            out.print(f"[yellow]{'warning':>12}[/yellow]  {w}", highlight=False)
        return
    out.print(f"experiment [bold]{item.id}[/bold] {item.name or ''}: {item.status}  "
              + "  ".join(f"{k} {v}" for k, v in item.counts.items() if v), highlight=False)
    table = Table("variant", "seed", Column("job", no_wrap=True), "status", "epoch",
                  "val_accuracy")
    for c in item.children:
        table.add_row(c.variant, str(c.seed), c.job_id, c.status, f"{c.epoch}/{c.epochs}",
                      fmt((c.final_metrics or {}).get("val_accuracy")))
    out.print(table)


def show_jobs(jobs: list[Job]) -> None:
    table = Table(Column("id", no_wrap=True), "name", "status", "epoch", "val_accuracy", "created")
    for j in jobs:
        table.add_row(j.id, j.name or "", j.status, f"{j.epoch}/{j.epochs}",
                      fmt((j.final_metrics or {}).get("val_accuracy")),
                      j.created_at.strftime("%Y-%m-%d %H:%M:%S") if j.created_at else "")
    out.print(table)


def show_history(h: dict[str, list[Any]]) -> None:
    keys = [k for k in h if k not in ("epoch", "wall_time")]
    table = Table("epoch", *keys)
    for i, epoch in enumerate(h["epoch"]):
        table.add_row(str(epoch), *(fmt(h[k][i]) for k in keys))
    out.print(table)


def show_predictions(result: Prediction) -> None:
    table = Table("row", "class", *(f"p({c})" for c in result.class_names))
    for i, (cls, probs) in enumerate(zip(result.classes, result.probabilities, strict=True)):
        table.add_row(str(i), cls, *(f"{p:.4f}" for p in probs))
    out.print(table)


def features_text(ds: Any, most: int = 8) -> str:
    """Image datasets by their shape; tables by their feature names (the first few)."""
    if ds.is_image:
        return "x".join(map(str, ds.input_shape))
    names = ds.feature_columns
    return ",".join(names[:most]) + (f",... ({len(names)})" if len(names) > most else "")


def show_datasets(items: list[Dataset]) -> None:
    table = Table(Column("id", no_wrap=True), "name", "rows", "features", "label", "classes")
    for d in items:
        table.add_row(d.id, d.name or d.filename or "", str(d.n_rows), features_text(d),
                      d.label_column, json.dumps(d.class_counts))
    out.print(table)


def show_experiments(items: list[Experiment]) -> None:
    table = Table(Column("id", no_wrap=True), "name", "status", "variants", "seeds", "counts")
    for e in items:
        table.add_row(e.id, e.name or "", e.status, ",".join(e.variants), str(len(e.seeds)),
                      " ".join(f"{k}={v}" for k, v in e.counts.items() if v))
    out.print(table)


def show_summary(s: dict[str, Any]) -> None:
    conf = round(100 * float(s.get("confidence", 0.95)))
    table = Table("variant", "metric", "n", "final mean", f"{conf}% CI", "best mean",
                  "reached threshold")
    for v, per in (s.get("per_variant") or {}).items():
        for m, ms in (per.get("metrics") or {}).items():
            final, best, thr = ms.get("final") or {}, ms.get("best") or {}, ms.get("threshold")
            ci = f"[{fmt(final.get('ci_low'))}, {fmt(final.get('ci_high'))}]"
            reached = f"{thr['reached']}/{thr['of']} (≥ {thr['value']})" \
                if isinstance(thr, dict) and "reached" in thr else ""
            table.add_row(v, m, fmt(final.get("n")), fmt(final.get("mean")), ci,
                          fmt(best.get("mean")), reached)
    out.print(table)
    comp = Table("b - a", "metric", "pairs", "final diff", f"{conf}% CI", "p (t)",
                 "p (wilcoxon)", "note")
    for c in s.get("comparisons") or []:
        f = c.get("final") or {}
        comp.add_row(f"{c['b']} - {c['a']}", c["metric"], fmt(c.get("n_pairs")),
                     fmt(f.get("mean_diff")), f"[{fmt(f.get('ci_low'))}, "
                     f"{fmt(f.get('ci_high'))}]", fmt(f.get("p_value")),
                     fmt(f.get("wilcoxon_p")), f.get("note") or "")
    out.print(comp)


# -- studies -----------------------------------------------------------------------------------

VERDICT_STYLE = {"supported": "green", "contradicted": "red", "inconclusive": "yellow"}


class StudyProgress:
    """A rich progress bar per claim: succeeded / all children of its experiment."""

    def __init__(self, console: Console) -> None:
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"), TimeElapsedColumn(), console=console)
        self.tasks: dict[str, TaskID] = {}

    def __enter__(self) -> StudyProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def __call__(self, study: StudyData) -> None:
        for c in study.claims:
            bad = {k: v for k, v in c.counts.items() if k in ("failed", "cancelled") and v}
            status = c.status + "".join(f", {v} {k}" for k, v in bad.items())
            if c.claim not in self.tasks:
                self.tasks[c.claim] = self.progress.add_task(c.claim, total=c.total or None,
                                                             completed=c.succeeded,
                                                             status=status)
            else:
                self.progress.update(self.tasks[c.claim], total=c.total or None,
                                     completed=c.succeeded, status=status)


def _title(study: StudyData) -> str:
    return f"study [bold]{study.id}[/bold]" + (f" {study.name}" if study.name else "")


def _done_text(counts: dict[str, int]) -> str:
    return f"{counts.get('succeeded', 0)}/{sum(counts.values())}"


def show_study(study: Study) -> None:
    counts = "  ".join(f"{k} {v}" for k, v in study.counts.items() if v)
    out.print(f"{_title(study)}: {study.status}  {counts}", highlight=False)
    table = Table(Column("claim", no_wrap=True), Column("status", no_wrap=True), "done",
                  Column("experiment", no_wrap=True))
    for c in study.claims:
        bad = "".join(f", {v} {k}" for k, v in c.counts.items()
                      if k in ("failed", "cancelled") and v and k != c.status)
        table.add_row(c.claim, c.status + bad, f"{c.succeeded}/{c.total}",
                      c.experiment_id or "")
    out.print(table)
    if study.cost is not None:
        eta = study.cost.estimated_seconds
        out.print(f"{study.cost.children} jobs"
                  + (f", about {eta:.0f} s" if eta is not None else "")
                  + (f" ({study.cost.note})" if study.cost.note else ""), highlight=False)
    for w in study.warnings:
        out.print(f"[yellow]warning:[/yellow] {w}", highlight=False)


def show_report(report: dict[str, Any]) -> None:
    r = StudyReport.model_validate(report)
    partial = " (partial: not every run has finished)" if r.partial else ""
    out.print(f"study [bold]{r.id}[/bold]" + (f" {r.name}" if r.name else "")
              + f": {r.status or ''}, seeds {r.seeds}, alpha {r.alpha}{partial}",
              highlight=False)
    def g(v: float | int | None) -> str:
        return "-" if v is None else f"{v:.3g}"

    conf = round(100 * (r.confidence or 0.95))
    table = Table(Column("claim", no_wrap=True), Column("verdict", no_wrap=True), "n", "effect",
                  Column(f"{conf}% CI", no_wrap=True), "p (Holm)")
    for c in r.claims:
        style = VERDICT_STYLE.get(c.verdict, "")
        t = c.test
        effect = t.estimate if t.estimate is not None else t.mean
        table.add_row(c.claim, f"[{style}]{c.verdict}[/{style}]" if style else c.verdict,
                      g(t.n), g(effect), f"[{g(t.ci_low)}, {g(t.ci_high)}]", g(c.adjusted_p))
    out.print(table)
    for c in r.claims:  # the words, below the numbers: a table cell would wrap them to bits
        out.print(f"[bold]{c.claim}[/bold] ({c.verdict}): {c.reason or ''}", highlight=False)
        if c.firm_up and c.firm_up.get("text"):
            out.print(f"  to firm it up: {c.firm_up['text']}", highlight=False)


def show_studies(items: list[Study]) -> None:
    table = Table(Column("id", no_wrap=True), "name", "status", "claims", "done", "created")
    for s in items:
        table.add_row(s.id, s.name or "", s.status, str(len(s.claims)), _done_text(s.counts),
                      s.created_at.strftime("%Y-%m-%d %H:%M") if s.created_at else "")
    out.print(table)
