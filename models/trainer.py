"""The training loop: K independent models of one architecture in one loop; a job is K = 1.

Keras-shaped history (`loss`, `accuracy`, `val_loss`, `val_accuracy`, `lr`): training metrics are
the row-weighted mean over the epoch's batches in training mode (what Keras's progress bar and
history report), validation metrics come from eval mode (running statistics). Metrics accumulate
on the device and are read once per epoch; batches are slices of a per-model index permutation.
Side effects (persistence, cancellation) reach the loop only through `TrainingCallbacks`.

Stacked models are independent: each has its own split, batch order, dropout masks, best
checkpoint and early stopping, and each stops on its own (its callback's cancel, its early
stopping, or for K > 1 its loss diverging). Model k's results equal what its seed gives alone
within float rounding (see models.stacked).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from models.datasets import Table
from models.optim import fast_backward, fast_step, make_optimizer, scheduled_lr
from models.resolution import ResolvedJob
from models.spec import PlateauSchedule, TrainingSpec
from models.stacked import (
    LAYOUT_WARNING,
    StackedNetwork,
    _BatchNorm,
    dropout_keys,
    stacked_network,
)
from models.training_checkpoints import TrainingCheckpoints
from models.training_state import ModelState, Monitors, monitored

HISTORY_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy", "lr")
TRAIN_MODE_VAL_KEYS = ("train_mode_val_loss", "train_mode_val_accuracy")
_EVAL_CHUNK = 8192
# An epoch's rows are gathered in one op (and batches sliced from them) when they take at most
# this many float32 elements (16 MiB), else per step: a per-step gather is an op or three more
# per step, which on small models is a few percent of it.
_EPOCH_GATHER = 1 << 22


@dataclass
class EpochRecord:
    epoch: int  # 1-based
    metrics: dict[str, float]  # HISTORY_KEYS (+ TRAIN_MODE_VAL_KEYS if asked); NaN allowed
    wall_time: float  # seconds of training + evaluation for this epoch
    extras: dict[str, Any]  # JSON-able: "bn" layer stats, "notes", "steps", "train_rows"
    checkpoints: dict[str, bytes] = field(default_factory=dict)  # {"last"?, "best"?} this epoch


class TrainingCallbacks:
    """Hooks the loop calls for one model; every default is a no-op. Override what you need."""

    def on_epoch_end(self, record: EpochRecord) -> None:
        """After each of this model's epochs, with its metrics and the checkpoints written."""

    def should_stop(self) -> bool:
        """Cooperative cancel of this model alone, asked once per epoch after its metrics and
        before its checkpoints: true makes that epoch its last (recorded, with a "last")."""
        return False


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or inf; the message names the epoch."""

    def __init__(self, message: str, *, epoch: int = 0, loss: float = float("nan")) -> None:
        super().__init__(message)
        self.epoch, self.loss = epoch, loss


@dataclass
class TrainingResult:
    history: dict[str, list[float]]  # epochs start_epoch..epochs_run of this call
    epochs_run: int  # this model's last recorded epoch (absolute, counts resumed epochs)
    stopped_early: bool  # its early stopping fired at epochs_run
    cancelled: bool  # its callback's should_stop() was true at epochs_run
    best_epoch: int | None
    best_metrics: dict[str, float]
    final_metrics: dict[str, float]
    notes: list[str]
    start_epoch: int = 1
    seed: int = 0
    # "last" from epochs_run (for a diverged model: the last one its callback got, if any)
    # and "best"
    checkpoints: dict[str, bytes] = field(default_factory=dict)
    # K > 1 only: this model's loss became NaN/inf at diverged.epoch (epochs_run + 1) and it
    # stopped there alone, nothing of that epoch recorded. K = 1 raises TrainingDiverged.
    diverged: TrainingDiverged | None = None


# ---------------------------------------------------------------------------- helpers


def _summary(values: np.ndarray) -> list[dict[str, Any]]:
    """Per row of a (K, C) array: mean/min/max (and the values when there are few)."""
    means, mins, maxs = values.mean(1).tolist(), values.min(1).tolist(), values.max(1).tolist()
    rows = values.tolist() if values.shape[1] <= 64 else None
    out: list[dict[str, Any]] = []
    for k in range(values.shape[0]):
        d: dict[str, Any] = {"mean": means[k], "min": mins[k], "max": maxs[k]}
        if rows is not None:
            d["values"] = rows[k]
        out.append(d)
    return out


def input_standardization(table: Table, train_idx: Sequence[np.ndarray]
                          ) -> tuple[np.ndarray, np.ndarray]:
    """(K, n_features) float64 mean and std per model, fitted on its training rows only: per
    feature for a table, per channel (over the rows and pixels) for images, broadcast back
    to every feature. A constant feature or channel gets std 1 (it is only centred)."""
    means, stds = [], []
    cache: dict[bytes, tuple[np.ndarray, np.ndarray]] = {}
    for idx in train_idx:
        key = np.asarray(idx).tobytes()
        if key not in cache:
            x = table.X[np.asarray(idx)].astype(np.float64)
            axes = (0, 2, 3) if x.ndim == 4 else (0,)
            mean, std = x.mean(axis=axes, keepdims=True), x.std(axis=axes, keepdims=True)
            std = np.where(std > 0, std, 1.0)
            full = (1, *table.input_shape)
            cache[key] = (np.broadcast_to(mean, full).reshape(-1),
                          np.broadcast_to(std, full).reshape(-1))
        means.append(cache[key][0])
        stds.append(cache[key][1])
    return np.stack(means), np.stack(stds)


# ---------------------------------------------------------------------------- the loop


class _Loop:
    def __init__(self, job: ResolvedJob, table: Table, seeds: Sequence[int],
                 device: torch.device) -> None:
        net, t = job.network, job.spec.training
        if table.input_shape != net.input_shape:
            raise ValueError(f"the table's rows are {table.input_shape}; the network expects "
                             f"{net.input_shape}")
        if len(seeds) < 1:
            raise ValueError("train_many needs at least one seed")
        if len(seeds) > 1 and isinstance(t.lr_schedule, PlateauSchedule):
            raise ValueError("reduce_on_plateau sets a learning rate per model: train such jobs "
                             "one seed at a time (K = 1)")
        self.job, self.net, self.t, self.device, self.table = job, net, t, device, table
        self.k = len(seeds)
        self.seeds = list(seeds)
        self.models = [ModelState(s, job, table.y) for s in seeds]
        self.binary = net.output_units == 1
        self.d = table.n_features
        # per model: the input standardisation fitted on its training rows, or None
        self.standard = input_standardization(table, [m.train_idx for m in self.models]) \
            if t.standardize else None
        self.scale_per_step = False
        self.X = torch.as_tensor(self._standardized(table)).to(device)
        self.y = torch.as_tensor(table.y, dtype=torch.int64).to(device)
        # features and the float label side by side: one gather per step fetches both
        self.Xy = torch.cat([self.X, self.y.to(torch.float32).unsqueeze(1)], dim=1)
        self.train_idx = torch.as_tensor(np.stack([m.train_idx for m in self.models])).to(device)
        self.val_idx = torch.as_tensor(np.stack([m.val_idx for m in self.models])).to(device)
        self.n_train, self.n_val = self.train_idx.shape[1], self.val_idx.shape[1]
        self.model: StackedNetwork = stacked_network(net, seeds=seeds, init=t.init,
                                                     device=device, init_scale=t.init_scale)
        self.opt = make_optimizer([self.model.flat], t.optimizer)
        self.step = fast_step(self.opt)
        self.backward = fast_backward()
        self.notes: list[str] = []
        bs = t.batch_size
        self.n_used = self.n_train
        if self.model.has_batchnorm and self.n_train % bs == 1 and self.n_train > 1:
            self.n_used = self.n_train - 1
            self.notes.append(
                f"the last training batch of every epoch would hold 1 row ({self.n_train} rows, "
                f"batch_size {bs}); BatchNorm cannot use batch statistics of one row, so that "
                f"row is dropped each epoch ({self.n_used} rows trained on)")
        self.bn_modules = [(i, m) for i, m in enumerate(self.model.layers)
                           if isinstance(m, _BatchNorm)]
        bn_names = [r.name for r in net.summary() if r.type == "batchnorm"]
        self.bn_names = dict(zip([i for i, _ in self.bn_modules], bn_names, strict=True))
        self.checkpoints = TrainingCheckpoints(net, table.classes, self.model, self.opt,
                                               self.models, self.standard)
        # the gradient of sum_k loss_k, without a sum op and its backward node per step
        self.ones = torch.ones(self.k, device=device)

    def _standardized(self, table: Table) -> np.ndarray:
        """The (rows, features) float32 inputs, standardised once when every model has the
        same statistics; else each model's are applied per step (`scale_per_step`)."""
        X = np.ascontiguousarray(table.X.reshape(table.n_rows, self.d), dtype=np.float32)
        if self.standard is None:
            return X
        mean, std = self.standard
        if self.k == 1 or bool((mean == mean[:1]).all() and (std == std[:1]).all()):
            one: np.ndarray = ((X - mean[0]) / std[0]).astype(np.float32)  # once, not per step
            return one
        # models with their own training rows: their own statistics, per step
        self.scale_per_step = True
        self.shift = torch.as_tensor(mean, dtype=torch.float32).to(self.device)[:, None, :]
        self.inv_std = torch.as_tensor(1.0 / std, dtype=torch.float32).to(self.device)[:, None, :]
        return X

    # ------------------------------------------------------------------ metrics

    def _loss_and_correct(self, logits: torch.Tensor, yb: torch.Tensor
                          ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-model mean loss (K,) and correct-prediction counts (K,); `yb` is (K, B) float."""
        if self.binary:
            z = logits.squeeze(-1)
            b = z.shape[1]
            # Rows padded to a multiple of 32 so that no element falls in the fused loss
            # kernel's scalar tail, which rounds differently from its vector loop: a model's
            # loss and gradient are then bitwise the same whatever K is.
            pad = -b % 32
            if pad:
                loss = F.binary_cross_entropy_with_logits(
                    F.pad(z, (0, pad)), F.pad(yb, (0, pad)), reduction="none")[:, :b]
            else:
                loss = F.binary_cross_entropy_with_logits(z, yb, reduction="none")
            return loss.mean(1), ((z > 0) == (yb > 0.5)).sum(1)
        labels = yb.long()
        loss = F.cross_entropy(logits.transpose(1, 2), labels, reduction="none").mean(1)
        return loss, (logits.argmax(-1) == labels).sum(1)

    def _batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self.Xy.index_select(0, idx.reshape(-1)).view(*idx.shape, self.d + 1)
        if self.scale_per_step:
            return (rows[..., :self.d] - self.shift) * self.inv_std, rows[..., self.d]
        return rows[..., :self.d], rows[..., self.d]

    @torch.no_grad()
    def _evaluate(self, mode: str, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean loss, accuracy) per model over the validation rows, on the device."""
        loss_sum = torch.zeros(self.k, dtype=torch.float64, device=self.device)
        correct = torch.zeros(self.k, dtype=torch.int64, device=self.device)
        starts = list(range(0, self.n_val, chunk))
        if len(starts) > 1 and self.n_val - starts[-1] == 1:
            starts.pop()  # batch statistics of one row are undefined: merge it into the previous
        for i, s in enumerate(starts):
            end = starts[i + 1] if i + 1 < len(starts) else self.n_val
            xb, yb = self._batch(self.val_idx[:, s:end])
            loss, c = self._loss_and_correct(self.model(xb, mode), yb)
            loss_sum.add_(loss, alpha=end - s)
            correct.add_(c)
        return loss_sum / self.n_val, correct.double() / self.n_val

    def bn_extras(self) -> list[list[dict[str, Any]]]:
        """Per model, per BN layer: running mean/var and gamma/beta summaries (one host read)."""
        if not self.bn_modules:
            return [[] for _ in range(self.k)]
        parts, layout = [], []
        for i, m in self.bn_modules:
            for name, t in (("running_mean", m.running_mean), ("running_var", m.running_var),
                            ("gamma", m.p("weight")), ("beta", m.p("bias"))):
                if t is not None:
                    parts.append(t.detach().float())
                    layout.append((i, name, t.shape[1]))
        host = torch.cat(parts, dim=1).cpu().numpy()
        layers: list[list[dict[str, Any]]] = [
            [{"name": self.bn_names[i], "module": i, "running_mean": None,
              "running_var": None, "gamma": None, "beta": None} for i, _ in self.bn_modules]
            for _ in range(self.k)]
        pos = {i: n for n, (i, _) in enumerate(self.bn_modules)}
        col = 0
        for i, name, width in layout:  # vectorised over models: one summary call per tensor
            for k, summary in enumerate(_summary(host[:, col:col + width])):
                layers[k][pos[i]][name] = summary
            col += width
        return layers

    # ------------------------------------------------------------------ one epoch

    def run_epoch(self, epoch: int) -> torch.Tensor:
        """Train one epoch; returns the (rows x K) float64 metric matrix still on the device."""
        t, model, k = self.t, self.model, self.k
        lr = scheduled_lr(t, epoch, self.models[0].trainer.plateau.lr)
        for group in self.opt.param_groups:
            group["lr"] = lr
        if t.shuffle:
            # one CPU generator per model (its own stream, saved in its checkpoint); a K-long
            # loop, but once per epoch and cheap next to the epoch's steps
            perm = torch.stack([torch.randperm(self.n_train, generator=m.data_gen)
                                for m in self.models]).to(self.device, non_blocking=True)
            order = self.train_idx.gather(1, perm)
        else:
            order = self.train_idx
        noise = None
        if model.has_dropout:
            steps = _steps(self.n_used, t.batch_size)
            noise = dropout_keys(self.seeds, epoch, steps).to(self.device, non_blocking=True)
        model.train()
        loss_sum = torch.zeros(k, dtype=torch.float64, device=self.device)
        correct = torch.zeros(k, dtype=torch.int64, device=self.device)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=LAYOUT_WARNING)
            self._train_steps(order, noise, loss_sum, correct)
        model.eval()
        rows = [loss_sum / self.n_used, correct.double() / self.n_used]
        if self.n_val:
            rows += list(self._evaluate("eval", _EVAL_CHUNK))
            if t.record_train_mode_val:
                rows += list(self._evaluate("batch_stats", t.batch_size))
        return torch.stack(rows)

    def _train_steps(self, order: torch.Tensor, noise: torch.Tensor | None,
                     loss_sum: torch.Tensor, correct: torch.Tensor) -> None:
        model, bs, n = self.model, self.t.batch_size, self.n_used
        epoch_rows = None
        if order.numel() * (self.d + 1) <= _EPOCH_GATHER:
            epoch_rows = self._batch(order[:, :n])
        for i, s in enumerate(range(0, n, bs)):
            e = min(s + bs, n)
            if epoch_rows is not None:
                xb, yb = epoch_rows[0][:, s:e], epoch_rows[1][:, s:e]
            else:
                xb, yb = self._batch(order[:, s:e])
            loss, c = self._loss_and_correct(
                model.forward(xb, "train", noise[i] if noise is not None else None), yb)
            model.zero_grad_flat()
            # models share no parameter: each gets its own gradient (that of sum_k loss_k)
            self.backward(loss, self.ones)
            self.step()
            loss_sum.add_(loss.detach(), alpha=xb.shape[1])  # float64 accumulators
            correct.add_(c)


def _steps(n_used: int, bs: int) -> int:
    return math.ceil(n_used / bs)


def train_many(job: ResolvedJob, table: Table, *, seeds: Sequence[int], device: torch.device,
               callbacks: Sequence[TrainingCallbacks | None] | None = None,
               resume_from: Sequence[bytes] | None = None,
               checkpoint_every: int = 1,
               checkpoint_interval_s: float | None = None) -> list[TrainingResult]:
    """Train one model per seed, stacked in one loop; result k is what seed k alone would give
    (within float rounding).

    `checkpoint_every` N: a "last" checkpoint every N epochs and at each model's final one (0:
    final only); with `checkpoint_interval_s`, such an epoch gets one only if that many seconds
    passed since the previous "last" (the run's first is always written): large models write at
    most that often. A "best" one whenever the monitored metric improves. Checkpoints go to
    models with a callback as they happen; the others get theirs once, in
    `TrainingResult.checkpoints`.

    Each model stops on its own: its callback's should_stop(), its early stopping, or (K > 1)
    a NaN/inf training loss (`TrainingResult.diverged`; K = 1 raises TrainingDiverged). A
    stopped model gets no more callbacks and nothing more recorded; it may go on computing in
    the stack. The loop ends when every model stopped or the epochs ran out. `resume_from`:
    one "last" blob per seed, all of one epoch.
    """
    loop = _Loop(job, table, seeds, device)
    t = job.spec.training
    cbs: list[TrainingCallbacks | None] = \
        list(callbacks) if callbacks is not None else [None] * loop.k
    if len(cbs) != loop.k:
        raise ValueError(f"{len(cbs)} callbacks for {loop.k} seeds")
    start = 1 + (loop.checkpoints.restore(resume_from) if resume_from is not None else 0)
    for m in loop.models:
        m.epochs_run = start - 1
    mon = _monitors(t, has_val=loop.n_val > 0)
    clock = _LastClock(checkpoint_every, checkpoint_interval_s)
    for epoch in range(start, t.epochs + 1):
        _epoch(loop, cbs, epoch, mon, clock)
        if all(m.stopped for m in loop.models):
            break
    return [_result(loop, k, mon.keys, start) for k in range(loop.k)]


def _monitors(t: TrainingSpec, *, has_val: bool) -> Monitors:
    keys = list(HISTORY_KEYS) + (list(TRAIN_MODE_VAL_KEYS) if t.record_train_mode_val else [])
    return Monitors(keys=keys, best=monitored(t.checkpoint_monitor, has_val),
                    tie="val_loss" if has_val else "loss", has_val=has_val)


@dataclass
class _LastClock:
    """Which epochs get a periodic "last" checkpoint: every `every` epochs (0: none), and with
    `interval_s` only once that many seconds passed since the previous "last" written."""

    every: int
    interval_s: float | None
    # None: the run's first periodic epoch is checkpointed whatever the interval, so a job
    # that shows any epoch also has a "last" checkpoint to predict and draw with.
    written: float | None = None

    def due(self, epoch: int) -> bool:
        return bool(self.every and epoch % self.every == 0 and (
            self.interval_s is None or self.written is None
            or time.monotonic() - self.written >= self.interval_s))

    def wrote(self) -> None:
        self.written = time.monotonic()


@dataclass
class _EpochEnd:
    """What one epoch's models share when their results are recorded."""

    epoch: int
    lr: float
    wall: float  # seconds of training + evaluation
    bn: list[list[dict[str, Any]]] | None  # per model; None when no live model has a callback
    periodic: bool  # a periodic "last" checkpoint is due


def _epoch(loop: _Loop, cbs: list[TrainingCallbacks | None], epoch: int, mon: Monitors,
           clock: _LastClock) -> None:
    """Train one epoch and record it for each model still running."""
    t0 = time.perf_counter()
    values = loop.run_epoch(epoch).cpu().numpy().T.tolist()  # the one host read; [k][row]
    lr = float(loop.opt.param_groups[0]["lr"])
    live = [k for k, m in enumerate(loop.models) if not m.stopped]
    bn = loop.bn_extras() if any(cbs[k] is not None for k in live) else None
    end = _EpochEnd(epoch, lr, time.perf_counter() - t0, bn, clock.due(epoch))
    deferred: list[int] = []  # models whose best is these weights, built later
    for k in live:
        col = values[k]
        if not math.isfinite(col[0]):
            _diverge(loop, k, epoch, col[0])
        elif _record(loop, k, cbs[k], col, end, mon):
            deferred.append(k)
    if deferred:
        loop.checkpoints.snapshot_best(deferred)
    if end.periodic or any(loop.models[k].stopped for k in live):
        clock.wrote()


def _diverge(loop: _Loop, k: int, epoch: int, loss: float) -> None:
    """Model k's training loss is NaN/inf: K = 1 raises, else it stops there alone."""
    m = loop.models[k]
    who = f" (model with seed {m.seed})" if loop.k > 1 else ""
    exc = TrainingDiverged(
        f"training diverged at epoch {epoch}{who}: the training loss is {loss}; "
        "lower the learning rate, scale the inputs or add normalisation",
        epoch=epoch, loss=loss)
    if loop.k == 1:
        raise exc
    m.diverged, m.stopped = exc, True


def _record(loop: _Loop, k: int, cb: TrainingCallbacks | None, col: list[float],
            end: _EpochEnd, mon: Monitors) -> bool:
    """Model k's epoch: history, trainer state, whether it stops, its checkpoints and its
    callback. True when its best is this epoch's weights, to snapshot (it has no callback)."""
    t, m, epoch = loop.t, loop.models[k], end.epoch
    metrics = _metrics(col, end.lr, mon.has_val, t.record_train_mode_val)
    m.last_metrics, m.epochs_run = metrics, epoch
    for key in mon.keys:
        m.history.setdefault(key, []).append(metrics[key])
    m.trainer.update(t, metrics, epoch, mon)
    m.stopped_early = m.trainer.early.stop
    m.cancelled = cb is not None and cb.should_stop()
    m.stopped = epoch == t.epochs or m.stopped_early or m.cancelled
    blobs: dict[str, bytes] = {}
    deferred = False
    if m.trainer.best.epoch == epoch:
        if cb is not None:
            blobs["best"] = loop.checkpoints.write_best(k, epoch, metrics)
        else:
            loop.checkpoints.defer_best(k, epoch, metrics)
            deferred = True
    if m.stopped or (cb is not None and end.periodic):
        blobs["last"] = loop.checkpoints.write_last(k, epoch)
    if cb is not None:
        extras = {"bn": end.bn[k] if end.bn is not None else [], "notes": list(loop.notes),
                  "steps": _steps(loop.n_used, t.batch_size), "train_rows": loop.n_used}
        cb.on_epoch_end(EpochRecord(epoch, dict(metrics), end.wall, extras, blobs))
    return deferred

def _metrics(col: list[float], lr: float, has_val: bool, train_mode_val: bool
             ) -> dict[str, float]:
    nan = float("nan")
    metrics = {"loss": col[0], "accuracy": col[1], "val_loss": col[2] if has_val else nan,
               "val_accuracy": col[3] if has_val else nan, "lr": lr}
    if train_mode_val:
        metrics["train_mode_val_loss"] = col[4] if has_val else nan
        metrics["train_mode_val_accuracy"] = col[5] if has_val else nan
    return metrics




def _result(loop: _Loop, k: int, keys: list[str], start: int) -> TrainingResult:
    m, cps = loop.models[k], loop.checkpoints
    blobs: dict[str, bytes] = {}
    last = cps.last[k]
    if last is not None:
        blobs["last"] = last
    elif m.diverged is None:  # no epoch ran (resumed at the end): the resumed state
        blobs["last"] = cps.last_blob(k, m.epochs_run)
    best = cps.best_blob(k)
    if best is not None:
        blobs["best"] = best
    b = m.trainer.best
    return TrainingResult(
        history={key: m.history.get(key, []) for key in keys}, epochs_run=m.epochs_run,
        stopped_early=m.stopped_early, cancelled=m.cancelled, best_epoch=b.epoch,
        best_metrics=dict(b.metrics), final_metrics=dict(m.last_metrics),
        notes=list(loop.notes), start_epoch=start, seed=m.seed, checkpoints=blobs,
        diverged=m.diverged)


def train_job(job: ResolvedJob, table: Table, *, device: torch.device,
              callbacks: TrainingCallbacks | None = None, resume_from: bytes | None = None,
              checkpoint_every: int = 1,
              checkpoint_interval_s: float | None = None) -> TrainingResult:
    """One model: train_many with K = 1 and the spec's seed."""
    return train_many(job, table, seeds=[job.spec.training.seed], device=device,
                      callbacks=[callbacks] if callbacks is not None else None,
                      resume_from=[resume_from] if resume_from is not None else None,
                      checkpoint_every=checkpoint_every,
                      checkpoint_interval_s=checkpoint_interval_s)[0]
