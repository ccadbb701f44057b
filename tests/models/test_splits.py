"""Splits keep Keras's sizes; tail is the last rows; random/stratified are seeded; warnings fire
on a validation set that cannot judge the model."""

from __future__ import annotations

import numpy as np
import pytest

from models.datasets import parse_csv
from models.resolution import train_rows
from models.splits import split, split_warnings


def _notebook_y(csv: bytes) -> np.ndarray:
    return parse_csv(csv, max_rows=1000, max_columns=10, max_bytes=100_000).y


def _partition(n: int, train: np.ndarray, val: np.ndarray) -> None:
    assert train.dtype == val.dtype == np.int64
    assert np.array_equal(np.sort(np.concatenate([train, val])), np.arange(n))


def test_tail_on_notebook_csv_is_keras_rule(notebook_csv: bytes) -> None:
    y = _notebook_y(notebook_csv)
    train, val = split(y, validation_split=0.2, how="tail", seed=0)
    assert (len(train), len(val)) == (399, 100) == (train_rows(499, 0.2), 499 - 399)
    assert np.array_equal(train, np.arange(399))
    assert np.array_equal(val, np.arange(399, 499))
    assert -(-len(train) // 32) == 13  # steps per epoch at batch 32


@pytest.mark.parametrize("how", ["tail", "random", "stratified"])
@pytest.mark.parametrize(("n", "vs"), [(499, 0.2), (10, 0.3), (7, 0.5), (100, 0.0), (33, 0.9)])
def test_sizes_match_train_rows(how: str, n: int, vs: float) -> None:
    y = np.arange(n) % 3
    train, val = split(y, validation_split=vs, how=how, seed=1)
    assert len(train) == train_rows(n, vs)
    assert len(val) == n - train_rows(n, vs)
    _partition(n, train, val)


@pytest.mark.parametrize("how", ["random", "stratified"])
def test_seeded_splits_are_deterministic_and_differ_by_seed(how: str, notebook_csv: bytes
                                                            ) -> None:
    y = _notebook_y(notebook_csv)
    a = split(y, validation_split=0.2, how=how, seed=7)
    b = split(y, validation_split=0.2, how=how, seed=7)
    c = split(y, validation_split=0.2, how=how, seed=8)
    assert np.array_equal(a[1], b[1])
    assert np.array_equal(a[0], b[0])
    assert not np.array_equal(a[1], c[1])
    assert not np.array_equal(a[1], np.arange(399, 499))


def test_stratified_keeps_class_proportions() -> None:
    y = np.repeat([0, 1, 2], [600, 300, 100])
    train, val = split(y, validation_split=0.2, how="stratified", seed=0)
    assert np.bincount(y[val]).tolist() == [120, 60, 20]
    assert np.bincount(y[train]).tolist() == [480, 240, 80]


def test_stratified_represents_small_classes() -> None:
    y = np.repeat([0, 1, 2, 3], [90, 5, 2, 1])
    train, val = split(y, validation_split=0.1, how="stratified", seed=3)
    val_counts = np.bincount(y[val], minlength=4)
    assert len(val) == 98 - train_rows(98, 0.1)
    assert val_counts[1] >= 1
    assert val_counts[2] == 1
    assert val_counts[3] == 0  # a single-row class stays in training
    assert set(np.unique(y[train])) == {0, 1, 2, 3}


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="validation_split"):
        split(np.zeros(4), validation_split=1.0, how="tail", seed=0)
    with pytest.raises(ValueError, match="unknown split 'head'"):
        split(np.zeros(4), validation_split=0.2, how="head", seed=0)


def test_warnings_fire_on_tail_of_sorted_labels() -> None:
    y = np.repeat([0, 1], [80, 20])
    train, val = split(y, validation_split=0.2, how="tail", seed=0)
    [msg] = split_warnings(y, train, val, classes=["neg", "pos"])
    assert "validation rows all hold class 'pos'" in msg
    assert '"stratified"' in msg
    y = np.repeat([0, 1, 0, 1], [45, 5, 15, 35])  # train 90% class 0, val 30%
    train, val = split(y, validation_split=0.5, how="tail", seed=0)
    [msg] = split_warnings(y, train, val)
    assert "class mix differs" in msg
    assert "0.60" in msg
    train, val = split(y, validation_split=0.5, how="stratified", seed=0)
    assert split_warnings(y, train, val) == []


def test_notebook_tail_split_has_no_warning(notebook_csv: bytes) -> None:
    y = _notebook_y(notebook_csv)
    train, val = split(y, validation_split=0.2, how="tail", seed=0)
    assert split_warnings(y, train, val) == []
    assert split_warnings(y, *split(y, validation_split=0.0, how="tail", seed=0)) == []


def test_warning_when_training_rows_hold_one_class() -> None:
    y = np.repeat([0, 1], [50, 50])
    [msg] = split_warnings(y, np.arange(40), np.arange(40, 100))
    assert "40 training rows all hold class '0'" in msg


def test_training_split_warnings_follow_the_spec() -> None:
    from models.spec import TrainingSpec
    from models.splits import training_split_warnings

    y = np.array([0] * 80 + [1] * 20)
    tail = TrainingSpec(validation_split=0.2, split="tail")
    assert "all hold class '1'" in training_split_warnings(y, tail, ["0", "1"])[0]
    assert training_split_warnings(y, TrainingSpec(validation_split=0.2, split="stratified")) == []
    assert training_split_warnings(y, TrainingSpec(validation_split=0.0)) == []
