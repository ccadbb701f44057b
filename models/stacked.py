"""K independent networks of one architecture, computed together.

Every parameter and buffer carries a leading K axis; slicing index k gives model k's ordinary
`nn.Sequential` state dict (`<module index>.<name>`). Dense layers are `torch.baddbmm`;
BatchNorm runs PyTorch's kernel per model, so batch statistics, running statistics (momentum
formula, unbiased running_var) and eval are exactly `nn.BatchNorm1d`'s. Nothing mixes models,
so an elementwise optimizer over the stacked tensors is K independent optimizers. Model k's
results are bitwise the same for any K on CPU (see `StackedNetwork._allocate`, `_BatchNorm`)
for ReLU-family networks; smooth activations (tanh, gelu, sigmoid) may differ in the last bit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from models.network import build_network, module_widths
from models.spec import (
    Activation,
    ActivationLayer,
    BatchNormLayer,
    DenseLayer,
    DropoutLayer,
    LayerNormLayer,
    ResolvedNetwork,
)

# Parameters are strided views of one buffer by design (see StackedNetwork._allocate).
LAYOUT_WARNING = "grad and param do not obey the gradient layout"

# "train": batch statistics, running statistics updated, dropout on.
# "eval": running statistics, dropout off.
# "batch_stats": batch statistics without touching running statistics, dropout off.
Mode = Literal["train", "eval", "batch_stats"]


PAD = 64  # elements; every parameter's slot in a model's row starts at a multiple of this


class _Padded(nn.Module):
    """A layer whose parameters live in the network's one flat (K, row) buffer.

    `add_param` only declares a parameter; `StackedNetwork` allocates the buffer and hands each
    layer leaf views of it (see there for why).
    """

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.fills: dict[str, float] = {}
        self.params: dict[str, torch.Tensor] = {}

    def add_param(self, name: str, shape: tuple[int, ...], fill: float) -> None:
        self.shapes[name] = shape
        self.fills[name] = fill

    def p(self, name: str) -> torch.Tensor | None:
        """The (K, *shape) parameter, or None if the layer has none of that name."""
        return self.params.get(name)


class _Dense(_Padded):
    def __init__(self, k: int, width: int, units: int, bias: bool) -> None:
        super().__init__(k)
        self.add_param("weight", (units, width), 0.0)
        if bias:
            self.add_param("bias", (units,), 0.0)

    def forward(self, x: torch.Tensor, mode: Mode, gens: Sequence[torch.Generator] | None
                ) -> torch.Tensor:
        w_t = self.params["weight"].transpose(1, 2)
        bias = self.params.get("bias")
        if bias is None:
            return torch.bmm(x, w_t)
        return torch.baddbmm(bias.unsqueeze(1), x, w_t)


class _BatchNorm(_Padded):
    running_mean: torch.Tensor | None
    running_var: torch.Tensor | None
    num_batches_tracked: torch.Tensor | None

    def __init__(self, k: int, width: int, spec: BatchNormLayer) -> None:
        super().__init__(k)
        self.spec = spec
        self.width = width
        if spec.affine:
            self.add_param("weight", (width,), 1.0)
            self.add_param("bias", (width,), 0.0)
        if spec.track_running_stats:
            self.register_buffer("running_mean", torch.zeros(k, width))
            self.register_buffer("running_var", torch.ones(k, width))
            self.register_buffer("num_batches_tracked", torch.zeros(k, dtype=torch.long))
        else:
            self.running_mean = self.running_var = self.num_batches_tracked = None

    def forward(self, x: torch.Tensor, mode: Mode, gens: Sequence[torch.Generator] | None
                ) -> torch.Tensor:
        # PyTorch's own kernel, called once per model on that model's contiguous (B, C) slice:
        # the same call, on the same shapes, that a lone model makes, so results are bitwise
        # independent of K (one kernel over K*C channels vectorises across channels and would
        # make a channel's rounding depend on its position) and equal to nn.BatchNorm1d's.
        mean, var = ((self.running_mean, self.running_var) if mode != "batch_stats"
                     else (None, None))
        track = mean is not None and var is not None
        training = mode != "eval" or not track
        weight, bias = self.params.get("weight"), self.params.get("bias")
        outs = [F.batch_norm(
            x[k],
            mean[k] if mean is not None else None,
            var[k] if var is not None else None,
            weight[k] if weight is not None else None,
            bias[k] if bias is not None else None,
            training=training, momentum=self.spec.momentum, eps=self.spec.eps,
        ) for k in range(self.k)]
        if mode == "train" and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
        return outs[0].unsqueeze(0) if self.k == 1 else torch.stack(outs)


class _LayerNorm(_Padded):
    def __init__(self, k: int, width: int, spec: LayerNormLayer) -> None:
        super().__init__(k)
        self.eps, self.width = spec.eps, width
        if spec.elementwise_affine:
            self.add_param("weight", (width,), 1.0)
            self.add_param("bias", (width,), 0.0)

    def forward(self, x: torch.Tensor, mode: Mode, gens: Sequence[torch.Generator] | None
                ) -> torch.Tensor:
        y = F.layer_norm(x, (self.width,), eps=self.eps)
        weight, bias = self.params.get("weight"), self.params.get("bias")
        if weight is not None and bias is not None:
            y = torch.addcmul(bias.unsqueeze(1), y, weight.unsqueeze(1))
        return y


class _Activation(nn.Module):
    def __init__(self, spec: ActivationLayer) -> None:
        super().__init__()
        self.kind, self.slope = spec.activation, spec.negative_slope

    def forward(self, x: torch.Tensor, mode: Mode, gens: Sequence[torch.Generator] | None
                ) -> torch.Tensor:
        match self.kind:
            case Activation.relu:
                return F.relu(x)
            case Activation.leaky_relu:
                return F.leaky_relu(x, self.slope)
            case Activation.gelu:
                return F.gelu(x)
            case Activation.tanh:
                return torch.tanh(x)
            case Activation.sigmoid:
                return torch.sigmoid(x)
            case Activation.softmax:
                return torch.softmax(x, dim=-1)
        return x


class _Dropout(nn.Module):
    def __init__(self, rate: float) -> None:
        super().__init__()
        self.rate = rate

    def forward(self, x: torch.Tensor, mode: Mode, gens: Sequence[torch.Generator] | None
                ) -> torch.Tensor:
        if mode != "train" or self.rate == 0.0:
            return x
        assert gens is not None, "dropout in training mode needs one generator per model"
        keep = torch.stack([torch.rand(x.shape[1:], generator=g, device=x.device) for g in gens])
        return x * (keep >= self.rate).to(x.dtype) / (1.0 - self.rate)


class StackedNetwork(nn.Module):
    """K copies of `net.modules()`; input (K, B, n_features) -> logits (K, B, output_units)."""

    def __init__(self, net: ResolvedNetwork, k: int, device: torch.device) -> None:
        super().__init__()
        self.k = k
        mods: list[nn.Module] = []
        for layer, width in zip(net.modules(), module_widths(net), strict=True):
            if isinstance(layer, DenseLayer):
                mods.append(_Dense(k, width, layer.units, layer.use_bias))
            elif isinstance(layer, BatchNormLayer):
                mods.append(_BatchNorm(k, width, layer))
            elif isinstance(layer, LayerNormLayer):
                mods.append(_LayerNorm(k, width, layer))
            elif isinstance(layer, DropoutLayer):
                mods.append(_Dropout(layer.rate))
            elif isinstance(layer, ActivationLayer):
                mods.append(_Activation(layer))
            else:
                raise TypeError(f"unknown layer {layer!r}")
        self.layers = nn.ModuleList(mods).to(device)
        self.has_dropout = any(isinstance(m, _Dropout) and m.rate > 0 for m in mods)
        self.has_batchnorm = any(isinstance(m, _BatchNorm) for m in mods)
        self._allocate(device)

    def _allocate(self, device: torch.device) -> None:
        """One (K, row) buffer holds every parameter; layers get leaf views of it.

        Why one buffer: the optimizer then steps a single tensor (one fused kernel per step) and
        gradients are zeroed with one op. Why padded slots: CPU elementwise kernels (fused Adam
        among them) round their SIMD-vector and scalar-tail paths differently (FMA), so an
        element's update could depend on its flat position, i.e. on K. With each slot starting
        at a multiple of PAD and the row a multiple of PAD, every element sits at the same
        alignment whatever K is, and K stacked models update bitwise as each would alone.
        """
        self.layout: dict[str, tuple[int, tuple[int, ...]]] = {}
        offset = 0
        for i, m in enumerate(self.layers):
            if isinstance(m, _Padded):
                for name, shape in m.shapes.items():
                    self.layout[f"{i}.{name}"] = (offset, shape)
                    offset += -(-math.prod(shape) // PAD) * PAD
        row = max(offset, PAD)
        self.flat = torch.zeros(self.k, row, device=device, requires_grad=True)
        self.flat.grad = torch.zeros_like(self.flat)
        base, grad_base = self.flat.detach(), self.flat.grad
        for i, m in enumerate(self.layers):
            if isinstance(m, _Padded):
                for name, shape in m.shapes.items():
                    off, _ = self.layout[f"{i}.{name}"]
                    n = math.prod(shape)
                    leaf = base[:, off:off + n].view(self.k, *shape)
                    with torch.no_grad():
                        leaf.fill_(m.fills[name])
                    leaf.requires_grad_(True)
                    # backward accumulates in place into this view of the flat gradient
                    leaf.grad = grad_base[:, off:off + n].view(self.k, *shape)
                    m.params[name] = leaf

    def zero_grad_flat(self) -> None:
        assert self.flat.grad is not None
        self.flat.grad.zero_()

    def slot(self, key: str, t: torch.Tensor, k: int) -> torch.Tensor:
        """Model k's part of a (K, row) tensor laid out like `flat` (e.g. optimizer state)."""
        off, shape = self.layout[key]
        return t[k, off:off + math.prod(shape)].view(shape)

    def forward(self, x: torch.Tensor, mode: Mode = "eval",
                gens: Sequence[torch.Generator] | None = None) -> torch.Tensor:
        for m in self.layers:
            x = m(x, mode, gens)
        return x

    def stacked_state(self) -> dict[str, torch.Tensor]:
        """(K, *shape) views of parameters and buffers, keyed as in `nn.Sequential` ("3.weight"),
        in nn.Sequential's state-dict order."""
        out: dict[str, torch.Tensor] = {}
        for i, m in enumerate(self.layers):
            if isinstance(m, _Padded):
                for name, t in m.params.items():
                    out[f"{i}.{name}"] = t
            for name, buf in m.named_buffers(recurse=False):
                if buf is not None:
                    out[f"{i}.{name}"] = buf
        return out

    def model_state(self, k: int) -> dict[str, torch.Tensor]:
        """Model k's ordinary state dict (CPU, contiguous copies), loadable by build_network."""
        return {key: t.detach()[k].to("cpu", copy=True).contiguous()
                for key, t in self.stacked_state().items()}

    @torch.no_grad()
    def load_model_states(self, states: Sequence[dict[str, torch.Tensor]]) -> None:
        if len(states) != self.k:
            raise ValueError(f"{len(states)} state dicts for {self.k} stacked models")
        for key, t in self.stacked_state().items():
            missing = [i for i, s in enumerate(states) if key not in s]
            if missing:
                raise ValueError(f"state dict {missing[0]} lacks {key!r}")
            t.copy_(torch.stack([s[key].to(t.device, t.dtype) for s in states]))
        extra = set(states[0]) - set(self.stacked_state())
        if extra:
            raise ValueError(f"unexpected keys in state dict: {sorted(extra)}")


def initial_states(net: ResolvedNetwork, seeds: Sequence[int], init: str
                   ) -> list[dict[str, torch.Tensor]]:
    """Each model's initial weights: exactly what build_network(net, init, seed) gives."""
    return [build_network(net, init=init, seed=s).state_dict() for s in seeds]


def stacked_network(net: ResolvedNetwork, states: Sequence[dict[str, torch.Tensor]],
                    device: torch.device) -> StackedNetwork:
    model = StackedNetwork(net, len(states), device)
    model.load_model_states(states)
    return model
