"""ResolvedNetwork -> a plain `nn.Sequential` (the head stays outside: training works on logits).

One small function per layer type. State-dict keys are `<module index>.<param>`, the layout the
stacked trainer slices its checkpoints into, so a checkpoint loads here without stacked code.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from models.spec import (
    Activation,
    ActivationLayer,
    BatchNormLayer,
    DenseLayer,
    DropoutLayer,
    LayerNormLayer,
    ResolvedNetwork,
)

_ACTIVATIONS: dict[Activation, Callable[[ActivationLayer], nn.Module]] = {
    Activation.relu: lambda a: nn.ReLU(),
    Activation.leaky_relu: lambda a: nn.LeakyReLU(a.negative_slope),
    Activation.gelu: lambda a: nn.GELU(),
    Activation.tanh: lambda a: nn.Tanh(),
    Activation.sigmoid: lambda a: nn.Sigmoid(),
    Activation.softmax: lambda a: nn.Softmax(dim=-1),
    Activation.linear: lambda a: nn.Identity(),
}


def module_widths(net: ResolvedNetwork) -> list[int]:
    """Input width of each primitive module in `net.modules()`."""
    widths, width = [], net.n_features
    for layer in net.modules():
        widths.append(width)
        if isinstance(layer, DenseLayer):
            width = layer.units
    return widths


def _make(layer: Any, width: int) -> nn.Module:
    if isinstance(layer, DenseLayer):
        return nn.Linear(width, layer.units, bias=layer.use_bias)
    if isinstance(layer, BatchNormLayer):
        return nn.BatchNorm1d(width, eps=layer.eps, momentum=layer.momentum, affine=layer.affine,
                              track_running_stats=layer.track_running_stats)
    if isinstance(layer, ActivationLayer):
        return _ACTIVATIONS[layer.activation](layer)
    if isinstance(layer, DropoutLayer):
        return nn.Dropout(layer.rate)
    if isinstance(layer, LayerNormLayer):
        return nn.LayerNorm(width, eps=layer.eps, elementwise_affine=layer.elementwise_affine)
    raise TypeError(f"unknown layer {layer!r}")


def build_network(net: ResolvedNetwork, *, init: str = "pytorch",
                  seed: int | None = None) -> nn.Sequential:
    """Float32 modules on the CPU. With `seed`, the init draws from a private RNG seeded by it
    (the global RNG is left untouched); `init="keras"` is glorot-uniform weights, zero biases."""
    if seed is None:
        return _build(net, init)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _build(net, init)


def _build(net: ResolvedNetwork, init: str) -> nn.Sequential:
    if init not in ("pytorch", "keras"):
        raise ValueError(f"unknown init {init!r}: use 'pytorch' or 'keras'")
    model = nn.Sequential(*(_make(layer, w) for layer, w in
                            zip(net.modules(), module_widths(net), strict=True)))
    if init == "keras":
        for m in model:
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
    return model


def apply_head(logits: torch.Tensor) -> torch.Tensor:
    """Class probabilities (n, k) from the network's logits: 1 unit -> [1-p, p], else softmax."""
    if logits.shape[-1] == 1:
        p = torch.sigmoid(logits)
        return torch.cat([1.0 - p, p], dim=-1)
    return torch.softmax(logits, dim=-1)
