"""Across-seed statistics of an experiment: per-epoch bands, final/best values, thresholds, and
paired comparisons between variants.

Conventions:
- A run's history is Keras-shaped: {metric: [value at epoch 1, 2, ...]}. Runs may be ragged
  (early stopping, a run still going): epoch e counts the runs that have it, and `n` says how
  many. A run's "final" value is its last epoch's, "best" its max (accuracies) or min (losses),
  as `models.spec.metric_mode` says.
- Non-finite values (None, NaN, inf: a diverged epoch) are left out of every statistic; `n`
  counts only the values used.
- Spread is the sample std (ddof=1); bands and intervals are Student-t intervals at
  `confidence`: mean ± t((1+c)/2, n-1)·std/√n. With n = 1 std and the interval are None.
- Comparisons pair runs by seed (the same split, batch order and shared initial weights: see
  `models.experiment`), so the per-seed difference b - a cancels the draw. Over the seeds both
  variants have: mean difference, its t-interval, the paired t-test's p-value
  (`scipy.stats.ttest_rel`) and the Wilcoxon signed-rank test's (exact for small n). A p-value
  is None with a `note` saying why: fewer than 2 pairs, or every pair differing by the same
  amount (zero variance: the t statistic is undefined).
- Everything returned is JSON-able: NaN and inf become None.

`summary_csv` writes one row per (variant, metric, epoch):
variant,metric,epoch,n,mean,std,ci_low,ci_high (empty cells where a value is None).
"""

from __future__ import annotations

import csv
import io
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats as sps

from models.spec import metric_mode


@dataclass
class Run:
    variant: str
    seed: int
    history: dict[str, list[float]]  # Keras-shaped, epoch 1..n


def _num(x: Any) -> float | None:
    """A JSON number, or None for NaN/inf/None."""
    if x is None:
        return None
    f = float(x)
    return f if math.isfinite(f) else None


def _t(confidence: float, n: int) -> float:
    return float(sps.t.ppf((1.0 + confidence) / 2.0, n - 1))


def describe(values: Sequence[float], confidence: float) -> dict[str, Any]:
    """{mean, std, min, max, n, ci_low, ci_high} of the finite values."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    n = int(v.size)
    out: dict[str, Any] = {"mean": None, "std": None, "min": None, "max": None, "n": n,
                           "ci_low": None, "ci_high": None}
    if n == 0:
        return out
    mean = float(v.mean())
    out.update(mean=mean, min=float(v.min()), max=float(v.max()))
    if n >= 2:
        std = float(v.std(ddof=1))
        half = _t(confidence, n) * std / math.sqrt(n)
        out.update(std=std, ci_low=mean - half, ci_high=mean + half)
    return {k: _num(x) if isinstance(x, float) else x for k, x in out.items()}


def _matrix(histories: list[list[float]]) -> np.ndarray:
    """(runs, epochs) with NaN where a run is shorter or a value is missing."""
    width = max((len(h) for h in histories), default=0)
    m = np.full((len(histories), width), np.nan)
    for i, h in enumerate(histories):
        m[i, :len(h)] = [np.nan if x is None else x for x in h]
    m[~np.isfinite(m)] = np.nan
    return m


def _bands(m: np.ndarray, confidence: float) -> dict[str, list[Any]]:
    ok = np.isfinite(m)
    n = ok.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n > 0, np.where(ok, m, 0.0).sum(axis=0) / np.maximum(n, 1), np.nan)
        sq = np.where(ok, (m - mean) ** 2, 0.0).sum(axis=0)
        std = np.where(n >= 2, np.sqrt(sq / np.maximum(n - 1, 1)), np.nan)
        tcrit = np.where(n >= 2, sps.t.ppf((1.0 + confidence) / 2.0, np.maximum(n - 1, 1)),
                         np.nan)
        half = tcrit * std / np.sqrt(np.maximum(n, 1))
    return {"epochs": list(range(1, m.shape[1] + 1)), "n": [int(x) for x in n],
            "mean": [_num(x) for x in mean], "std": [_num(x) for x in std],
            "ci_low": [_num(x) for x in mean - half], "ci_high": [_num(x) for x in mean + half]}


def _final(h: list[float]) -> float:
    return float("nan") if not h or h[-1] is None else float(h[-1])


def _best(h: list[float], mode: str) -> float:
    v = np.asarray([x for x in h if x is not None], dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan")
    return float(v.max() if mode == "max" else v.min())


def _first_reach(h: list[float], threshold: float, mode: str) -> int | None:
    for epoch, x in enumerate(h, start=1):
        if x is not None and math.isfinite(x) and (
                x >= threshold if mode == "max" else x <= threshold):
            return epoch
    return None


def _metric_summary(runs: list[Run], metric: str, threshold: float | None,
                    confidence: float) -> dict[str, Any]:
    mode = metric_mode(metric)
    having = [r for r in runs if metric in r.history]
    histories = [list(r.history[metric]) for r in having]
    out: dict[str, Any] = {"mode": mode, **_bands(_matrix(histories), confidence),
                           "final": describe([_final(h) for h in histories], confidence),
                           "best": describe([_best(h, mode) for h in histories], confidence),
                           "threshold": None}
    if threshold is not None:
        reached = [e for h in histories if (e := _first_reach(h, threshold, mode)) is not None]
        spread = describe([float(e) for e in reached], confidence)
        out["threshold"] = {"value": threshold, "reached": len(reached), "of": len(histories),
                            "epochs": {k: spread[k] for k in ("mean", "std", "min", "max")}}
    return out


def paired(a: Sequence[float], b: Sequence[float], confidence: float) -> dict[str, Any]:
    """Paired comparison of b - a (pairs where both are finite): mean, interval, p-values."""
    pairs = [(x, y) for x, y in zip(a, b, strict=True) if math.isfinite(x) and math.isfinite(y)]
    d = np.asarray([y - x for x, y in pairs], dtype=np.float64)
    xa = np.asarray([x for x, _ in pairs], dtype=np.float64)
    xb = np.asarray([y for _, y in pairs], dtype=np.float64)
    spread = describe(list(d), confidence)
    out: dict[str, Any] = {
        "n": int(d.size), "mean_a": _num(xa.mean()) if d.size else None,
        "mean_b": _num(xb.mean()) if d.size else None, "mean_diff": spread["mean"],
        "std_diff": spread["std"], "ci_low": spread["ci_low"], "ci_high": spread["ci_high"],
        "p_value": None, "wilcoxon_p": None, "note": None}
    if d.size < 2:
        out["note"] = f"{d.size} paired seed(s): at least 2 are needed for a test"
        return out
    if np.ptp(d) <= 1e-12 * max(1.0, float(np.abs(d).max())):
        out["note"] = (f"every seed's difference is {float(d[0]):.6g}: zero variance, so the "
                       "t-test is undefined (the difference does not vary across seeds)")
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out["p_value"] = _num(sps.ttest_rel(xb, xa).pvalue)
    if np.any(d != 0):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                out["wilcoxon_p"] = _num(sps.wilcoxon(d).pvalue)
            except ValueError:
                out["wilcoxon_p"] = None
    return out


def _comparisons(by_variant: dict[str, dict[int, Run]], variants: list[str],
                 metrics: list[str], confidence: float) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i, a in enumerate(variants):
        for b in variants[i + 1:]:
            for metric in metrics:
                mode = metric_mode(metric)
                seeds = sorted(s for s in by_variant[a] if s in by_variant[b]
                               and metric in by_variant[a][s].history
                               and metric in by_variant[b][s].history)
                ha = [by_variant[a][s].history[metric] for s in seeds]
                hb = [by_variant[b][s].history[metric] for s in seeds]
                out.append({
                    "a": a, "b": b, "metric": metric, "mode": mode, "n_pairs": len(seeds),
                    "seeds": seeds,
                    "final": paired([_final(h) for h in ha], [_final(h) for h in hb],
                                    confidence),
                    "best": paired([_best(h, mode) for h in ha], [_best(h, mode) for h in hb],
                                   confidence),
                })
    return out


def summarize(runs: list[Run], *, variants: list[str], metrics: list[str],
              thresholds: dict[str, float], confidence: float = 0.95) -> dict[str, Any]:
    """The experiment's summary (JSON-able); see the module docstring for the statistics.

    Shape: {"confidence", "variants", "metrics", "thresholds",
            "per_variant": {variant: {"seeds": [...], "epochs_run": [...],
                                      "metrics": {metric: {"mode", "epochs", "n", "mean", "std",
                                                           "ci_low", "ci_high", "final", "best",
                                                           "threshold"}}}},
            "comparisons": [{"a", "b", "metric", "mode", "n_pairs", "seeds",
                             "final": {...}, "best": {...}}]}
    A variant without runs is present with n = 0 everywhere.
    """
    by_variant: dict[str, dict[int, Run]] = {v: {} for v in variants}
    for r in runs:
        if r.variant not in by_variant:
            raise ValueError(f"run of variant '{r.variant}' is not one of {variants}")
        if r.seed in by_variant[r.variant]:
            raise ValueError(f"two runs of variant '{r.variant}' with seed {r.seed}")
        by_variant[r.variant][r.seed] = r
    per_variant: dict[str, Any] = {}
    for v in variants:
        ordered = [by_variant[v][s] for s in sorted(by_variant[v])]
        per_variant[v] = {
            "seeds": [r.seed for r in ordered],
            "epochs_run": [max((len(h) for h in r.history.values()), default=0)
                           for r in ordered],
            "metrics": {m: _metric_summary(ordered, m, thresholds.get(m), confidence)
                        for m in metrics},
        }
    return {"confidence": confidence, "variants": list(variants), "metrics": list(metrics),
            "thresholds": {m: t for m, t in thresholds.items() if m in metrics},
            "per_variant": per_variant,
            "comparisons": _comparisons(by_variant, variants, metrics, confidence)}


CSV_COLUMNS = ["variant", "metric", "epoch", "n", "mean", "std", "ci_low", "ci_high"]


def summary_csv(summary: dict[str, Any]) -> str:
    """One row per (variant, metric, epoch) of the per-epoch bands; header first."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for v in summary["variants"]:
        for m, s in summary["per_variant"][v]["metrics"].items():
            for i, epoch in enumerate(s["epochs"]):
                w.writerow([v, m, epoch, s["n"][i],
                            *("" if s[k][i] is None else repr(s[k][i])
                              for k in ("mean", "std", "ci_low", "ci_high"))])
    return buf.getvalue()
