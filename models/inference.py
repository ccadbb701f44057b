"""Eval-mode inference and a Keras-style model report from a checkpoint blob.

Only ordinary modules here: a checkpoint is a plain `nn.Sequential` state dict, so nothing of
the stacked trainer is needed. The model runs in eval mode (BatchNorm uses its running
statistics), so a row's prediction does not depend on the other rows of the request.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from models.checkpoint import Checkpoint, decode
from models.network import Standardize, apply_head, build_network, fold_batchnorm
from models.spec import BatchNormLayer


class InferenceInputError(ValueError):
    """Rows the model cannot take: wrong width, NaN/inf, not numbers."""


@dataclass(frozen=True)
class Prediction:
    classes: list[str]  # predicted label per row
    probabilities: list[list[float]]  # per row, one probability per class (order: class_names)
    class_names: list[str]


class Predictor:
    def __init__(self, model: torch.nn.Module, classes: list[str], input_shape: tuple[int, ...],
                 device: torch.device, meta: dict[str, Any]) -> None:
        self.model = model.to(device).eval()
        self.classes = classes
        self.input_shape = tuple(input_shape)
        self.device = device
        self.meta = meta

    @property
    def n_features(self) -> int:
        return math.prod(self.input_shape)

    def _expected(self) -> str:
        if len(self.input_shape) == 1:
            return f"a list of rows of {self.n_features} numbers each"
        shape = list(self.input_shape)
        also = f" (or {shape[1:]} for one channel)" if shape[0] == 1 else ""
        return f"a list of images, each shaped {shape}{also}"

    def _rows(self, rows: Sequence[Any] | np.ndarray) -> np.ndarray:
        shape = self.input_shape
        try:
            x = np.asarray(rows, dtype=np.float64)
        except (TypeError, ValueError):
            if len(shape) == 1:
                raise InferenceInputError(
                    f"rows must be a list of lists of {self.n_features} numbers each") from None
            raise InferenceInputError(f"inputs must be {self._expected()}, numbers only; "
                                      "they are ragged or not numeric") from None
        if len(shape) == 1 and (x.ndim != 2 or x.shape[1] != self.n_features):
            width = x.shape[1] if x.ndim == 2 else "a ragged or non-tabular number of"
            raise InferenceInputError(f"each row needs {self.n_features} features (the model's "
                                      f"input width); got {width} values per row")
        if len(shape) == 3 and shape[0] == 1 and x.shape[1:] == shape[1:]:
            x = x[:, None]  # grayscale images given without their channel axis
        if x.ndim != 1 + len(shape) or x.shape[1:] != shape:
            got = list(x.shape[1:]) if x.ndim > 1 else "a flat list"
            raise InferenceInputError(f"each input must have shape {list(shape)} (the "
                                      f"dataset's); got {got}: send {self._expected()}")
        bad = ~np.isfinite(x)
        if bad.any():
            raise InferenceInputError(f"{self._where(x, bad)} is {x[tuple(np.argwhere(bad)[0])]}:"
                                      " inputs must be finite numbers (no NaN or inf)")
        too_big = np.abs(x) > np.finfo(np.float32).max
        if too_big.any():
            raise InferenceInputError(f"{self._where(x, too_big)} "
                                      f"({x[tuple(np.argwhere(too_big)[0])]}) overflows float32")
        return x.astype(np.float32)

    @staticmethod
    def _where(x: np.ndarray, mask: np.ndarray) -> str:
        at = [int(i) for i in np.argwhere(mask)[0]]
        if x.ndim == 2:
            return f"row {at[0]}, feature {at[1]}"
        return f"input {at[0]}, value {at[1:]} (channel, y, x)"

    def predict(self, rows: Sequence[Any] | np.ndarray) -> Prediction:
        if len(rows) == 0:
            return Prediction([], [], list(self.classes))
        x = torch.from_numpy(self._rows(rows)).to(self.device)
        with torch.inference_mode():
            probs = apply_head(self.model(x)).cpu().numpy().astype(np.float64)
        labels = [self.classes[i] for i in probs.argmax(axis=1)]
        return Prediction(labels, probs.tolist(), list(self.classes))


def serving_network(cp: Checkpoint, *, fold_bn: bool) -> torch.nn.Sequential:
    """The checkpoint's eval-mode network (BN folded when asked), its input standardisation
    (`training.standardize`) in front: raw inputs -> logits."""
    model = build_network(cp.network, seed=0)  # weights are overwritten by the checkpoint
    model.load_state_dict(cp.model, strict=True)
    model.eval()
    if fold_bn:
        model = fold_batchnorm(model)
    if cp.input:
        model = torch.nn.Sequential(Standardize(cp.input["mean"], cp.input["std"]), *model)
    return model.eval()


def load_predictor(blob: bytes, *, classes: list[str] | None = None,
                   device: torch.device | None = None) -> Predictor:
    """An eval-mode predictor; `classes` overrides the label names stored in the checkpoint."""
    cp = decode(blob)
    net = cp.network
    # serving only: BN's affine map joins a dense or conv layer
    model = serving_network(cp, fold_bn=True)
    names = list(classes) if classes is not None else [str(c) for c in cp.meta["classes"]]
    n_out = max(net.output_units, 2)
    if len(names) != n_out:
        raise ValueError(f"{len(names)} class names for a model with {n_out} classes")
    return Predictor(model, names, net.input_shape, device or torch.device("cpu"), cp.meta)


def model_report(blob: bytes) -> dict[str, Any]:
    """Keras-style summary rows and totals, plus every BN layer's running stats and gamma/beta."""
    cp = decode(blob)
    net = cp.network
    rows = net.summary()
    layers = [{"name": r.name, "type": r.type, "output_shape": list(r.output_shape),
               "trainable": r.trainable, "non_trainable": r.non_trainable} for r in rows]
    trainable = sum(r.trainable for r in rows)
    non_trainable = sum(r.non_trainable for r in rows)
    bn_modules = [i for i, m in enumerate(net.modules()) if isinstance(m, BatchNormLayer)]
    bn_names = [r.name for r in rows if r.type == "batchnorm"]

    def values(key: str) -> list[float] | None:
        t = cp.model.get(key)
        return None if t is None else [float(v) if math.isfinite(v) else v for v in t.tolist()]

    batchnorm = [{"name": name, "module": i,
                  "running_mean": values(f"{i}.running_mean"),
                  "running_var": values(f"{i}.running_var"),
                  "gamma": values(f"{i}.weight"), "beta": values(f"{i}.bias")}
                 for name, i in zip(bn_names, bn_modules, strict=True)]
    return {"layers": layers,
            "totals": {"total": trainable + non_trainable, "trainable": trainable,
                       "non_trainable": non_trainable},
            "batchnorm": batchnorm, "epoch": cp.meta.get("epoch"), "kind": cp.meta.get("kind"),
            "metrics": cp.meta.get("metrics"), "head": net.head, "loss": net.loss,
            "classes": cp.meta.get("classes")}
