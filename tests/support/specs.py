"""A JobSpec from the parts a test cares about."""

from __future__ import annotations

from typing import Any

from models.spec import JobSpec


def job(network: dict[str, Any], training: dict[str, Any] | None = None,
        dataset: dict[str, Any] | None = None) -> JobSpec:
    return JobSpec.model_validate({
        "dataset": dataset or {"id": "abc123"},
        "network": network,
        "training": training or {},
    })
