"""Per-model training state outside the tensors: best-so-far, reduce-on-plateau and early
stopping (what a "last" checkpoint's `trainer` metadata holds, to resume), and the rest of one
stacked model's bookkeeping: its seed, split, batch-order generator, history and how it stopped.

Updated once per epoch, never per step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from models.resolution import ResolvedJob
from models.spec import (
    EarlyStopping,
    JobSpec,
    PlateauSchedule,
    TrainingSpec,
    metric_mode,
)
from models.splits import split

if TYPE_CHECKING:
    from models.trainer import TrainingDiverged


def better(value: float, best: float | None, mode: str, min_delta: float = 0.0) -> bool:
    """`value` improves on `best` ("min" or "max" mode); NaN never improves, anything beats
    no best or a NaN one."""
    if math.isnan(value):
        return False
    if best is None or math.isnan(best):
        return True
    return value < best - min_delta if mode == "min" else value > best + min_delta


def monitored(name: str, has_val: bool) -> str:
    """Without validation rows, a val_* monitor falls back to its training counterpart."""
    return name if has_val or not name.startswith("val_") else name[4:]


@dataclass
class BestSoFar:
    """The best epoch so far on the checkpoint monitor; ties broken by the lower `val_loss`
    (the training loss without validation rows: the checkpoint key keeps its old name)."""

    value: float | None = None
    val_loss: float | None = None
    epoch: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)

    def update(self, metrics: dict[str, float], epoch: int, name: str, tie_name: str) -> None:
        value, tie = metrics[name], metrics[tie_name]
        tied = self.value is not None and value == self.value and name != tie_name
        if better(value, self.value, metric_mode(name)) or (
                tied and better(tie, self.val_loss, "min")):
            self.value, self.val_loss, self.epoch = value, tie, epoch
            self.metrics = dict(metrics)

    def to_meta(self) -> dict[str, Any]:
        return {"value": self.value, "val_loss": self.val_loss, "epoch": self.epoch,
                "metrics": dict(self.metrics)}

    @classmethod
    def from_meta(cls, d: dict[str, Any]) -> BestSoFar:
        return cls(d["value"], d["val_loss"], d["epoch"], d["metrics"])


@dataclass
class PlateauState:
    """reduce_on_plateau: the best monitored value, epochs since, and the lr it set (None
    before its first epoch)."""

    best: float | None = None
    wait: int = 0
    lr: float | None = None

    def update(self, metrics: dict[str, float], s: PlateauSchedule, base_lr: float,
               has_val: bool) -> None:
        name = monitored(s.monitor, has_val)
        if self.lr is None:
            self.lr = base_lr
        if better(metrics[name], self.best, metric_mode(name)):
            self.best, self.wait = metrics[name], 0
        else:
            self.wait += 1
            if self.wait > s.patience:
                self.lr, self.wait = max(self.lr * s.factor, s.min_lr), 0

    def to_meta(self) -> dict[str, Any]:
        return {"best": self.best, "wait": self.wait, "lr": self.lr}

    @classmethod
    def from_meta(cls, d: dict[str, Any]) -> PlateauState:
        return cls(d["best"], d["wait"], d["lr"])


@dataclass
class EarlyStoppingState:
    """The best monitored value, epochs without improvement, and whether patience ran out."""

    best: float | None = None
    wait: int = 0
    stop: bool = False

    def update(self, metrics: dict[str, float], es: EarlyStopping, has_val: bool) -> None:
        name = monitored(es.monitor, has_val)
        if better(metrics[name], self.best, metric_mode(name), es.min_delta):
            self.best, self.wait = metrics[name], 0
        else:
            self.wait += 1
            if self.wait >= es.patience:
                self.stop = True

    def to_meta(self) -> dict[str, Any]:
        # "stop" only once set: checkpoints written before these classes have it so
        meta: dict[str, Any] = {"best": self.best, "wait": self.wait}
        if self.stop:
            meta["stop"] = True
        return meta

    @classmethod
    def from_meta(cls, d: dict[str, Any]) -> EarlyStoppingState:
        return cls(d["best"], d["wait"], bool(d.get("stop", False)))


@dataclass
class Monitors:
    """What one run's epochs record and watch, fixed by its spec and whether it has
    validation rows."""

    keys: list[str]  # the history keys
    best: str  # the checkpoint monitor
    tie: str  # breaks its ties
    has_val: bool


@dataclass
class TrainerState:
    """What a checkpoint's `trainer` metadata holds: enough to resume the epoch logic."""

    best: BestSoFar = field(default_factory=BestSoFar)
    early: EarlyStoppingState = field(default_factory=EarlyStoppingState)
    plateau: PlateauState = field(default_factory=PlateauState)

    def update(self, t: TrainingSpec, metrics: dict[str, float], epoch: int,
               mon: Monitors) -> None:
        """Best checkpoint, reduce-on-plateau and early stopping after one epoch."""
        self.best.update(metrics, epoch, mon.best, mon.tie)
        if isinstance(t.lr_schedule, PlateauSchedule):
            self.plateau.update(metrics, t.lr_schedule, t.optimizer.lr, mon.has_val)
        if t.early_stopping is not None:
            self.early.update(metrics, t.early_stopping, mon.has_val)

    def to_meta(self) -> dict[str, Any]:
        return {"best": self.best.to_meta(), "early_stopping": self.early.to_meta(),
                "plateau": self.plateau.to_meta()}

    @classmethod
    def from_meta(cls, d: dict[str, Any]) -> TrainerState:
        return cls(BestSoFar.from_meta(d["best"]),
                   EarlyStoppingState.from_meta(d["early_stopping"]),
                   PlateauState.from_meta(d["plateau"]))


class ModelState:
    """One stacked model's bookkeeping: its seed (and the spec with it), split, batch-order
    generator, history, trainer state, and how it stopped."""

    def __init__(self, seed: int, job: ResolvedJob, y: np.ndarray) -> None:
        t = job.spec.training
        self.seed = seed
        self.spec: JobSpec = job.spec.model_copy(
            update={"training": t.model_copy(update={"seed": seed})})
        self.train_idx, self.val_idx = split(y, validation_split=t.validation_split,
                                             how=t.split, seed=seed)
        self.data_gen = torch.Generator().manual_seed(seed)
        self.history: dict[str, list[float]] = {}
        self.trainer = TrainerState()
        self.last_metrics: dict[str, float] = {}
        self.epochs_run = 0
        # stopped: no more callbacks or records, for any of the reasons after it
        self.stopped = self.stopped_early = self.cancelled = False
        self.diverged: TrainingDiverged | None = None
