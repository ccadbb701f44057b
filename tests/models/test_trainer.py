"""The training loop: Keras-shaped history, BN modes, edge cases, K stacked models."""

from __future__ import annotations

import itertools
import math
import time
from typing import Any

import numpy as np
import pytest
import torch

from models.checkpoint import decode, encode, read_checkpoint_meta
from models.datasets import Table, parse_csv
from models.resolution import ResolvedJob, resolve_job
from models.spec import NOTEBOOK_BN_LAYERS, NOTEBOOK_PLAIN_LAYERS, JobSpec
from models.trainer import (
    EpochRecord,
    TrainingCallbacks,
    TrainingDiverged,
    TrainingResult,
    train_job,
    train_many,
)
from models.training_state import TrainerState

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
    assert result.epochs_run == 2
    assert not result.cancelled
    assert not result.stopped_early
    first = rec.records[0]
    assert first.epoch == 1
    assert first.wall_time > 0
    assert first.extras["steps"] == 13
    assert first.extras["train_rows"] == 399
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


DROPOUT_LAYERS = [{"type": "dense", "units": 8, "activation": "tanh"},
                  {"type": "dropout", "rate": 0.3},
                  {"type": "dense", "units": 1, "activation": "sigmoid"}]
MULTICLASS_LAYERS = [{"type": "dense", "units": 6, "activation": "relu"}, {"type": "batchnorm"},
                     {"type": "dense", "units": 3, "activation": "softmax"}]


def assert_same_run(many: TrainingResult, alone: TrainingResult) -> None:
    """Stacked and alone agree within float rounding (vectorised kernels may round a model's
    elements differently depending on where K puts them)."""
    assert many.history.keys() == alone.history.keys()
    for key, values in alone.history.items():
        np.testing.assert_allclose(many.history[key], values, rtol=0, atol=1e-5, err_msg=key)
    a, b = decode(many.checkpoints["last"]), decode(alone.checkpoints["last"])
    assert a.meta["spec"] == b.meta["spec"]
    assert a.meta["seed"] == b.meta["seed"]
    assert a.model.keys() == b.model.keys()
    assert a.optim.keys() == b.optim.keys()
    for key in b.model:
        torch.testing.assert_close(a.model[key], b.model[key], rtol=1e-4, atol=1e-5, msg=key)
    assert (many.epochs_run, many.best_epoch) == (alone.epochs_run, alone.best_epoch)


@pytest.mark.parametrize(("layers", "classes"), [(NOTEBOOK_BN_LAYERS, 2),
                                                (NOTEBOOK_PLAIN_LAYERS, 2), (DROPOUT_LAYERS, 2),
                                                (MULTICLASS_LAYERS, 3)],
                         ids=["batchnorm", "plain", "dropout", "multiclass"])
def test_stacked_models_equal_single_runs(notebook: Table, layers: list[dict[str, Any]],
                                          classes: int) -> None:
    table = notebook if classes == 2 else toy_table(150, n_classes=3, d=2)
    seeds = [1, 2, 3, 4]
    job = make_job(table, layers, epochs=3, split="random")
    stacked = train_many(job, table, seeds=seeds, device=CPU)
    for seed, many in zip(seeds, stacked, strict=True):
        alone = train_job(make_job(table, layers, epochs=3, split="random", seed=seed), table,
                          device=CPU)
        assert many.seed == seed
        assert_same_run(many, alone)
    # a model's run does not depend on its neighbours in the stack
    assert_same_run(train_many(job, table, seeds=[9, 3], device=CPU)[1], stacked[2])


def test_one_row_last_batch_is_dropped_with_a_note() -> None:
    table = toy_table(41)  # tail split 0.2 -> 32 training rows; batch 31 leaves a batch of 1
    job = make_job(table, NOTEBOOK_BN_LAYERS, batch_size=31)
    rec = Recorder()
    result = train_job(job, table, device=CPU, callbacks=rec)
    assert result.epochs_run == 2
    assert any("1 row" in note for note in result.notes)
    assert rec.records[0].extras["train_rows"] == 31
    assert rec.records[0].extras["steps"] == 1
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
    assert result.cancelled
    assert result.epochs_run == 2
    assert len(rec.records) == 2
    assert "last" in rec.records[-1].checkpoints  # the stopping epoch still gets its checkpoint
    job = make_job(notebook, NOTEBOOK_PLAIN_LAYERS, epochs=30,
                   optimizer={"lr": 1e-6},
                   early_stopping={"monitor": "val_loss", "patience": 0, "min_delta": 1.0})
    result = train_job(job, notebook, device=CPU)
    assert result.stopped_early
    assert result.epochs_run == 2
    plateau = make_job(notebook, NOTEBOOK_PLAIN_LAYERS,
                       lr_schedule={"type": "reduce_on_plateau", "patience": 1})
    with pytest.raises(ValueError, match="one seed at a time"):
        train_many(plateau, notebook, seeds=[1, 2], device=CPU)


def test_trainer_state_metadata_keeps_its_checkpoint_form(notebook: Table) -> None:
    """A checkpoint's `trainer` metadata: the keys (and their order) of the dicts it was before
    TrainerState; early stopping's "stop" only once set. It restores to the same state."""
    job = make_job(notebook, NOTEBOOK_PLAIN_LAYERS, epochs=30, optimizer={"lr": 1e-6},
                   early_stopping={"monitor": "val_loss", "patience": 0, "min_delta": 1.0})
    result = train_job(job, notebook, device=CPU)
    assert result.stopped_early
    meta = decode(result.checkpoints["last"]).meta["trainer"]
    assert list(meta) == ["best", "early_stopping", "plateau"]
    assert list(meta["best"]) == ["value", "val_loss", "epoch", "metrics"]
    assert meta["early_stopping"] == {"best": meta["early_stopping"]["best"], "wait": 1,
                                      "stop": True}
    assert meta["plateau"] == {"best": None, "wait": 0, "lr": None}
    assert TrainerState.from_meta(meta).to_meta() == meta
    assert "stop" not in TrainerState().to_meta()["early_stopping"]


def test_a_cancelled_model_stops_alone(notebook: Table) -> None:
    job = make_job(notebook, NOTEBOOK_BN_LAYERS, epochs=4)
    recs = [Recorder(), Recorder(stop_after=1), Recorder()]
    results = train_many(job, notebook, seeds=[1, 2, 3], device=CPU, callbacks=recs,
                         checkpoint_every=0)
    stopped = results[1]
    assert stopped.cancelled
    assert not stopped.stopped_early
    assert stopped.epochs_run == 2
    assert [r.epoch for r in recs[1].records] == [1, 2]  # no callbacks after its stop
    assert all(len(v) == 2 for v in stopped.history.values())
    assert "last" in recs[1].records[-1].checkpoints
    assert decode(stopped.checkpoints["last"]).meta["epoch"] == 2
    assert stopped.checkpoints["last"] == recs[1].records[-1].checkpoints["last"]
    for k in (0, 2):  # the others ran on, unaffected
        assert not results[k].cancelled
        assert results[k].epochs_run == 4
        assert [r.epoch for r in recs[k].records] == [1, 2, 3, 4]
        assert decode(results[k].checkpoints["last"]).meta["epoch"] == 4
    alone = train_job(make_job(notebook, NOTEBOOK_BN_LAYERS, epochs=4, seed=3), notebook,
                      device=CPU)
    assert_same_run(results[2], alone)


def test_early_stopping_per_model(notebook: Table) -> None:
    def job(seed: int = 0) -> ResolvedJob:
        return make_job(notebook, NOTEBOOK_BN_LAYERS, epochs=12, seed=seed, optimizer={"lr": 0.02},
                        early_stopping={"monitor": "val_accuracy", "patience": 2})
    seeds = [1, 2, 3, 4, 5, 6]
    results = train_many(job(), notebook, seeds=seeds, device=CPU)
    for seed, many in zip(seeds, results, strict=True):
        alone = train_job(job(seed), notebook, device=CPU)
        assert many.stopped_early == alone.stopped_early
        assert_same_run(many, alone)
        assert len(many.history["loss"]) == many.epochs_run
    # the models stopped at different epochs: each decided alone
    assert len({r.epochs_run for r in results}) > 1
    assert any(r.stopped_early for r in results)


def test_a_diverging_model_stops_alone(notebook: Table) -> None:
    job = make_job(notebook, NOTEBOOK_PLAIN_LAYERS, epochs=1)
    first = train_many(job, notebook, seeds=[1, 2], device=CPU)
    cp = decode(first[1].checkpoints["last"])
    cp.model["0.weight"][0, 0] = float("nan")
    poisoned = encode(cp.meta, cp.model, cp.optim, cp.rng)
    job3 = make_job(notebook, NOTEBOOK_PLAIN_LAYERS, epochs=3)
    ok, bad = train_many(job3, notebook, seeds=[1, 2], device=CPU,
                         resume_from=[first[0].checkpoints["last"], poisoned])
    assert isinstance(bad.diverged, TrainingDiverged)
    assert bad.diverged.epoch == 2
    assert "seed 2" in str(bad.diverged)
    assert bad.epochs_run == 1
    assert bad.history["loss"] == []
    assert "last" not in bad.checkpoints
    assert ok.diverged is None
    assert ok.epochs_run == 3
    assert not ok.cancelled
    alone = train_job(make_job(notebook, NOTEBOOK_PLAIN_LAYERS, epochs=3, seed=1), notebook,
                      device=CPU, resume_from=first[0].checkpoints["last"])
    assert_same_run(ok, alone)  # the NaN model did not leak into its neighbour
    with pytest.raises(TrainingDiverged, match="diverged at epoch 2"):
        train_job(job3, notebook, device=CPU, resume_from=poisoned)


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
    assert cos.history["lr"][0] == pytest.approx(1e-3)
    assert cos.history["lr"][2] < 1e-3
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


class FakeClock:
    """models.trainer's `time`, with a monotonic clock that moves only when told: the
    trainer's own compute takes no time on it, however slow the machine."""

    perf_counter = staticmethod(time.perf_counter)

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


class SlowRecorder(Recorder):
    """Each epoch takes `seconds` on `clock` (the callback's own write time, as a big
    model's)."""

    def __init__(self, clock: FakeClock, seconds: float) -> None:
        super().__init__()
        self.clock, self.seconds = clock, seconds

    def on_epoch_end(self, record: EpochRecord) -> None:
        super().on_epoch_end(record)
        self.clock.now += self.seconds


def test_time_bounded_checkpoints_for_large_models(monkeypatch: pytest.MonkeyPatch) -> None:
    import models.trainer

    clock = FakeClock()
    monkeypatch.setattr(models.trainer, "time", clock)
    table = toy_table(64)
    job = make_job(table, NOTEBOOK_PLAIN_LAYERS, epochs=7)
    rec = SlowRecorder(clock, 0.25)
    train_job(job, table, device=CPU, callbacks=rec, checkpoint_interval_s=0.6)
    with_last = [r.epoch for r in rec.records if "last" in r.checkpoints]
    # 0.25 s per epoch, at most one "last" per 0.6 s: the run's first epoch (always, so a job
    # with an epoch has a checkpoint), then 5 (0.75 s after the first's write), and the final 7
    assert with_last == [1, 5, 7], with_last
    periodic = with_last[:-1]
    assert all(b - a >= 2 for a, b in itertools.pairwise(periodic))
    every = Recorder()
    train_job(job, table, device=CPU, callbacks=every, checkpoint_interval_s=None)
    assert all("last" in r.checkpoints for r in every.records)
    hourly = Recorder()
    train_job(job, table, device=CPU, callbacks=hourly, checkpoint_interval_s=3600)
    assert [r.epoch for r in hourly.records if "last" in r.checkpoints] == [1, 7]
