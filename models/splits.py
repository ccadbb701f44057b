"""Train/validation splits as index arrays: Keras's `tail`, `random` and `stratified`.

Every split keeps Keras's sizes (`models.resolution.train_rows`), so steps per epoch follow from the
spec alone whichever way the rows are chosen. Index arrays come back sorted (file order).
"""

from __future__ import annotations

import numpy as np

from models.resolution import train_rows
from models.spec import TrainingSpec

SPLITS = ("tail", "random", "stratified")
MAX_MIX_DISTANCE = 0.2  # total variation distance between train and val class mixes


def split(y: np.ndarray, *, validation_split: float, how: str, seed: int
          ) -> tuple[np.ndarray, np.ndarray]:
    """(train_idx, val_idx), int64; `tail` is the last rows unshuffled, as Keras takes them."""
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"labels must be 1-d, got shape {y.shape}")
    if not 0.0 <= validation_split < 1.0:
        raise ValueError(f"validation_split must be in [0, 1), got {validation_split}")
    if how not in SPLITS:
        raise ValueError(f"unknown split {how!r}: use one of {', '.join(SPLITS)}")
    n = len(y)
    n_train = train_rows(n, validation_split)
    if how == "tail" or n_train == n:
        return np.arange(n_train, dtype=np.int64), np.arange(n_train, n, dtype=np.int64)
    rng = np.random.default_rng(seed)
    if how == "random":
        order = rng.permutation(n)
        return np.sort(order[:n_train]).astype(np.int64), np.sort(order[n_train:]).astype(np.int64)
    return _stratified(y, n - n_train, rng)


def _allocate(counts: np.ndarray, n_val: int) -> np.ndarray:
    """Validation rows per class: proportional, every class with >= 2 rows represented (when
    n_val allows) and keeping a training row, and summing exactly to n_val."""
    ideal = n_val * counts / counts.sum()
    # Each class keeps a training row, unless there are too few training rows to go round.
    cap = np.maximum(counts - 1, 0) if counts.sum() - n_val >= len(counts) else counts.copy()
    low = np.where(counts >= 2, 1, 0)
    if low.sum() > n_val:
        low[:] = 0  # too few validation rows for every class: fall back to proportional
    alloc: np.ndarray = np.clip(np.floor(ideal).astype(np.int64), low, cap)
    # Largest-remainder adjustment; argmax breaks ties towards the lower class id.
    while alloc.sum() < n_val:
        room = np.where(alloc < counts, ideal - alloc + (alloc < cap) * 1e9, -np.inf)
        alloc[int(np.argmax(room))] += 1
    while alloc.sum() > n_val:
        spare = np.where(alloc > low, alloc - ideal, -np.inf)
        alloc[int(np.argmax(spare))] -= 1
    return alloc


def _stratified(y: np.ndarray, n_val: int, rng: np.random.Generator
                ) -> tuple[np.ndarray, np.ndarray]:
    classes, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
    alloc = _allocate(counts, n_val)
    train, val = [], []
    for c in range(len(classes)):
        rows = rng.permutation(np.flatnonzero(inverse == c))
        val.append(rows[: alloc[c]])
        train.append(rows[alloc[c]:])
    return (np.sort(np.concatenate(train)).astype(np.int64),
            np.sort(np.concatenate(val)).astype(np.int64))


def split_warnings(y: np.ndarray, train_idx: np.ndarray, val_idx: np.ndarray,
                   classes: list[str] | None = None) -> list[str]:
    """Validation rows that cannot judge the model fairly: one class, or a skewed class mix."""
    y = np.asarray(y)
    if len(val_idx) == 0 or len(train_idx) == 0:
        return []
    k = max(int(y.max()) + 1, len(classes or []))
    names = classes or [str(c) for c in range(k)]
    fix = 'use split "stratified" (or "random") to give validation the training rows\' mix'
    val_counts = np.bincount(y[val_idx], minlength=k)
    train_counts = np.bincount(y[train_idx], minlength=k)
    if np.count_nonzero(val_counts + train_counts) < 2:
        return []  # a single-class dataset; nothing a split can fix
    in_val, in_train = np.flatnonzero(val_counts), np.flatnonzero(train_counts)
    if len(in_val) == 1:
        return [f"the {len(val_idx)} validation rows all hold class {names[in_val[0]]!r}: "
                f"val_accuracy only measures that class; {fix}"]
    if len(in_train) == 1:
        return [f"the {len(train_idx)} training rows all hold class {names[in_train[0]]!r}: "
                f"the model never sees the other classes; {fix}"]
    p_val = val_counts / val_counts.sum()
    p_train = train_counts / train_counts.sum()
    distance = 0.5 * float(np.abs(p_val - p_train).sum())
    if distance > MAX_MIX_DISTANCE:
        mix = ", ".join(f"{names[c]!r} {p_train[c]:.0%} vs {p_val[c]:.0%}" for c in range(k)
                        if train_counts[c] or val_counts[c])
        return [f"the validation rows' class mix differs from the training rows' (total "
                f"variation distance {distance:.2f}; train vs val: {mix}); {fix}"]
    return []


def training_split_warnings(y: np.ndarray, training: TrainingSpec,
                            classes: list[str] | None = None) -> list[str]:
    """The warnings for the split a job's training spec will actually take of `y`."""
    if training.validation_split == 0:
        return []
    train_idx, val_idx = split(y, validation_split=training.validation_split,
                               how=training.split, seed=training.seed)
    return split_warnings(y, train_idx, val_idx, classes)
