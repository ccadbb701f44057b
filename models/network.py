"""ResolvedNetwork -> a plain `nn.Sequential` (the head stays outside: training works on logits).

One small function per layer type. State-dict keys are `<module index>.<param>`, the layout the
stacked trainer slices its checkpoints into, so a checkpoint loads here without stacked code.
"""

from __future__ import annotations

import math
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
    """Float32 modules on the CPU, initialised without touching the global RNG when seeded.

    Dense layer number d (0-based, counting dense layers only) draws from its own generator
    seeded by (seed, d), weight first and bias after, so networks that share dense layer d's
    shape get the same weights there whatever else differs (BatchNorm placement, bias on or
    off, dropout): variants of an experiment start from paired weights. Distributions are the
    usual ones: "pytorch" is nn.Linear's default (weight and bias uniform in +-1/sqrt(fan_in)),
    "keras" is glorot-uniform weights and zero biases. Without `seed`, a seed is drawn from the
    global RNG. Norm layers start at weight 1, bias 0; nothing else has parameters.
    """
    if init not in ("pytorch", "keras"):
        raise ValueError(f"unknown init {init!r}: use 'pytorch' or 'keras'")
    if seed is None:
        seed = int(torch.randint(0, 2**62, (1,)).item())
    with torch.random.fork_rng(devices=[]):  # nn.Linear's own init draws: keep them private
        model = nn.Sequential(*(_make(layer, w) for layer, w in
                                zip(net.modules(), module_widths(net), strict=True)))
    dense = [m for m in model if isinstance(m, nn.Linear)]
    with torch.no_grad():
        for ordinal, m in enumerate(dense):
            w, b = dense_init(m.out_features, m.in_features, m.bias is not None, init, seed,
                              ordinal)
            m.weight.copy_(w)
            if m.bias is not None and b is not None:
                m.bias.copy_(b)
    return model


def layer_seed(seed: int, ordinal: int) -> int:
    """A well-mixed 63-bit seed for dense layer `ordinal` of a network seeded with `seed`
    (splitmix64 of both, so nearby seeds and ordinals give unrelated streams)."""
    mask = 2**64 - 1
    z = (seed * 0x9E3779B97F4A7C15 + (ordinal + 1) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    return (z ^ (z >> 31)) >> 1


def dense_init(units: int, width: int, bias: bool, init: str, seed: int, ordinal: int
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Dense layer `ordinal`'s initial (units, width) weight and bias, from its own generator:
    weight drawn first, so whether there is a bias does not change the weight."""
    if init not in ("pytorch", "keras"):
        raise ValueError(f"unknown init {init!r}: use 'pytorch' or 'keras'")
    gen = torch.Generator().manual_seed(layer_seed(seed, ordinal))
    if init == "keras":  # glorot uniform, zero bias
        bound = math.sqrt(6.0 / (width + units))
        w = torch.empty(units, width).uniform_(-bound, bound, generator=gen)
        return w, torch.zeros(units) if bias else None
    # nn.Linear.reset_parameters: kaiming_uniform(a=sqrt(5)) is U(+-1/sqrt(fan_in)), bias too
    bound = 1.0 / math.sqrt(width)
    w = torch.empty(units, width).uniform_(-bound, bound, generator=gen)
    return w, torch.empty(units).uniform_(-bound, bound, generator=gen) if bias else None


def _bn_affine(bn: nn.BatchNorm1d) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode BatchNorm as y = a*x + b (float64)."""
    assert bn.running_mean is not None and bn.running_var is not None
    mean, var = bn.running_mean.double(), bn.running_var.double()
    gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(mean)
    beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(mean)
    a = gamma / torch.sqrt(var + bn.eps)
    return a, beta - mean * a


def _linear(weight: torch.Tensor, bias: torch.Tensor) -> nn.Linear:
    out = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        out.weight.copy_(weight.to(out.weight.dtype))
        out.bias.copy_(bias.to(out.bias.dtype))
    return out


@torch.no_grad()
def fold_batchnorm(model: nn.Sequential) -> nn.Sequential:
    """An eval-only copy of `model` with each BatchNorm that uses running statistics folded
    into the dense layer right before it (Linear -> BN) or, failing that, right after it
    (BN -> Linear, the Keras placement after an activation): one matmul fewer per BN at
    serving time, same function. The arithmetic is float64, so outputs agree to float32
    rounding. BN without running statistics (batch statistics in eval) is kept as it is."""
    mods = list(model)
    out: list[nn.Module] = []
    i = 0
    while i < len(mods):
        m = mods[i]
        foldable = isinstance(m, nn.BatchNorm1d) and m.track_running_stats
        if foldable and out and isinstance(out[-1], nn.Linear):
            a, b = _bn_affine(m)  # type: ignore[arg-type]
            prev = out[-1]
            bias = prev.bias.double() if prev.bias is not None else torch.zeros_like(a)
            out[-1] = _linear(prev.weight.double() * a[:, None], bias * a + b)
            i += 1
            continue
        nxt = mods[i + 1] if i + 1 < len(mods) else None
        if foldable and isinstance(nxt, nn.Linear):
            a, b = _bn_affine(m)  # type: ignore[arg-type]
            w = nxt.weight.double()
            bias = nxt.bias.double() if nxt.bias is not None else torch.zeros(w.shape[0],
                                                                                dtype=w.dtype)
            out.append(_linear(w * a[None, :], w @ b + bias))
            i += 2
            continue
        out.append(m)
        i += 1
    return nn.Sequential(*out).eval()


def apply_head(logits: torch.Tensor) -> torch.Tensor:
    """Class probabilities (n, k) from the network's logits: 1 unit -> [1-p, p], else softmax."""
    if logits.shape[-1] == 1:
        p = torch.sigmoid(logits)
        return torch.cat([1.0 - p, p], dim=-1)
    return torch.softmax(logits, dim=-1)
