"""The job spec's schema: both network forms, normalisation and structural errors."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from models.spec import NOTEBOOK_PLAIN_LAYERS, BatchNormLayer, JobSpec, UploadedDataset
from tests.support.specs import job


def test_keras_momentum_is_stored_in_pytorch_convention() -> None:
    keras = job({"hidden": [3], "batchnorm": "after_activation", "momentum": 0.99,
                 "momentum_convention": "keras"})
    torch_style = job({"hidden": [3], "batchnorm": "after_activation", "momentum": 0.01})
    assert keras.model_dump() == torch_style.model_dump()
    explicit = job({"layers": [{"type": "dense", "units": 3, "activation": "relu"},
                               {"type": "batchnorm", "momentum": 0.99, "eps": 1e-3},
                               {"type": "dense", "units": 1, "activation": "sigmoid"}],
                    "momentum_convention": "keras"})
    layers = explicit.network.layers
    assert layers is not None
    assert isinstance(layers[1], BatchNormLayer)
    assert layers[1].momentum == pytest.approx(0.01)
    # The normalised spec re-validates to itself: stored specs are stable.
    assert JobSpec.model_validate(explicit.model_dump(mode="json")) == explicit


@pytest.mark.parametrize(("body", "needle"), [
    ({"network": {"hidden": [3], "layers": NOTEBOOK_PLAIN_LAYERS}}, "exactly one of"),
    ({"network": {"layers": []}}, "is empty"),
    ({"network": {"hidden": [3]}, "training": {"validation_split": 1.0}}, "less than 1"),
    ({"network": {"hidden": [3]}, "device": "tpu"}, "pattern"),
    ({"network": {"hidden": [3], "bogus": 1}}, "Extra inputs"),
    ({"network": {"hidden": [3]}, "training": {"optimizer": {"name": "adam", "nesterov": True}}},
     "nesterov"),
])
def test_structural_errors_are_validation_errors(body: dict[str, Any], needle: str) -> None:
    body = {"dataset": {"name": "moons"}, **body}
    with pytest.raises(ValidationError) as err:
        JobSpec.model_validate(body)
    assert needle in str(err.value)


def test_generated_datasets_discriminate_by_name() -> None:
    spec = JobSpec.model_validate({"dataset": {"name": "blobs", "n_classes": 4, "n_features": 3},
                                   "network": {"hidden": [8]}})
    assert not isinstance(spec.dataset, UploadedDataset)
    assert spec.dataset.name == "blobs"
    with pytest.raises(ValidationError):
        JobSpec.model_validate({"dataset": {"name": "imagenet"}, "network": {"hidden": [8]}})
    with pytest.raises(ValidationError):
        JobSpec.model_validate({"dataset": {"id": "../etc/passwd"}, "network": {"hidden": [8]}})


@pytest.mark.parametrize("m", [5e-324, 1e-13, 1 - 1e-13])
def test_keras_momentum_that_rounds_out_of_range_is_refused(m: float) -> None:
    for network in ({"hidden": [2], "batchnorm": "after_activation", "momentum": m},
                    {"layers": [{"type": "dense", "units": 2}, {"type": "batchnorm",
                                                                "momentum": m},
                                {"type": "dense", "units": 1}]}):
        with pytest.raises(ValidationError, match="strictly between 0 and 1"):
            JobSpec.model_validate({"dataset": {"name": "moons"},
                                    "network": {**network, "momentum_convention": "keras"}})
