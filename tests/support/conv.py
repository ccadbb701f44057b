"""Convolutional subjects shared by the CPU and CUDA tests: learnable images, a job resolved
on them, and one network per normalisation layer."""

from __future__ import annotations

from typing import Any

import numpy as np

from models.datasets import Table
from models.resolution import resolve_job
from models.spec import JobSpec


def images(n: int = 96, shape: tuple[int, int, int] = (2, 6, 6), n_classes: int = 3,
           seed: int = 0) -> Table:
    """Learnable images: class c brightens a band of rows, on an offset and scale far from 0/1
    (so standardisation has something to do)."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % n_classes
    rng.shuffle(y)
    c, h, w = shape
    X = rng.normal(size=(n, c, h, w))
    for i, label in enumerate(y):
        X[i, :, label * h // n_classes:(label + 1) * h // n_classes, :] += 2.0
    X = X * 30.0 + 100.0
    names = [f"c{a}_y{b}_x{d}" for a in range(c) for b in range(h) for d in range(w)]
    return Table(X.astype(np.float32), y.astype(np.int64), names,
                 [f"k{i}" for i in range(n_classes)], "target")


def job(network: dict[str, Any], table: Table, **training: Any) -> Any:
    spec = JobSpec.model_validate({
        "dataset": {"id": "imgs"}, "network": network,
        "training": {"epochs": 2, "batch_size": 16, "split": "stratified", "seed": 1,
                     "optimizer": {"name": "adam", "lr": 0.01}, **training}})
    return resolve_job(spec, input_shape=table.input_shape, n_classes=table.n_classes,
                       n_rows=table.n_rows)



NORMS: dict[str, dict[str, Any]] = {
    "batchnorm": {"conv": [6, 8], "pool": "max", "hidden": [12],
                  "batchnorm": "before_activation"},
    "batchnorm_after": {"conv": [6], "batchnorm": "after_activation", "reduce": "flatten"},
    "groupnorm": {"conv": [6, 8], "norm": "groupnorm", "groups": 2, "hidden": [8]},
    "layernorm": {"conv": [6, 8], "norm": "layernorm", "pool": "avg", "hidden": [8]},
    "instancenorm": {"layers": [
        {"type": "conv2d", "filters": 6, "padding": "same"},
        {"type": "instancenorm", "affine": True, "track_running_stats": True},
        {"type": "activation", "activation": "relu"}, {"type": "dropout", "rate": 0.2},
        {"type": "global_avg_pool"}, {"type": "dense", "units": 3, "activation": "softmax"}]},
    "none": {"conv": [6], "norm": "none", "pool": "max", "hidden": [8]},
}
