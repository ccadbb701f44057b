"""The plots are valid PNGs from Figure objects, and stay so under concurrent calls."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from api import plots
from models.stats import Run, summarize


def test_curves_png_with_gaps_and_several_jobs() -> None:
    history: dict[str, list[float | None]] = {
        "loss": [1.0, math.nan, 0.5], "val_loss": [1.1, None, 0.7],
        "accuracy": [0.5, 0.6, 0.7], "lr": [1e-3, 1e-3, 1e-4]}
    series: dict[str, tuple[list[int], Mapping[str, Sequence[float | None]]]] = {
        "plain": ([1, 2, 3], history), "bn": ([1, 2], {"loss": [0.9, 0.4]})}
    png = plots.curves_png(series, ["loss", "val_loss", "accuracy", "lr"])
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(png) > 1000


def test_scatter_png_concurrently() -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 3)).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.int64)

    def draw(i: int) -> bytes:
        return plots.scatter_png(X, y, classes=["a", "b"], feature_names=["p", "q", "r"],
                                 title=f"t{i}")

    with ThreadPoolExecutor(4) as pool:
        pngs = list(pool.map(draw, range(8)))
    assert all(p.startswith(b"\x89PNG") for p in pngs)
    assert len(set(pngs)) == 8  # different titles, no shared pyplot state mixing them


def test_experiment_png_draws_bands_for_a_small_summary() -> None:
    runs = [Run(v, s, {"val_accuracy": [0.5 + 0.1 * e + 0.01 * s + (0.05 if v == "bn" else 0)
                                        for e in range(4)]})
            for v in ("plain", "bn") for s in range(3)]
    runs.append(Run("bn", 3, {"val_accuracy": [0.6]}))  # bn: 4 seeds at epoch 1, 3 after
    summary = summarize(runs, variants=["plain", "bn"], metrics=["val_accuracy"],
                        thresholds={"val_accuracy": 0.7})
    fig = plots.experiment_figure(summary, "val_accuracy", None)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "epoch"
    assert ax.get_ylabel() == "val_accuracy"
    legend = ax.get_legend()
    assert legend is not None
    labels = [t.get_text() for t in legend.get_texts()]
    assert labels == ["plain (n=3)", "bn (n=4)", "threshold 0.7"]
    assert len(ax.collections) == 2  # one CI band per variant
    assert legend.get_title().get_text() == "mean, 95% CI band"
    png = plots.experiment_png(summary, "val_accuracy", "bn vs plain")
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(png) > 5000
