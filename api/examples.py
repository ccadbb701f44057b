"""OpenAPI request examples: the notebook's two networks, as the issue writes them."""

from __future__ import annotations

from typing import Any

from models.spec import NOTEBOOK_BN_LAYERS, NOTEBOOK_PLAIN_LAYERS

_TRAINING = {"epochs": 200, "batch_size": 32, "optimizer": {"name": "adam", "lr": 0.001},
             "validation_split": 0.2, "split": "tail", "seed": 1}
_DATASET = {"id": "<id returned by POST /v1/datasets for concertriccir2.csv>"}


def _job(name: str, layers: list[dict[str, Any]]) -> dict[str, Any]:
    return {"name": name, "dataset": _DATASET, "network": {"layers": layers},
            "training": _TRAINING}


JOB_EXAMPLES: dict[str, dict[str, Any]] = {
    "plain": {
        "summary": "The notebook's plain network (15 parameters)",
        "value": _job("plain", NOTEBOOK_PLAIN_LAYERS),
    },
    "bn": {
        "summary": "The notebook's BatchNorm network (30 trainable, 10 non-trainable)",
        "value": _job("bn", NOTEBOOK_BN_LAYERS),
    },
    "shorthand": {
        "summary": "The same BN network as a shorthand, on a built-in generator",
        "value": {
            "name": "bn-shorthand",
            "dataset": {"name": "concentric_circles", "n_samples": 500, "noise": 0.1},
            "network": {"hidden": [3, 2], "activation": "relu",
                        "batchnorm": "after_activation", "output_activation": "sigmoid"},
            "training": {"epochs": 50, "batch_size": 32},
        },
    },
}
