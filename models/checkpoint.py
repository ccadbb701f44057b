"""Checkpoints as safetensors bytes: tensors plus string metadata. Never pickle.

Layout (keys):
  model.<i>.<name>           weights and BN buffers: an ordinary `nn.Sequential` state dict
  optim.<i>.<name>.<state>   optimizer state per parameter, plus optim.step ("last" only)
  rng.data                   the data-order generator's state, uint8 ("last" only)
  input.mean, input.std      the input standardisation fitted on the training rows, shaped to
                             broadcast over one row ((F,) or (C, 1, 1)); only with standardize
Metadata (all strings; JSON where structured): format, kind ("last"|"best"), epoch, seed,
spec (the JobSpec), network (resolved layers, head, loss, n_features, input_shape, n_classes),
classes,
metrics (that epoch's), trainer (loop state needed to resume: best-so-far, early stopping,
plateau, lr).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import Any

import torch
from pydantic import TypeAdapter
from safetensors.torch import load, save

from models.resolution import ResolvedNetwork
from models.spec import Layer

FORMAT = "bnlab-checkpoint/1"
_MAX_HEADER = 16 * 1024 * 1024
_LAYERS = TypeAdapter(list[Layer])


class CheckpointError(ValueError):
    """Bytes that are not a bnlab checkpoint (or not one this version reads)."""


@dataclass
class Checkpoint:
    meta: dict[str, Any]
    model: dict[str, torch.Tensor]
    optim: dict[str, torch.Tensor]
    rng: dict[str, torch.Tensor]
    input: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def network(self) -> ResolvedNetwork:
        return network_from_meta(self.meta)


def network_to_meta(net: ResolvedNetwork) -> dict[str, Any]:
    return {"layers": [layer.model_dump(mode="json") for layer in net.layers],
            "head": net.head, "loss": net.loss, "n_features": net.n_features,
            "input_shape": list(net.input_shape), "n_classes": net.n_classes}


def network_from_meta(meta: dict[str, Any]) -> ResolvedNetwork:
    n = meta["network"]
    # checkpoints from before image inputs carry only n_features
    shape = tuple(int(d) for d in n.get("input_shape", [n["n_features"]]))
    return ResolvedNetwork(input_shape=shape, n_classes=int(n["n_classes"]),
                           layers=_LAYERS.validate_python(n["layers"]), loss=n["loss"],
                           head=n["head"])


def encode(meta: dict[str, Any], model: dict[str, torch.Tensor],
           optim: dict[str, torch.Tensor] | None = None,
           rng: dict[str, torch.Tensor] | None = None,
           inputs: dict[str, torch.Tensor] | None = None) -> bytes:
    tensors = {f"model.{k}": v for k, v in model.items()}
    tensors |= {f"input.{k}": v for k, v in (inputs or {}).items()}
    tensors |= {f"optim.{k}": v for k, v in (optim or {}).items()}
    tensors |= {f"rng.{k}": v for k, v in (rng or {}).items()}
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    strings = {k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}
    return save(tensors, metadata={"format": FORMAT, **strings})


def _parse_meta(raw: dict[str, str]) -> dict[str, Any]:
    if raw.get("format") != FORMAT:
        raise CheckpointError(f"not a bnlab checkpoint (format {raw.get('format')!r}, "
                              f"expected {FORMAT!r})")
    out: dict[str, Any] = {}
    for key, value in raw.items():
        try:
            out[key] = value if key in ("format", "kind") else json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def read_checkpoint_meta(blob: bytes) -> dict[str, Any]:
    """The metadata alone, read from the safetensors header without touching the tensors."""
    if len(blob) < 8:
        raise CheckpointError("checkpoint is too short to be safetensors")
    (size,) = struct.unpack("<Q", blob[:8])
    if size > _MAX_HEADER or 8 + size > len(blob):
        raise CheckpointError("checkpoint header is truncated or implausibly large")
    try:
        header = json.loads(blob[8:8 + size])
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"checkpoint header is not valid JSON ({e})") from None
    return _parse_meta(header.get("__metadata__") or {})


def decode(blob: bytes) -> Checkpoint:
    meta = read_checkpoint_meta(blob)
    try:
        tensors = load(blob)
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(f"checkpoint tensors cannot be read ({e})") from None
    parts: dict[str, dict[str, torch.Tensor]] = {"model": {}, "optim": {}, "rng": {},
                                                 "input": {}}
    for key, value in tensors.items():
        prefix, _, rest = key.partition(".")
        if prefix not in parts:
            raise CheckpointError(f"unexpected tensor {key!r} in checkpoint")
        parts[prefix][rest] = value
    return Checkpoint(meta, parts["model"], parts["optim"], parts["rng"], parts["input"])
