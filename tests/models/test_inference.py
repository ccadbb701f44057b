"""Eval-mode inference from a checkpoint, input checks, and the model report."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.datasets import Table, parse_csv
from models.inference import InferenceInputError, load_predictor, model_report
from models.resolution import resolve_job
from models.spec import NOTEBOOK_BN_LAYERS, JobSpec
from models.trainer import train_job


@pytest.fixture(scope="module")
def blob(notebook_csv: bytes) -> bytes:
    table: Table = parse_csv(notebook_csv)
    spec = JobSpec.model_validate({"dataset": {"id": "t"},
                                   "network": {"layers": NOTEBOOK_BN_LAYERS},
                                   "training": {"epochs": 2}})
    job = resolve_job(spec, n_features=2, n_classes=2, n_rows=table.n_rows)
    return train_job(job, table, device=torch.device("cpu")).checkpoints["last"]


def test_predicts_labels_and_binary_probabilities(blob: bytes) -> None:
    predictor = load_predictor(blob)
    assert predictor.n_features == 2
    assert not predictor.model.training
    out = predictor.predict([[0.0, 0.0], [3.0, -2.0], [10.0, 10.0]])
    assert len(out.classes) == 3
    assert set(out.classes) <= {"0", "1"}
    probs = np.array(out.probabilities)
    assert probs.shape == (3, 2)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)
    assert [("0", "1")[i] for i in probs.argmax(1)] == out.classes
    renamed = load_predictor(blob, classes=["outer", "inner"]).predict([[0.0, 0.0]])
    assert renamed.classes[0] in ("outer", "inner")


def test_a_row_does_not_depend_on_the_others(blob: bytes) -> None:
    predictor = load_predictor(blob)
    rows = np.random.default_rng(0).normal(size=(20, 2)).tolist()
    together = np.array(predictor.predict(rows).probabilities)
    alone = np.array([predictor.predict([r]).probabilities[0] for r in rows])
    with_outliers = np.array(predictor.predict(rows[:2] + [[1e6, -1e6]] * 30).probabilities[:2])
    np.testing.assert_allclose(together, alone, rtol=0, atol=1e-6)
    np.testing.assert_allclose(together[:2], with_outliers, rtol=0, atol=1e-6)


@pytest.mark.parametrize(("rows", "message"), [
    ([[1.0, 2.0, 3.0]], "needs 2 features"),
    ([[1.0], [2.0, 3.0]], "2 features|list of lists"),
    ([[float("nan"), 1.0]], "row 0, feature 0 is nan"),
    ([[1.0, 2.0], [1.0, float("inf")]], "row 1, feature 1 is inf"),
    ([[1e300, 1.0]], "overflows float32"),
    ([["a", 1.0]], "list of lists"),
])
def test_bad_rows_are_refused(blob: bytes, rows: list[list[object]], message: str) -> None:
    with pytest.raises(InferenceInputError, match=message):
        load_predictor(blob).predict(rows)
    assert issubclass(InferenceInputError, ValueError)


def test_model_report_matches_the_notebook_counts(blob: bytes) -> None:
    report = model_report(blob)
    assert report["totals"] == {"total": 40, "trainable": 30, "non_trainable": 10}
    assert [layer["name"] for layer in report["layers"]] == [
        "dense", "batchnorm", "dense_1", "batchnorm_1", "dense_2"]
    assert report["layers"][1]["output_shape"] == [None, 3]
    bn = report["batchnorm"]
    assert [b["name"] for b in bn] == ["batchnorm", "batchnorm_1"]
    assert len(bn[0]["running_mean"]) == 3
    assert len(bn[1]["gamma"]) == 2
    assert bn[0]["running_var"] != [1.0, 1.0, 1.0]  # trained: the running stats moved
