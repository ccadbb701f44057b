"""Resolution against the dataset's shape: expansion, output layer, limits, errors and warnings."""

from __future__ import annotations

import tracemalloc
from typing import Any

import pytest

from models.resolution import ResolvedJob, resolve_job
from models.spec import (
    NOTEBOOK_BN_LAYERS,
    NOTEBOOK_PLAIN_LAYERS,
    DenseLayer,
    JobSpec,
    Limits,
    SpecError,
)
from tests.support.specs import job


def resolve(spec: JobSpec, n_classes: int = 2, n_rows: int = 499, **kw: Any) -> ResolvedJob:
    return resolve_job(spec, n_features=2, n_classes=n_classes, n_rows=n_rows, **kw)


def totals(spec: JobSpec) -> tuple[int, int, int]:
    rows = resolve(spec).network.summary()
    trainable = sum(r.trainable for r in rows)
    frozen = sum(r.non_trainable for r in rows)
    return trainable + frozen, trainable, frozen


def test_notebook_networks_have_keras_parameter_counts() -> None:
    assert totals(job({"layers": NOTEBOOK_PLAIN_LAYERS})) == (15, 15, 0)
    assert totals(job({"layers": NOTEBOOK_BN_LAYERS})) == (40, 30, 10)


def test_issue_body_accepted_as_written() -> None:
    body = {"name": "bn", "dataset": {"id": "0f3a"}, "network": {"layers": NOTEBOOK_BN_LAYERS},
            "training": {"epochs": 200, "batch_size": 32,
                         "optimizer": {"name": "adam", "lr": 0.001},
                         "validation_split": 0.2, "split": "tail", "seed": 1}}
    resolved = resolve(JobSpec.model_validate(body))
    assert resolved.steps_per_epoch == 13  # 399 training rows at batch 32
    assert resolved.network.loss == "binary_crossentropy"
    assert resolved.network.head == "sigmoid"


def test_shorthand_placements_expand_to_the_seed_examples() -> None:
    after = resolve(job({"hidden": [3, 2], "batchnorm": "after_activation"})).network
    assert [layer.type for layer in after.layers] == [
        "dense", "batchnorm", "dense", "batchnorm", "dense"]
    assert isinstance(after.layers[0], DenseLayer)
    assert after.layers[0].activation == "relu"
    before = resolve(job({"hidden": [3, 2], "batchnorm": "before_activation"})).network
    assert [m.type for m in before.modules()] == [
        "dense", "batchnorm", "activation", "dense", "batchnorm", "activation", "dense"]
    none = resolve(job({"hidden": [3, 2]})).network
    assert [layer.type for layer in none.layers] == ["dense", "dense", "dense"]


def test_output_layer_inferred_from_classes() -> None:
    binary = resolve(job({"hidden": [4]})).network
    assert (binary.output_units, binary.head, binary.loss) == (1, "sigmoid", "binary_crossentropy")
    multi = resolve(job({"hidden": [4]}), n_classes=3).network
    assert (multi.output_units, multi.head, multi.loss) == (3, "softmax",
                                                            "categorical_crossentropy")


@pytest.mark.parametrize(("network", "needle"), [
    ({"layers": [{"type": "conv2d", "filters": 4},
                 {"type": "dense", "units": 1, "activation": "sigmoid"}]},
     "conv2d layer 0 needs an image input (C, H, W) but gets (2) features"),
    ({"layers": [{"type": "dense", "units": 1, "activation": "softmax"}]},
     "softmax on a 1-unit output"),
    ({"layers": [{"type": "dense", "units": 3, "activation": "softmax"}]},
     "use 2 units"),
    ({"layers": [{"type": "dense", "units": 4, "activation": "relu"},
                 {"type": "batchnorm"}]}, "must be the output dense layer"),
    ({"layers": [{"type": "dense", "units": 1, "activation": "relu"}]},
     "cannot give class probabilities"),
])
def test_bad_networks_get_precise_messages(network: dict[str, Any], needle: str) -> None:
    with pytest.raises(SpecError) as err:
        resolve(job(network))
    assert any(needle in message for message in err.value.errors), err.value.errors


def test_huge_layer_refused_by_arithmetic_alone() -> None:
    spec = job({"hidden": [10**9]})
    tracemalloc.start()
    try:
        with pytest.raises(SpecError) as err:
            resolve(spec)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**20, peak  # nothing sized by the layer was built (it would be gigabytes)
    assert "10000" in err.value.errors[0] or "1000000000 units" in err.value.errors[0]


def test_parameter_budget_names_the_limit() -> None:
    spec = job({"hidden": [4000, 4000]})
    with pytest.raises(SpecError) as err:
        resolve(spec, limits=Limits(max_params=1_000_000))
    assert "1,000,000" in err.value.errors[0]


def test_batch_of_one_with_batchnorm_is_refused() -> None:
    spec = job({"layers": NOTEBOOK_BN_LAYERS}, training={"batch_size": 1})
    with pytest.raises(SpecError, match="batch_size must be at least 2"):
        resolve(spec)
    resolve(job({"layers": NOTEBOOK_PLAIN_LAYERS}, training={"batch_size": 1}))


def test_limits_on_epochs_rows_and_split() -> None:
    with pytest.raises(SpecError, match="epochs is 20000"):
        resolve(job({"hidden": [2]}, training={"epochs": 20000}))
    with pytest.raises(SpecError, match="rows; the limit"):
        resolve(job({"hidden": [2]}), limits=Limits(max_rows=100))
    with pytest.raises(SpecError, match="leaves 0 training rows of 3"):
        resolve(job({"hidden": [2]}, training={"validation_split": 0.9}), n_rows=3)


def test_batchnorm_warnings() -> None:
    warnings = resolve(job({"layers": [
        {"type": "dense", "units": 4},
        {"type": "batchnorm", "track_running_stats": False},
        {"type": "activation", "activation": "relu"},
        {"type": "dense", "units": 1, "activation": "sigmoid"}]},
        training={"batch_size": 8})).warnings
    text = " | ".join(warnings)
    assert "under 16" in text
    assert "bias directly before BatchNorm" in text
    assert "track_running_stats false" in text
    assert resolve(job({"layers": NOTEBOOK_PLAIN_LAYERS})).warnings == []
    bn_last = resolve(job({"layers": NOTEBOOK_BN_LAYERS})).warnings
    assert any("directly before the output layer" in w for w in bn_last)


def test_shorthand_dropout_follows_each_hidden_block() -> None:
    spec = JobSpec.model_validate({"dataset": {"name": "moons"}, "network": {
        "hidden": [4, 3], "batchnorm": "before_activation", "dropout": 0.25}})
    layers = resolve_job(spec, n_features=2, n_classes=2, n_rows=100).network.layers
    assert [la.type for la in layers] == ["dense", "batchnorm", "activation", "dropout",
                                          "dense", "batchnorm", "activation", "dropout", "dense"]
    assert {la.rate for la in layers if la.type == "dropout"} == {0.25}
