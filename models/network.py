"""ResolvedNetwork -> a plain `nn.Sequential` (the head stays outside: training works on logits).

One small function per layer type. State-dict keys are `<module index>.<param>`, the layout the
stacked trainer slices its checkpoints into, so a checkpoint loads here without stacked code.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from models.resolution import ResolvedNetwork, Shape, conv_padding, pool_stride
from models.spec import (
    Activation,
    ActivationLayer,
    AvgPool2dLayer,
    BatchNormLayer,
    Conv2dLayer,
    DenseLayer,
    DropoutLayer,
    FlattenLayer,
    GlobalAvgPoolLayer,
    GroupNormLayer,
    InstanceNormLayer,
    LayerNormLayer,
    MaxPool2dLayer,
)

_ACTIVATIONS: dict[Activation, Callable[[ActivationLayer], nn.Module]] = {
    Activation.relu: lambda _: nn.ReLU(),
    Activation.leaky_relu: lambda a: nn.LeakyReLU(a.negative_slope),
    Activation.gelu: lambda _: nn.GELU(),
    Activation.tanh: lambda _: nn.Tanh(),
    Activation.sigmoid: lambda _: nn.Sigmoid(),
    Activation.softmax: lambda _: nn.Softmax(dim=-1),
    Activation.linear: lambda _: nn.Identity(),
}


class GlobalAvgPool(nn.Module):
    """(B, C, H, W) -> (B, C): each channel's mean."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


class Standardize(nn.Module):
    """(x - mean) / std with the training rows' statistics (`training.standardize`), shaped to
    broadcast over a batch of rows: (F,) or (C, 1, 1)."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean.detach().clone().float())
        self.register_buffer("std", std.detach().clone().float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def _make(layer: Any, shape: Shape) -> nn.Module:
    """One primitive module for input `shape` (one row's: (F,) or (C, H, W))."""
    width, image = shape[0], len(shape) == 3
    if isinstance(layer, DenseLayer):
        return nn.Linear(width, layer.units, bias=layer.use_bias)
    if isinstance(layer, Conv2dLayer):
        return nn.Conv2d(width, layer.filters, layer.kernel_size, stride=layer.stride,
                         padding=conv_padding(layer), bias=layer.use_bias)
    if isinstance(layer, BatchNormLayer):
        bn = nn.BatchNorm2d if image else nn.BatchNorm1d
        return bn(width, eps=layer.eps, momentum=layer.momentum, affine=layer.affine,
                  track_running_stats=layer.track_running_stats)
    if isinstance(layer, ActivationLayer):
        return _ACTIVATIONS[layer.activation](layer)
    if isinstance(layer, DropoutLayer):
        return nn.Dropout(layer.rate)
    if isinstance(layer, LayerNormLayer):
        if image:  # per-sample over (C, H, W), per-channel affine
            return nn.GroupNorm(1, width, eps=layer.eps, affine=layer.elementwise_affine)
        return nn.LayerNorm(width, eps=layer.eps, elementwise_affine=layer.elementwise_affine)
    if isinstance(layer, GroupNormLayer):
        return nn.GroupNorm(layer.groups, width, eps=layer.eps, affine=layer.affine)
    if isinstance(layer, InstanceNormLayer):
        return nn.InstanceNorm2d(width, eps=layer.eps, momentum=layer.momentum,
                                 affine=layer.affine,
                                 track_running_stats=layer.track_running_stats)
    if isinstance(layer, MaxPool2dLayer):
        return nn.MaxPool2d(layer.pool_size, stride=pool_stride(layer))
    if isinstance(layer, AvgPool2dLayer):
        return nn.AvgPool2d(layer.pool_size, stride=pool_stride(layer))
    if isinstance(layer, GlobalAvgPoolLayer):
        return GlobalAvgPool()
    if isinstance(layer, FlattenLayer):
        return nn.Flatten()
    raise TypeError(f"unknown layer {layer!r}")


def build_network(net: ResolvedNetwork, *, init: str = "pytorch",
                  seed: int | None = None) -> nn.Sequential:
    """Float32 modules on the CPU, initialised without touching the global RNG when seeded.

    Weight layer number d (0-based, counting dense and conv2d layers) draws from its own
    generator seeded by (seed, d), weight first and bias after, so networks that share layer
    d's shape get the same weights there whatever else differs (the norm and its placement,
    bias on or off, dropout): variants of an experiment start from paired weights.
    Distributions are the usual ones: "pytorch" is nn.Linear's and nn.Conv2d's default (weight
    and bias uniform in +-1/sqrt(fan_in)), "keras" is glorot-uniform weights and zero biases.
    Without `seed`, a seed is drawn from the global RNG. Norm layers start at weight 1, bias 0;
    nothing else has parameters.
    """
    if init not in ("pytorch", "keras"):
        raise ValueError(f"unknown init {init!r}: use 'pytorch' or 'keras'")
    if seed is None:
        seed = int(torch.randint(0, 2**62, (1,)).item())
    with torch.random.fork_rng(devices=[]):  # the modules' own init draws: keep them private
        model = nn.Sequential(*(_make(layer, shape) for layer, shape in
                                zip(net.modules(), net.module_shapes(), strict=True)))
    weighted = [m for m in model if isinstance(m, nn.Linear | nn.Conv2d)]
    with torch.no_grad():
        for ordinal, m in enumerate(weighted):
            w, b = weight_init(tuple(m.weight.shape), m.bias is not None, init, seed, ordinal)
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


def weight_init(shape: tuple[int, ...], bias: bool, init: str, seed: int, ordinal: int
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Weight layer `ordinal`'s (dense and conv2d layers counted together, in order) initial
    weight of `shape` ((units, width) or (filters, C, k, k)) and bias, from its own generator:
    weight drawn first, so whether there is a bias does not change the weight."""
    if init not in ("pytorch", "keras"):
        raise ValueError(f"unknown init {init!r}: use 'pytorch' or 'keras'")
    gen = torch.Generator().manual_seed(layer_seed(seed, ordinal))
    receptive = math.prod(shape[2:])
    fan_in, fan_out = shape[1] * receptive, shape[0] * receptive
    if init == "keras":  # glorot uniform, zero bias
        bound = math.sqrt(6.0 / (fan_in + fan_out))
        w = torch.empty(shape).uniform_(-bound, bound, generator=gen)
        return w, torch.zeros(shape[0]) if bias else None
    # reset_parameters of nn.Linear / nn.Conv2d: kaiming_uniform(a=sqrt(5)) is
    # U(+-1/sqrt(fan_in)), bias too
    bound = 1.0 / math.sqrt(fan_in)
    w = torch.empty(shape).uniform_(-bound, bound, generator=gen)
    return w, torch.empty(shape[0]).uniform_(-bound, bound, generator=gen) if bias else None


def _bn_affine(bn: nn.BatchNorm1d | nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode BatchNorm as y = a*x + b per channel (float64)."""
    assert bn.running_mean is not None
    assert bn.running_var is not None
    mean, var = bn.running_mean.double(), bn.running_var.double()
    gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(mean)
    beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(mean)
    a = gamma / torch.sqrt(var + bn.eps)
    return a, beta - mean * a


def _with(layer: nn.Linear | nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor
          ) -> nn.Linear | nn.Conv2d:
    """A copy of `layer` (same geometry) with a float64-computed weight and bias, and a bias."""
    out = copy.deepcopy(layer)
    dtype = layer.weight.dtype
    out.weight = nn.Parameter(weight.to(dtype).contiguous())
    out.bias = nn.Parameter(bias.to(dtype).contiguous())
    return out


def _bias(layer: nn.Linear | nn.Conv2d) -> torch.Tensor:
    n = layer.weight.shape[0]
    return layer.bias.double() if layer.bias is not None else torch.zeros(n, dtype=torch.float64)


def _unpadded(layer: nn.Module) -> bool:
    # BN's shift cannot fold into a conv after it that pads: its zero border is not shifted
    return isinstance(layer, nn.Linear) or (
        isinstance(layer, nn.Conv2d) and layer.padding in (0, (0, 0), "valid"))


@torch.no_grad()
def fold_batchnorm(model: nn.Sequential) -> nn.Sequential:
    """An eval-only copy of `model` with each BatchNorm that uses running statistics folded
    into the dense or conv layer right before it (Linear -> BN, Conv -> BN2d) or, failing that,
    right after it (BN -> Linear, BN2d -> unpadded Conv; the Keras placement after an
    activation): one op fewer per BN at serving time, same function. The arithmetic is
    float64, so outputs agree to float32 rounding. BN without running statistics (batch
    statistics in eval) is kept as it is."""
    mods = list(model)
    out: list[nn.Module] = []
    i = 0
    while i < len(mods):
        m = mods[i]
        foldable = isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d) and m.track_running_stats
        prev = out[-1] if out else None
        if foldable and isinstance(prev, nn.Linear | nn.Conv2d) \
                and isinstance(prev, nn.Conv2d) == isinstance(m, nn.BatchNorm2d):
            a, b = _bn_affine(m)  # type: ignore[arg-type]
            scale = a.view(-1, *[1] * (prev.weight.dim() - 1))
            out[-1] = _with(prev, prev.weight.double() * scale, _bias(prev) * a + b)
            i += 1
            continue
        nxt = mods[i + 1] if i + 1 < len(mods) else None
        if foldable and isinstance(nxt, nn.Linear | nn.Conv2d) and _unpadded(nxt) \
                and isinstance(nxt, nn.Conv2d) == isinstance(m, nn.BatchNorm2d):
            a, b = _bn_affine(m)  # type: ignore[arg-type]
            w = nxt.weight.double()  # (out, in) or (out, in, kh, kw)
            scale = a.view(1, -1, *[1] * (w.dim() - 2))
            shift = (w * b.view(1, -1, *[1] * (w.dim() - 2))).sum(dim=tuple(range(1, w.dim())))
            out.append(_with(nxt, w * scale, shift + _bias(nxt)))
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
