"""Experiment statistics on synthetic histories whose answers are known."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
from scipy import stats as sps

from models.stats import Run, paired, summarize, summary_csv

SEEDS = [0, 1, 2, 3, 4, 5]


def curve(seed: int, epochs: int = 5, offset: float = 0.0) -> list[float]:
    """An accuracy-like curve rising with epochs, different per seed."""
    rng = np.random.default_rng(seed)
    return [round(0.5 + 0.05 * e + 0.02 * float(rng.normal()) + offset, 6)
            for e in range(epochs)]


def runs_with(offset_b: float, noise_b: float = 0.0) -> list[Run]:
    runs = []
    for s in SEEDS:
        a = curve(s)
        rng = np.random.default_rng(100 + s)
        b = [x + offset_b + noise_b * float(rng.normal()) for x in a]
        runs += [Run("plain", s, {"val_accuracy": a, "val_loss": [1 - x for x in a]}),
                 Run("bn", s, {"val_accuracy": b, "val_loss": [1 - x for x in b]})]
    return runs


def summary_of(runs: list[Run], **kw: object) -> dict[str, Any]:
    return summarize(runs, variants=["plain", "bn"], metrics=["val_accuracy", "val_loss"],
                     thresholds={"val_accuracy": 0.6}, **kw)  # type: ignore[arg-type]


def comparison(summary: dict[str, Any], metric: str = "val_accuracy") -> dict[str, Any]:
    return next(c for c in summary["comparisons"] if c["metric"] == metric)


def test_per_epoch_band_matches_numpy_and_scipy() -> None:
    s = summary_of(runs_with(0.1))
    band = s["per_variant"]["plain"]["metrics"]["val_accuracy"]
    values = np.array([curve(seed) for seed in SEEDS])
    assert band["epochs"] == [1, 2, 3, 4, 5]
    assert band["n"] == [6] * 5
    assert band["mean"] == pytest.approx(values.mean(axis=0).tolist())
    std = values.std(axis=0, ddof=1)
    assert band["std"] == pytest.approx(std.tolist())
    half = sps.t.ppf(0.975, 5) * std / math.sqrt(6)
    assert band["ci_low"] == pytest.approx((values.mean(axis=0) - half).tolist())
    assert band["ci_high"] == pytest.approx((values.mean(axis=0) + half).tolist())
    final = band["final"]
    assert final["n"] == 6
    assert final["mean"] == pytest.approx(values[:, -1].mean())
    assert final["min"] == values[:, -1].min()
    assert final["max"] == values[:, -1].max()
    assert band["best"]["mean"] == pytest.approx(values.max(axis=1).mean())
    losses = s["per_variant"]["plain"]["metrics"]["val_loss"]
    assert losses["mode"] == "min"
    assert losses["best"]["mean"] == pytest.approx((1 - values).min(axis=1).mean())


def test_constant_offset_gives_exact_difference_and_no_t_test() -> None:
    c = comparison(summary_of(runs_with(0.125)))
    assert (c["a"], c["b"], c["n_pairs"], c["seeds"]) == ("plain", "bn", 6, SEEDS)
    assert c["final"]["mean_diff"] == pytest.approx(0.125, abs=1e-12)
    assert c["final"]["ci_low"] == pytest.approx(0.125)
    assert c["final"]["ci_high"] == \
        pytest.approx(0.125)
    assert c["final"]["p_value"] is None
    assert "zero variance" in c["final"]["note"]
    assert c["final"]["wilcoxon_p"] == pytest.approx(2 / 2**6)  # exact: all 6 signs agree
    assert c["best"]["mean_diff"] == pytest.approx(0.125, abs=1e-12)


def test_offset_with_noise_gives_tiny_p_and_interval_around_it() -> None:
    c = comparison(summary_of(runs_with(0.2, noise_b=0.005)))["final"]
    assert c["p_value"] is not None
    assert c["p_value"] < 1e-5
    assert c["ci_low"] < 0.2 < c["ci_high"]
    assert c["ci_high"] - c["ci_low"] < 0.05
    assert c["note"] is None
    loss = comparison(summary_of(runs_with(0.2, noise_b=0.005)), "val_loss")["final"]
    assert loss["mean_diff"] == pytest.approx(-c["mean_diff"])  # b - a, lower is better


def test_identical_variants_differ_by_zero() -> None:
    runs = runs_with(0.0)
    c = comparison(summary_of(runs))["final"]
    assert c["mean_diff"] == 0.0
    assert c["std_diff"] == 0.0
    assert c["p_value"] is None
    assert c["wilcoxon_p"] is None
    assert "zero variance" in c["note"]


def test_paired_matches_scipy_ttest_rel() -> None:
    a = [0.50, 0.61, 0.55, 0.58, 0.52]
    b = [0.71, 0.70, 0.78, 0.69, 0.75]
    out = paired(a, b, 0.9)
    assert out["p_value"] == pytest.approx(sps.ttest_rel(b, a).pvalue)
    d = np.subtract(b, a)
    half = sps.t.ppf(0.95, 4) * d.std(ddof=1) / math.sqrt(5)
    assert (out["ci_low"], out["ci_high"]) == pytest.approx((d.mean() - half, d.mean() + half))
    assert out["mean_a"] == pytest.approx(np.mean(a))
    assert out["n"] == 5


def test_ragged_histories_count_seeds_per_epoch() -> None:
    runs = [Run("a", 0, {"val_accuracy": [0.5, 0.6, 0.7, 0.8]}),
            Run("a", 1, {"val_accuracy": [0.4, 0.5]}),
            Run("a", 2, {"val_accuracy": [0.6, float("nan"), 0.9]})]
    s = summarize(runs, variants=["a"], metrics=["val_accuracy"],
                  thresholds={"val_accuracy": 0.7})
    m = s["per_variant"]["a"]["metrics"]["val_accuracy"]
    assert m["epochs"] == [1, 2, 3, 4]
    assert m["n"] == [3, 2, 2, 1]  # NaN left out; shorter runs stop counting
    assert m["mean"][1] == pytest.approx(0.55)
    assert m["std"][3] is None
    assert m["ci_low"][3] is None
    assert m["mean"][3] == 0.8
    assert m["final"]["mean"] == pytest.approx((0.8 + 0.5 + 0.9) / 3)
    assert m["threshold"] == {"value": 0.7, "reached": 2, "of": 3,
                              "epochs": {"mean": 3.0, "std": 0.0, "min": 3.0, "max": 3.0}}
    assert s["per_variant"]["a"]["epochs_run"] == [4, 2, 3]
    json.dumps(s, allow_nan=False)  # no NaN leaks into the JSON


def test_missing_variant_and_single_pair_give_notes_not_crashes() -> None:
    runs = [Run("plain", 1, {"val_accuracy": [0.5]}), Run("bn", 1, {"val_accuracy": [0.7]}),
            Run("plain", 2, {"val_accuracy": [0.6]})]
    s = summarize(runs, variants=["plain", "bn", "ln"], metrics=["val_accuracy"],
                  thresholds={})
    assert s["per_variant"]["ln"]["metrics"]["val_accuracy"]["n"] == []
    assert s["per_variant"]["ln"]["metrics"]["val_accuracy"]["final"]["n"] == 0
    assert s["per_variant"]["bn"]["metrics"]["val_accuracy"]["threshold"] is None
    pb = next(c for c in s["comparisons"] if (c["a"], c["b"]) == ("plain", "bn"))
    assert pb["n_pairs"] == 1
    assert pb["final"]["mean_diff"] == pytest.approx(0.2)
    assert pb["final"]["p_value"] is None
    assert "at least 2" in pb["final"]["note"]
    assert [(c["a"], c["b"]) for c in s["comparisons"]] == [
        ("plain", "bn"), ("plain", "ln"), ("bn", "ln")]
    json.dumps(s, allow_nan=False)


def test_bad_runs_are_refused() -> None:
    with pytest.raises(ValueError, match="not one of"):
        summarize([Run("x", 0, {})], variants=["a"], metrics=["loss"], thresholds={})
    with pytest.raises(ValueError, match="seed 0"):
        summarize([Run("a", 0, {}), Run("a", 0, {})], variants=["a"], metrics=["loss"],
                  thresholds={})


def test_csv_has_one_row_per_variant_metric_epoch() -> None:
    runs = [Run("a", 0, {"loss": [1.0, 0.5]}), Run("a", 1, {"loss": [0.8]})]
    text = summary_csv(summarize(runs, variants=["a"], metrics=["loss"], thresholds={}))
    lines = text.splitlines()
    assert lines[0] == "variant,metric,epoch,n,mean,std,ci_low,ci_high"
    assert lines[1].startswith("a,loss,1,2,0.9,")
    assert lines[2] == "a,loss,2,1,0.5,,,"
    assert len(lines) == 3
