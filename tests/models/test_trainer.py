"""The training loop: Keras-shaped history, BN modes, edge cases, K stacked models."""

from __future__ import annotations

import itertools
import math
import time
from typing import Any

import numpy as np
import pytest
import torch

from models.checkpoint import decode, read_checkpoint_meta
from models.datasets import Table, parse_csv
from models.spec import NOTEBOOK_BN_LAYERS, NOTEBOOK_PLAIN_LAYERS, JobSpec, ResolvedJob, resolve_job
from models.trainer import (
    EpochRecord,
    TrainingCallbacks,
    TrainingDiverged,
    train_job,
    train_many,
)

CPU = torch.device("cpu")


def make_job(table: Table, layers: list[dict[str, Any]], **training: Any) -> ResolvedJob:
    spec = JobSpec.model_validate({"dataset": {"id": "t"}, "network": {"layers": layers},
                                   "training": {"epochs": 2, **training}})
    return resolve_job(spec, n_features=table.n_features, n_classes=table.n_classes,
                       n_rows=table.n_rows)


def toy_table(n: int, n_classes: int = 2, d: int = 2, seed: int = 0) -> Table:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, n).astype(np.int64)
    X = (rng.normal(size=(n, d)) + y[:, None]).astype(np.float32)
    return Table(X, y, [f"x{i}" for i in range(d)], [str(c) for c in range(n_classes)], "y")


@pytest.fixture(scope="module")
def notebook(notebook_csv: bytes) -> Table:
    return parse_csv(notebook_csv)


class Recorder(TrainingCallbacks):
    def __init__(self, stop_after: int | None = None) -> None:
        self.records: list[EpochRecord] = []
        self.stop_after = stop_after

    def on_epoch_end(self, record: EpochRecord) -> None:
        self.records.append(record)

    def should_stop(self) -> bool:
        return self.stop_after is not None and len(self.records) >= self.stop_after


def test_notebook_bn_job_history_shape_and_13_steps(notebook: Table) -> None:
    job = make_job(notebook, NOTEBOOK_BN_LAYERS, epochs=2, record_train_mode_val=True)
    rec = Recorder()
    result = train_job(job, notebook, device=CPU, callbacks=rec)
    assert list(result.history) == ["loss", "accuracy", "val_loss", "val_accuracy", "lr",
                                    "train_mode_val_loss", "train_mode_val_accuracy"]
    assert all(len(v) == 2 for v in result.history.values())
    assert result.epochs_run == 2 and not result.cancelled and not result.stopped_early
    first = rec.records[0]
    assert first.epoch == 1 and first.wall_time > 0
    assert first.extras["steps"] == 13 and first.extras["train_rows"] == 399
    assert [b["name"] for b in first.extras["bn"]] == ["batchnorm", "batchnorm_1"]
    assert len(first.extras["bn"][0]["running_var"]["values"]) == 3
    assert set(first.checkpoints) == {"last", "best"}
    assert read_checkpoint_meta(first.checkpoints["last"])["epoch"] == 1
    # val accuracy counts whole rows out of 100; train-mode val differs from eval-mode val
    assert (result.history["val_accuracy"][0] * 100) == pytest.approx(
        round(result.history["val_accuracy"][0] * 100))
    assert result.history["val_loss"] != result.history["train_mode_val_loss"]
    assert result.history["lr"] == [1e-3, 1e-3]


def test_same_spec_twice_gives_identical_histories(notebook: Table) -> None:
    job = make_job(notebook, NOTEBOOK_BN_LAYERS, epochs=2, seed=11)
    a = train_job(job, notebook, device=CPU)
    b = train_job(job, notebook, device=CPU)
    assert a.history == b.history
    assert decode(a.checkpoints["last"]).model.keys() == decode(b.checkpoints["last"]).model.keys()
    for key, t in decode(a.checkpoints["last"]).model.items():
        assert torch.equal(t, decode(b.checkpoints["last"]).model[key])
    c = train_job(make_job(notebook, NOTEBOOK_BN_LAYERS, epochs=2, seed=12), notebook,
                  device=CPU)
    assert c.history != a.history


def test_four_stacked_models_equal_four_single_runs(notebook: Table) -> None:
    seeds = [1, 2, 3, 4]
    job = make_job(notebook, NOTEBOOK_BN_LAYERS, epochs=3, split="random")
    stacked = train_many(job, notebook, seeds=seeds, device=CPU)
    for seed, many in zip(seeds, stacked, strict=True):
        alone = train_job(make_job(notebook, NOTEBOOK_BN_LAYERS, epochs=3, split="random",
                                   seed=seed), notebook, device=CPU)
        assert many.history == alone.history  # bitwise, not just close
        a, b = decode(many.checkpoints["last"]), decode(alone.checkpoints["last"])
        assert a.meta["spec"] == b.meta["spec"] and a.meta["seed"] == seed
        for key in b.model:
            assert torch.equal(a.model[key], b.model[key]), key


def test_one_row_last_batch_is_dropped_with_a_note() -> None:
    table = toy_table(41)  # tail split 0.2 -> 32 training rows; batch 31 leaves a batch of 1
    job = make_job(table, NOTEBOOK_BN_LAYERS, batch_size=31)
    rec = Recorder()
    result = train_job(job, table, device=CPU, callbacks=rec)
    assert result.epochs_run == 2
    assert any("1 row" in note for note in result.notes)
    assert rec.records[0].extras["train_rows"] == 31 and rec.records[0].extras["steps"] == 1
    plain = train_job(make_job(table, NOTEBOOK_PLAIN_LAYERS, batch_size=31), table, device=CPU)
    assert plain.notes == []  # no BatchNorm: the one-row batch trains


def test_diverging_run_names_the_epoch() -> None:
    table = toy_table(64)
    huge = Table(table.X * np.float32(1e30), table.y, table.feature_names, table.classes, "y")
    job = make_job(huge, NOTEBOOK_PLAIN_LAYERS,
                   optimizer={"name": "sgd", "lr": 10.0, "momentum": 0.9})
    with pytest.raises(TrainingDiverged, match=r"diverged at epoch [12]\b"):
        train_job(job, huge, device=CPU)


def test_cancel_and_early_stopping(notebook: Table) -> None:
    rec = Recorder(stop_after=1)
    result = train_job(make_job(notebook, NOTEBOOK_PLAIN_LAYERS, epochs=5), notebook,
                       device=CPU, callbacks=rec)
    # asked once per epoch, before the epoch's record: stops after epoch 2, which is recorded
    assert result.cancelled and result.epochs_run == 2 and len(rec.records) == 2
    assert "last" in rec.records[-1].checkpoints  # the stopping epoch still gets its checkpoint
    job = make_job(notebook, NOTEBOOK_PLAIN_LAYERS, epochs=30,
                   optimizer={"lr": 1e-6},
                   early_stopping={"monitor": "val_loss", "patience": 0, "min_delta": 1.0})
    result = train_job(job, notebook, device=CPU)
    assert result.stopped_early and result.epochs_run == 2
    with pytest.raises(ValueError, match="one seed at a time"):
        train_many(job, notebook, seeds=[1, 2], device=CPU)


def test_lr_schedules_and_optimizers() -> None:
    table = toy_table(60, n_classes=3, d=3)
    layers = [{"type": "dense", "units": 4, "activation": "tanh"}, {"type": "dropout", "rate": 0.2},
              {"type": "dense", "units": 3, "activation": "softmax"}]
    step = train_job(make_job(table, layers, epochs=3, lr_schedule={"type": "step", "step_size": 1,
                                                                    "gamma": 0.5}),
                     table, device=CPU)
    assert step.history["lr"] == pytest.approx([1e-3, 5e-4, 2.5e-4])
    cos = train_job(make_job(table, layers, epochs=3, lr_schedule={"type": "cosine"}), table,
                    device=CPU)
    assert cos.history["lr"][0] == pytest.approx(1e-3) and cos.history["lr"][2] < 1e-3
    plateau = train_job(make_job(table, layers, epochs=4, optimizer={"lr": 1e-9},
                                 lr_schedule={"type": "reduce_on_plateau", "patience": 0,
                                              "monitor": "val_accuracy"}), table, device=CPU)
    assert plateau.history["lr"][-1] < 1e-9
    for opt in ({"name": "sgd", "momentum": 0.9, "nesterov": True}, {"name": "rmsprop"},
                {"name": "adamw", "weight_decay": 0.01}):
        r = train_job(make_job(table, layers, optimizer=opt, validation_split=0.0), table,
                      device=CPU)
        assert all(math.isfinite(v) for v in r.history["loss"])
        assert all(math.isnan(v) for v in r.history["val_loss"])  # no validation rows
        assert r.best_epoch is not None  # falls back to the training metric


class SlowRecorder(Recorder):
    """Each epoch takes at least `seconds` (the callback's own write time, as a big model's)."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds

    def on_epoch_end(self, record: EpochRecord) -> None:
        super().on_epoch_end(record)
        time.sleep(self.seconds)


def test_time_bounded_checkpoints_for_large_models() -> None:
    table = toy_table(64)
    job = make_job(table, NOTEBOOK_PLAIN_LAYERS, epochs=7)
    rec = SlowRecorder(0.25)
    train_job(job, table, device=CPU, callbacks=rec, checkpoint_interval_s=0.6)
    with_last = [r.epoch for r in rec.records if "last" in r.checkpoints]
    # ~0.25 s per epoch, at most one "last" per 0.6 s: epochs 3 and 6 (or so), and the final 7
    assert with_last[-1] == 7 and 1 < len(with_last) <= 4, with_last
    periodic = with_last[:-1]
    assert 1 not in periodic and all(b - a >= 2 for a, b in itertools.pairwise(periodic))
    every = Recorder()
    train_job(job, table, device=CPU, callbacks=every, checkpoint_interval_s=None)
    assert all("last" in r.checkpoints for r in every.records)
    hourly = Recorder()
    train_job(job, table, device=CPU, callbacks=hourly, checkpoint_interval_s=3600)
    assert [r.epoch for r in hourly.records if "last" in r.checkpoints] == [7]
