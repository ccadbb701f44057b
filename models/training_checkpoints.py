"""The training loop's checkpoints (format: models.checkpoint): model k's "last" and "best" out
of the stack, and K "last" ones back into it to resume.

A stacked model's weights and optimizer state are rows of (K, ...) tensors: a checkpoint holds
model k's rows as an ordinary single-model state, so it is the same whatever K trained it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from models import checkpoint as ckpt
from models.resolution import ResolvedNetwork
from models.stacked import StackedNetwork
from models.training_state import ModelState, TrainerState


@dataclass
class _PendingBest:
    """A best epoch whose blob is not built yet; its weights are in the snapshot."""

    epoch: int
    metrics: dict[str, float]
    trainer: dict[str, Any]  # the trainer state of that epoch, as checkpoint metadata


class TrainingCheckpoints:
    """Encodes and restores the checkpoints of one loop's K models, and keeps each one's
    latest "last" and "best" blob."""

    def __init__(self, net: ResolvedNetwork, classes: list[str], model: StackedNetwork,
                 opt: torch.optim.Optimizer, models: list[ModelState],
                 standard: tuple[np.ndarray, np.ndarray] | None) -> None:
        self.net, self.classes, self.model, self.opt = net, classes, model, opt
        self.models, self.standard = models, standard
        k = len(models)
        self.last: list[bytes | None] = [None] * k
        self._best: list[bytes | None] = [None] * k
        self._pending: list[_PendingBest | None] = [None] * k
        self._best_state: dict[str, torch.Tensor] | None = None  # see snapshot_best

    def _meta(self, k: int, kind: str, epoch: int, metrics: dict[str, float],
              trainer: dict[str, Any] | None = None) -> dict[str, Any]:
        m = self.models[k]
        return {"kind": kind, "epoch": epoch, "seed": m.seed,
                "spec": m.spec.model_dump(mode="json"),
                "network": ckpt.network_to_meta(self.net), "classes": self.classes,
                "metrics": metrics, "trainer": trainer or m.trainer.to_meta()}

    def inputs(self, k: int) -> dict[str, torch.Tensor] | None:
        """Model k's input standardisation as checkpoint tensors, shaped to broadcast over one
        row: (F,) for tables, (C, 1, 1) for images (whose statistics are per channel)."""
        if self.standard is None:
            return None
        shape = self.net.input_shape
        view = (shape[0], 1, 1) if len(shape) == 3 else shape
        mean, std = self.standard
        first = (slice(None), *[0] * (len(shape) - 1))  # one value per channel
        return {name: torch.as_tensor(v[k].reshape(shape)[first].reshape(view),
                                      dtype=torch.float32)
                for name, v in (("mean", mean), ("std", std))}

    # ------------------------------------------------------------------ "last"

    def last_blob(self, k: int, epoch: int) -> bytes:
        """Model k's "last" checkpoint now: weights, optimizer state and batch-order RNG."""
        optim: dict[str, torch.Tensor] = {}
        for name, v in self.opt.state.get(self.model.flat, {}).items():
            if not isinstance(v, torch.Tensor):
                continue
            if name == "step":
                optim["step"] = v.detach().clone()
                continue
            for key in self.model.layout:  # (K, row) state -> model k's tensor per parameter
                optim[f"{key}.{name}"] = self.model.slot(key, v, k)
        meta = self._meta(k, "last", epoch, self.models[k].last_metrics)
        return ckpt.encode(meta, self.model.model_state(k), optim,
                           {"data": self.models[k].data_gen.get_state()}, self.inputs(k))

    def write_last(self, k: int, epoch: int) -> bytes:
        """last_blob, kept as model k's latest."""
        blob = self.last[k] = self.last_blob(k, epoch)
        return blob

    # ------------------------------------------------------------------ "best"

    def write_best(self, k: int, epoch: int, metrics: dict[str, float]) -> bytes:
        """Model k's "best" checkpoint from its current weights, built now."""
        blob = ckpt.encode(self._meta(k, "best", epoch, metrics), self.model.model_state(k),
                           inputs=self.inputs(k))
        self._best[k], self._pending[k] = blob, None
        return blob

    def defer_best(self, k: int, epoch: int, metrics: dict[str, float]) -> None:
        """Model k's current weights are its best: built by best_blob, from the weights
        snapshot_best keeps (call it for k before the weights change)."""
        self._pending[k] = _PendingBest(epoch, dict(metrics), self.models[k].trainer.to_meta())

    @torch.no_grad()
    def snapshot_best(self, ks: list[int]) -> None:
        """Keep models `ks`' current weights as their best, for blobs built later: a few
        row copies per epoch instead of a checkpoint per model per improvement."""
        state = self.model.stacked_state()
        if self._best_state is None:
            self._best_state = {key: t.detach().clone() for key, t in state.items()}
            return
        idx = torch.as_tensor(ks, device=self.model.flat.device)
        for key, t in state.items():
            self._best_state[key].index_copy_(0, idx, t.detach().index_select(0, idx))

    def best_blob(self, k: int) -> bytes | None:
        """Model k's latest "best" checkpoint (built now if it was deferred), or None."""
        pending = self._pending[k]
        if pending is None or self._best_state is None:
            return self._best[k]
        weights = {key: t[k].to("cpu", copy=True).contiguous()
                   for key, t in self._best_state.items()}
        self._best[k] = ckpt.encode(
            self._meta(k, "best", pending.epoch, pending.metrics, pending.trainer), weights,
            inputs=self.inputs(k))
        self._pending[k] = None
        return self._best[k]

    # ------------------------------------------------------------------ resume

    def restore(self, blobs: Sequence[bytes]) -> int:
        """Load K "last" checkpoints into the stack, its optimizer and the models' states;
        returns the epoch they end at."""
        if len(blobs) != len(self.models):
            raise ValueError(f"{len(blobs)} checkpoints to resume {len(self.models)} models")
        cps = [ckpt.decode(b) for b in blobs]
        want = ckpt.network_to_meta(self.net)
        for c, m in zip(cps, self.models, strict=True):
            if c.meta.get("kind") != "last" or "data" not in c.rng:
                raise ckpt.CheckpointError("resume needs a 'last' checkpoint (a 'best' one has "
                                           "no optimizer or RNG state)")
            if c.meta["network"] != want:
                raise ckpt.CheckpointError("the checkpoint was trained on a different network "
                                           "or dataset shape than this job describes")
            m.data_gen.set_state(c.rng["data"])
            m.trainer = TrainerState.from_meta(c.meta["trainer"])
            m.last_metrics = c.meta["metrics"]
        epochs = {int(c.meta["epoch"]) for c in cps}
        if len(epochs) != 1:
            raise ValueError("stacked models resume from checkpoints of one epoch")
        self.model.load_model_states([c.model for c in cps])
        self._load_optimizer_state(cps)
        return epochs.pop()

    def _load_optimizer_state(self, cps: list[ckpt.Checkpoint]) -> None:
        """Model k's state per parameter into row k of the flat tensor's (K, row) state."""
        flat = self.model.flat
        entry: dict[str, torch.Tensor] = {}
        if "step" in cps[0].optim:
            entry["step"] = cps[0].optim["step"]
        names = {key.rsplit(".", 1)[1] for key in cps[0].optim if key != "step"}
        for name in names:
            padded = torch.zeros_like(flat)
            for k, c in enumerate(cps):
                for key in self.model.layout:
                    self.model.slot(key, padded, k).copy_(c.optim[f"{key}.{name}"])
            entry[name] = padded
        state = {0: entry} if entry else {}
        groups = self.opt.state_dict()["param_groups"]
        self.opt.load_state_dict({"state": state, "param_groups": groups})
