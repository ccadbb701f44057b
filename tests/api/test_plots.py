"""The plots are valid PNGs from Figure objects, and stay so under concurrent calls."""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from api import plots


def test_curves_png_with_gaps_and_several_jobs() -> None:
    history = {"loss": [1.0, math.nan, 0.5], "val_loss": [1.1, None, 0.7],
               "accuracy": [0.5, 0.6, 0.7], "lr": [1e-3, 1e-3, 1e-4]}
    series = {"plain": ([1, 2, 3], history), "bn": ([1, 2], {"loss": [0.9, 0.4]})}
    png = plots.curves_png(series, ["loss", "val_loss", "accuracy", "lr"])
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000


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
    assert len({p for p in pngs}) == 8  # different titles, no shared pyplot state mixing them
