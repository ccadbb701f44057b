"""Job request bodies the API tests submit."""

from __future__ import annotations

from typing import Any


def notebook_body(name: str, layers: list[dict[str, Any]], dataset_id: str) -> dict[str, Any]:
    """The issue's body, verbatim apart from the id."""
    return {"name": name, "dataset": {"id": dataset_id}, "network": {"layers": layers},
            "training": {"epochs": 200, "batch_size": 32,
                         "optimizer": {"name": "adam", "lr": 0.001},
                         "validation_split": 0.2, "split": "tail", "seed": 1}}


CIRCLES = {"name": "concentric_circles", "n_samples": 200, "noise": 0.05}


def generated_body(**training: Any) -> dict[str, Any]:
    return {"name": "gen", "dataset": CIRCLES,
            "network": {"hidden": [4], "batchnorm": "after_activation"},
            "training": {"epochs": 3, "batch_size": 32, **training}}
