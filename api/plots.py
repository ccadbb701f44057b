"""PNG plots on Figure objects: never pyplot state, so concurrent requests are safe."""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

MAX_SCATTER_POINTS = 20_000
# The OpenAPI `responses` of a route that answers one of these PNGs.
PNG: dict[int | str, dict[str, Any]] = {
    200: {"content": {"image/png": {}}, "description": "a PNG image"}}


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def _clean(values: Sequence[float | None]) -> list[float]:
    return [math.nan if v is None else float(v) for v in values]


def curves_png(series: Mapping[str, tuple[Sequence[int], Mapping[str, Sequence[float | None]]]],
               metrics: Sequence[str]) -> bytes:
    """One panel per metric family (losses, accuracies, lr), one line per (job, metric).

    `series` maps a label (job name or id) to (epochs, {metric: values}); NaN/None leave gaps.
    """
    families: dict[str, list[str]] = {}
    for m in metrics:
        family = "loss" if m.endswith("loss") else ("accuracy" if m.endswith("accuracy") else m)
        families.setdefault(family, []).append(m)
    fig = Figure(figsize=(6 * len(families), 4.2), layout="constrained")
    axes = fig.subplots(1, len(families), squeeze=False)[0]
    for ax, (family, names) in zip(axes, families.items(), strict=True):
        for label, (epochs, history) in series.items():
            for m in names:
                if m not in history:
                    continue
                line = f"{label}: {m}" if len(series) > 1 else m
                ax.plot(list(epochs), _clean(history[m]), label=line,
                        linestyle="--" if m.startswith("val_") else "-")
        ax.set_xlabel("epoch")
        ax.set_ylabel(family)
        if family == "lr":
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    return _png(fig)


def scatter_png(X: np.ndarray, y: np.ndarray, *, classes: Sequence[str],
                feature_names: Sequence[str], title: str) -> bytes:
    """The notebook's `plt.scatter(X, Y, c=class)`: the first two features, coloured by class."""
    if len(y) > MAX_SCATTER_POINTS:  # a deterministic subsample keeps big uploads fast
        keep = np.linspace(0, len(y) - 1, MAX_SCATTER_POINTS).astype(np.int64)
        X, y = X[keep], y[keep]
    xs = X[:, 0]
    ys = X[:, 1] if X.shape[1] > 1 else np.zeros_like(xs)
    fig = Figure(figsize=(5.5, 5), layout="constrained")
    ax = fig.subplots()
    for k, name in enumerate(classes):
        mask = y == k
        ax.scatter(xs[mask], ys[mask], s=12, alpha=0.8, label=f"{name} ({int(mask.sum())})")
    ax.set_xlabel(feature_names[0])
    ax.set_ylabel(feature_names[1] if len(feature_names) > 1 else "")
    extra = f" (first 2 of {X.shape[1]} features)" if X.shape[1] > 2 else ""
    ax.set_title(title + extra)
    ax.legend(title="class", fontsize="small")
    return _png(fig)


def experiment_figure(summary: Mapping[str, Any], metric: str,
                      title: str | None = None) -> Figure:
    """One line per variant (mean across seeds) with its confidence band; `summary` is
    models.stats.summarize's output. A dotted line marks the metric's threshold, if any."""
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    level = round(100 * float(summary.get("confidence", 0.95)))
    for variant in summary["variants"]:
        s = summary["per_variant"][variant]["metrics"].get(metric)
        if s is None or not s["epochs"]:
            continue
        n_seeds = max(s["n"], default=0)
        (line,) = ax.plot(s["epochs"], _clean(s["mean"]), label=f"{variant} (n={n_seeds})")
        ax.fill_between(s["epochs"], _clean(s["ci_low"]), _clean(s["ci_high"]),
                        color=line.get_color(), alpha=0.2, linewidth=0)
    threshold = summary.get("thresholds", {}).get(metric)
    if threshold is not None:
        ax.axhline(threshold, color="grey", linestyle=":", linewidth=1,
                   label=f"threshold {threshold:g}")
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.set_title(title or f"{metric}: mean and {level}% CI across seeds")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        # the legend's title says what the band is, whatever `title` says
        ax.legend(fontsize="small", title=f"mean, {level}% CI band", title_fontsize="small")
    return fig


def experiment_png(summary: Mapping[str, Any], metric: str, title: str | None = None) -> bytes:
    return _png(experiment_figure(summary, metric, title))


# ------------------------------------------------------------------------------ study reports
# Reports must be byte-for-byte reproducible: no "Software" (matplotlib version) chunk, and
# matplotlib writes no timestamp into a PNG, so the same numbers give the same bytes.


def _png_reproducible(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    return buf.getvalue()


def study_curves_png(summary: Mapping[str, Any], metric: str, title: str | None = None) -> bytes:
    """experiment_figure (mean per variant with its band) as a reproducible PNG."""
    return _png_reproducible(experiment_figure(summary, metric, title))


def study_sweep_png(values: Sequence[float], curves: Mapping[str, Sequence[float | None]], *,
                    xlabel: str, xscale: str, title: str,
                    ylabel: str = "mean final val_accuracy") -> bytes:
    """One line per role ("bn", "none"): the mean final metric at each swept value. `xscale`:
    "linear", "log" (base 10) or "log2"."""
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    xs = [float(v) for v in values]
    for role, ys in curves.items():
        if len(ys) != len(xs):
            continue
        ax.plot(xs, _clean(ys), marker="o", label=role)
    if xscale in ("log", "log2") and all(x > 0 for x in xs):
        ax.set_xscale("log", base=2 if xscale == "log2" else 10)
    ax.set_xticks(xs, [f"{x:g}" for x in xs])
    ax.minorticks_off()
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")
    return _png_reproducible(fig)


def study_gap_png(gap_per_epoch: Sequence[float | None], *, title: str) -> bytes:
    """Mean |train-mode - eval-mode val_accuracy| per epoch, with the 0.01 level marked."""
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    epochs = list(range(1, len(gap_per_epoch) + 1))
    ax.plot(epochs, _clean(gap_per_epoch), marker="." if len(epochs) < 50 else None,
            label="mean gap over seeds")
    ax.axhline(0.01, color="grey", linestyle=":", linewidth=1, label="0.01")
    ax.set_xlabel("epoch")
    ax.set_ylabel("|train-mode - eval-mode val_accuracy|")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return _png_reproducible(fig)
