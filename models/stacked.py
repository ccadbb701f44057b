"""K independent networks of one architecture, computed together.

Every parameter and buffer carries a leading K axis; slicing index k gives model k's ordinary
`nn.Sequential` state dict (`<module index>.<name>`). Dense layers are `torch.baddbmm`;
BatchNorm is one `F.batch_norm` over the K models' channels side by side (B, K*C): channels
never mix, so batch statistics, running statistics (momentum formula, unbiased running_var)
and eval are exactly `nn.BatchNorm1d`'s per model. Dropout masks come from a counter-based hash
of a per-model key (`dropout_keys`), so no op loops over models and a model's masks do not
depend on its stack. Nothing mixes models, so an elementwise optimizer over the stacked tensors
is K independent optimizers.

Promised: model k's results equal what it gives alone (K = 1, the same code) within float
rounding. In practice on CPU, dense networks with ReLU-family activations are bitwise equal:
the kernels that round an element differently in their vector loop and their scalar tail get
inputs shaped so that no model's element lands in a tail whatever K is (BatchNorm channels
padded to LANES, loss rows to 32, the flat parameter buffer to PAD). Smooth activations may
differ in the last bit. Convolutions are not bitwise: a grouped convolution sums in another
order than a lone one, so a step agrees to float rounding and long runs drift apart slowly, as
two runs of one model on two machines would (tests/models/test_conv.py bounds it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from typing_extensions import override

from models.network import weight_init
from models.resolution import ResolvedNetwork, conv_padding, pool_stride
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

# Parameters are strided views of one buffer by design (see StackedNetwork._allocate).
LAYOUT_WARNING = "grad and param do not obey the gradient layout"

# "train": batch statistics, running statistics updated, dropout on.
# "eval": running statistics, dropout off.
# "batch_stats": batch statistics without touching running statistics, dropout off.
Mode = Literal["train", "eval", "batch_stats"]


PAD = 64  # elements; every parameter block in `flat` starts at a multiple of this
LANES = 16  # float32 lanes of the widest CPU vector (AVX-512); BatchNorm pads channels to it


def _padded(n: int, to: int = PAD) -> int:
    return -(-n // to) * to


class _Padded(nn.Module):
    """A layer whose parameters live in the network's one flat (K, row) buffer.

    `add_param` only declares a parameter; `StackedNetwork` allocates the buffer and hands each
    layer views of it (see there for why): `params` are detached (K, *shape) views (state dicts,
    initialisation) and `blocks` the autograd leaves, shaped by `leaf` the way `forward` consumes
    them, so that a step records no view ops (each costs a node forward and backward, and on a
    small model the per-op overhead is the step's cost).
    """

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.fills: dict[str, float] = {}
        self.params: dict[str, torch.Tensor] = {}
        self.blocks: dict[str, torch.Tensor] = {}

    def buffers_state(self) -> dict[str, torch.Tensor]:
        """(K, ...) buffers in nn.Sequential's state-dict order, after the parameters."""
        return {}

    def add_param(self, name: str, shape: tuple[int, ...], fill: float) -> None:
        self.shapes[name] = shape
        self.fills[name] = fill

    def p(self, name: str) -> torch.Tensor | None:
        """The (K, *shape) parameter, or None if the layer has none of that name."""
        return self.params.get(name)

    def block_size(self, name: str) -> int:
        """Elements of `flat` the leaf spans (from its block's start)."""
        return self.k * math.prod(self.shapes[name])

    def leaf(self, name: str, block: torch.Tensor) -> torch.Tensor:
        """The autograd leaf's view of its `block_size` elements (also applied to the gradient,
        so backward accumulates in place with matching strides)."""
        return block.view(self.k, *self.shapes[name])


class _Dense(_Padded):
    def __init__(self, k: int, width: int, units: int, bias: bool) -> None:
        super().__init__(k)
        self.add_param("weight", (units, width), 0.0)
        if bias:
            self.add_param("bias", (units,), 0.0)

    def leaf(self, name: str, block: torch.Tensor) -> torch.Tensor:
        units, width = self.shapes["weight"]
        if name == "weight":  # (K, units, width) stored, consumed transposed by bmm
            return block.view(self.k, units, width).transpose(1, 2)
        return block.view(self.k, 1, units)  # bias, broadcast over the batch

    @override
    def forward(self, x: torch.Tensor, mode: Mode, noise: torch.Tensor | None
                ) -> torch.Tensor:
        w_t = self.blocks["weight"]
        bias = self.blocks.get("bias")
        if bias is None:
            return torch.bmm(x, w_t)
        return torch.baddbmm(bias, x, w_t)


class _BatchNorm(_Padded):
    """K BatchNorm1d layers as one F.batch_norm over (B, P) channels, P = K*C rounded up to
    LANES.

    Channels never mix, so the K*C real channels are K independent BatchNorms. The padding
    makes the call bitwise independent of K: the kernel's vectorised loop rounds differently
    from its scalar tail, and with P a multiple of the vector width no real channel lands in a
    tail, whatever K is (K = 1 too; K*C = 48 or 192 needs no padding). Weight/bias are whole
    P-long blocks of `flat` and the running stats live in P-long buffers, so they are passed
    without a copy; the padding channels see zeros and are never exported.
    """

    running_mean: torch.Tensor | None
    running_var: torch.Tensor | None
    num_batches_tracked: torch.Tensor | None

    def __init__(self, k: int, width: int, spec: BatchNormLayer, device: torch.device,
                 image: bool = False) -> None:
        super().__init__(k)
        self.spec = spec
        self.width = width
        self.image = image
        # a feature map's (B, K*C, H, W) goes to F.batch_norm as it is: no padding there
        self.channels = k * width if image else _padded(k * width, LANES)
        if spec.affine:
            self.add_param("weight", (width,), 1.0)
            self.add_param("bias", (width,), 0.0)
        self.stats: tuple[torch.Tensor, torch.Tensor] | None = None
        self.running_mean = self.running_var = self.num_batches_tracked = None
        if spec.track_running_stats:
            self.stats = (torch.zeros(self.channels, device=device),
                          torch.ones(self.channels, device=device))
            self.running_mean = self.stats[0][:k * width].view(k, width)
            self.running_var = self.stats[1][:k * width].view(k, width)
            self.num_batches_tracked = torch.zeros(k, dtype=torch.long, device=device)

    @override
    def block_size(self, name: str) -> int:
        return self.channels

    @override
    def leaf(self, name: str, block: torch.Tensor) -> torch.Tensor:
        return block  # the whole padded block, passed to F.batch_norm as it is

    def buffers_state(self) -> dict[str, torch.Tensor]:
        if self.running_mean is None or self.running_var is None \
                or self.num_batches_tracked is None:
            return {}
        return {"running_mean": self.running_mean, "running_var": self.running_var,
                "num_batches_tracked": self.num_batches_tracked}

    @override
    def forward(self, x: torch.Tensor, mode: Mode, noise: torch.Tensor | None
                ) -> torch.Tensor:
        stats = self.stats if mode != "batch_stats" else None
        if self.image:  # (B, K*C, H, W): BatchNorm2d per channel, channels never mix
            y = F.batch_norm(
                x, stats[0] if stats else None, stats[1] if stats else None,
                self.blocks.get("weight"), self.blocks.get("bias"),
                training=mode != "eval" or stats is None, momentum=self.spec.momentum,
                eps=self.spec.eps)
            if mode == "train" and self.num_batches_tracked is not None:
                self.num_batches_tracked.add_(1)
            return y
        k, b, c = x.shape
        # (K, B, C) -> (B, K*C); for K = 1 one view instead of a transpose and a reshape
        h = x.reshape(b, c) if k == 1 else x.transpose(0, 1).reshape(b, k * c)
        if self.channels > k * c:
            h = F.pad(h, (0, self.channels - k * c))
        y = F.batch_norm(
            h, stats[0] if stats else None, stats[1] if stats else None,
            self.blocks.get("weight"), self.blocks.get("bias"),
            training=mode != "eval" or stats is None, momentum=self.spec.momentum,
            eps=self.spec.eps)
        if mode == "train" and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
        if self.channels > k * c:
            y = y[:, :k * c]
        return y.unsqueeze(0) if k == 1 else y.view(b, k, c).transpose(0, 1)


def _to_channels(x: torch.Tensor) -> torch.Tensor:
    """(K, B, C) -> (B, K*C): the K models' features side by side, as channels."""
    k, b, c = x.shape
    return x.reshape(b, c) if k == 1 else x.transpose(0, 1).reshape(b, k * c)


def _from_channels(y: torch.Tensor, k: int) -> torch.Tensor:
    b, kc = y.shape
    return y.unsqueeze(0) if k == 1 else y.view(b, k, kc // k).transpose(0, 1)


class _Affine(_Padded):
    """A norm with an optional per-channel weight (1) and bias (0)."""

    def __init__(self, k: int, width: int, affine: bool) -> None:
        super().__init__(k)
        self.width = width
        if affine:
            self.add_param("weight", (width,), 1.0)
            self.add_param("bias", (width,), 0.0)

    @override
    def leaf(self, name: str, block: torch.Tensor) -> torch.Tensor:
        return block.view(self.k * self.width)  # (K*C): the K models' channels side by side


class _LayerNorm(_Affine):
    """Features: F.layer_norm per model. Feature maps: F.group_norm with one group per model
    (each sample normalised over its model's (C, H, W)), per-channel affine."""

    def __init__(self, k: int, width: int, spec: LayerNormLayer, image: bool) -> None:
        super().__init__(k, width, spec.elementwise_affine)
        self.eps, self.image = spec.eps, image

    def leaf(self, name: str, block: torch.Tensor) -> torch.Tensor:
        if self.image:
            return super().leaf(name, block)
        return block.view(self.k, 1, self.width)  # broadcast over the batch

    @override
    def forward(self, x: torch.Tensor, mode: Mode, noise: torch.Tensor | None
                ) -> torch.Tensor:
        weight, bias = self.blocks.get("weight"), self.blocks.get("bias")
        if self.image:
            return F.group_norm(x, self.k, weight, bias, self.eps)
        y = F.layer_norm(x, (self.width,), eps=self.eps)
        if weight is not None and bias is not None:
            y = torch.addcmul(bias, y, weight)
        return y


class _GroupNorm(_Affine):
    """K GroupNorms as one F.group_norm over (B, K*C, ...) with K*G groups: model k's groups
    are channels k*C .. (k+1)*C - 1, so groups never span two models."""

    def __init__(self, k: int, width: int, spec: GroupNormLayer, image: bool) -> None:
        super().__init__(k, width, spec.affine)
        self.spec, self.image = spec, image

    @override
    def forward(self, x: torch.Tensor, mode: Mode, noise: torch.Tensor | None
                ) -> torch.Tensor:
        h = x if self.image else _to_channels(x)
        y = F.group_norm(h, self.k * self.spec.groups, self.blocks.get("weight"),
                         self.blocks.get("bias"), self.spec.eps)
        return y if self.image else _from_channels(y, self.k)


class _InstanceNorm(_Affine):
    """K InstanceNorm2d as one F.instance_norm over (B, K*C, H, W) (per channel)."""

    def __init__(self, k: int, width: int, spec: InstanceNormLayer, device: torch.device
                 ) -> None:
        super().__init__(k, width, spec.affine)
        self.spec = spec
        self.stats: tuple[torch.Tensor, torch.Tensor] | None = None
        self.num_batches_tracked: torch.Tensor | None = None
        if spec.track_running_stats:
            self.stats = (torch.zeros(k * width, device=device),
                          torch.ones(k * width, device=device))
            self.num_batches_tracked = torch.zeros(k, dtype=torch.long, device=device)

    def buffers_state(self) -> dict[str, torch.Tensor]:
        if self.stats is None or self.num_batches_tracked is None:
            return {}
        return {"running_mean": self.stats[0].view(self.k, self.width),
                "running_var": self.stats[1].view(self.k, self.width),
                "num_batches_tracked": self.num_batches_tracked}

    @override
    def forward(self, x: torch.Tensor, mode: Mode, noise: torch.Tensor | None
                ) -> torch.Tensor:
        stats = self.stats if mode == "train" or mode == "eval" else None
        y = F.instance_norm(x, stats[0] if stats else None, stats[1] if stats else None,
                            self.blocks.get("weight"), self.blocks.get("bias"),
                            use_input_stats=mode != "eval" or stats is None,
                            momentum=self.spec.momentum, eps=self.spec.eps)
        if mode == "train" and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
        return y


class _Conv(_Padded):
    """K Conv2d as one grouped convolution (groups=K) over (B, K*C, H, W): model k's filters
    see only its own C input channels."""

    def __init__(self, k: int, channels: int, spec: Conv2dLayer) -> None:
        super().__init__(k)
        ks = spec.kernel_size
        self.add_param("weight", (spec.filters, channels, ks, ks), 0.0)
        if spec.use_bias:
            self.add_param("bias", (spec.filters,), 0.0)
        self.stride, self.padding = spec.stride, conv_padding(spec)

    def leaf(self, name: str, block: torch.Tensor) -> torch.Tensor:
        shape = self.shapes[name]
        return block.view(self.k * shape[0], *shape[1:])

    @override
    def forward(self, x: torch.Tensor, mode: Mode, noise: torch.Tensor | None
                ) -> torch.Tensor:
        return F.conv2d(x, self.blocks["weight"], self.blocks.get("bias"), self.stride,
                        self.padding, 1, self.k)


class _Pool(nn.Module):
    def __init__(self, spec: MaxPool2dLayer | AvgPool2dLayer) -> None:
        super().__init__()
        self.max = isinstance(spec, MaxPool2dLayer)
        self.size, self.stride = spec.pool_size, pool_stride(spec)

    @override
    def forward(self, x: torch.Tensor, mode: Mode, noise: torch.Tensor | None
                ) -> torch.Tensor:
        pool = F.max_pool2d if self.max else F.avg_pool2d
        return pool(x, self.size, self.stride)


class _ToFeatures(nn.Module):
    """(B, K*C, H, W) -> (K, B, C) by each channel's mean, or (K, B, C*H*W) flattened."""

    def __init__(self, k: int, mean: bool) -> None:
        super().__init__()
        self.k, self.mean = k, mean

    @override
    def forward(self, x: torch.Tensor, mode: Mode, noise: torch.Tensor | None
                ) -> torch.Tensor:
        if self.mean:
            return _from_channels(x.mean(dim=(2, 3)), self.k)
        b = x.shape[0]
        return x.reshape(b, self.k, -1).transpose(0, 1)


class _Activation(nn.Module):
    def __init__(self, spec: ActivationLayer) -> None:
        super().__init__()
        self.kind, self.slope = spec.activation, spec.negative_slope

    @override
    def forward(self, x: torch.Tensor, mode: Mode, noise: torch.Tensor | None
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


_M32 = 0xFFFFFFFF


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (two xorshift-multiply rounds) of int64 tensors holding values
    below 2**32; constants below 2**31, so no product overflows int64."""
    for _ in range(2):
        x = ((x ^ (x >> 16)) * 0x45D9F3B) & _M32
    return x ^ (x >> 16)


class _Dropout(nn.Module):
    def __init__(self, rate: float, salt: int, k: int = 1, image: bool = False) -> None:
        super().__init__()
        self.rate, self.k, self.image = rate, k, image
        self.salt = salt  # distinguishes this layer's masks from other dropout layers'
        self.threshold = min(int(rate * 2**32), 2**32)

    def forward(self, x: torch.Tensor, mode: Mode, noise: torch.Tensor | None
                ) -> torch.Tensor:
        if mode != "train" or self.rate == 0.0:
            return x
        assert noise is not None, "dropout in training mode needs a (K,) key per step"
        if self.image:  # (B, K*C, H, W) seen as (K, B, C*H*W): model k's element j, as below
            b = x.shape[0]
            return self._drop(x.reshape(b, self.k, -1).transpose(0, 1), noise) \
                .transpose(0, 1).reshape(x.shape)
        return self._drop(x, noise)

    def _drop(self, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        k = x.shape[0]
        # element j of model k: hash(key_k ^ salt, j); depends on nothing else in the stack
        idx = torch.arange(math.prod(x.shape[1:]), device=x.device).view(1, *x.shape[1:])
        key = ((noise ^ self.salt) & _M32).view(k, *[1] * (x.dim() - 1))
        keep = _hash32(_hash32(key) ^ idx) >= self.threshold
        return x * keep.to(x.dtype) * (1.0 / (1.0 - self.rate))


def dropout_keys(seeds: Sequence[int], epoch: int, steps: int) -> torch.Tensor:
    """(steps, K) int64 dropout keys for one epoch: a function of each model's seed, the epoch
    and the step only, so a resumed run draws the same masks and needs no RNG state."""
    m64 = np.uint64(2**64 - 1)
    with np.errstate(over="ignore"):  # uint64 arithmetic wraps: that is the hash
        z = (np.asarray(seeds, dtype=np.uint64)[None, :] * np.uint64(0x9E3779B97F4A7C15)
             + np.uint64(epoch) * np.uint64(0xD1B54A32D192ED03)
             + np.arange(steps, dtype=np.uint64)[:, None] * np.uint64(0xBF58476D1CE4E5B9)) & m64
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return torch.from_numpy((z >> np.uint64(32)).astype(np.int64))


class StackedNetwork(nn.Module):
    """K copies of `net.modules()`; input (K, B, n_features) -> logits (K, B, output_units).

    Feature maps travel as (B, K*C, H, W), the K models' channels side by side, so that
    convolutions are one grouped conv (groups=K) and BatchNorm2d, GroupNorm, InstanceNorm and
    pools are one call each; dense layers work on (K, B, F) as batched matmuls.
    """

    def __init__(self, net: ResolvedNetwork, k: int, device: torch.device) -> None:
        super().__init__()
        self.k = k
        self.input_shape = net.input_shape
        mods: list[nn.Module] = []
        for layer, shape in zip(net.modules(), net.module_shapes(), strict=True):
            width, image = shape[0], len(shape) == 3
            if isinstance(layer, DenseLayer):
                mods.append(_Dense(k, width, layer.units, layer.use_bias))
            elif isinstance(layer, Conv2dLayer):
                mods.append(_Conv(k, width, layer))
            elif isinstance(layer, BatchNormLayer):
                mods.append(_BatchNorm(k, width, layer, device, image))
            elif isinstance(layer, LayerNormLayer):
                mods.append(_LayerNorm(k, width, layer, image))
            elif isinstance(layer, GroupNormLayer):
                mods.append(_GroupNorm(k, width, layer, image))
            elif isinstance(layer, InstanceNormLayer):
                mods.append(_InstanceNorm(k, width, layer, device))
            elif isinstance(layer, MaxPool2dLayer | AvgPool2dLayer):
                mods.append(_Pool(layer))
            elif isinstance(layer, GlobalAvgPoolLayer | FlattenLayer):
                mods.append(_ToFeatures(k, mean=isinstance(layer, GlobalAvgPoolLayer)))
            elif isinstance(layer, DropoutLayer):
                mods.append(_Dropout(layer.rate, salt=(len(mods) * 0x2545F491) & _M32, k=k,
                                     image=image))
            elif isinstance(layer, ActivationLayer):
                mods.append(_Activation(layer))
            else:
                raise TypeError(f"unknown layer {layer!r}")
        self.layers = nn.ModuleList(mods).to(device)
        self.has_dropout = any(isinstance(m, _Dropout) and m.rate > 0 for m in mods)
        self.has_batchnorm = any(isinstance(m, _BatchNorm) for m in mods)
        self._allocate(device)

    def _allocate(self, device: torch.device) -> None:
        """One flat buffer holds every parameter; layers get leaf views of it.

        Why one buffer: the optimizer then steps a single tensor (one fused kernel per step) and
        gradients are zeroed with one op. Parameter-major: parameter p of all K models is one
        contiguous (K, *shape) block, so layers compute on contiguous tensors, reshape a BN
        weight to (K*C) without a copy, and backward adds each gradient into its block with one
        op. Blocks start at multiples of PAD elements (cache-line aligned).
        """
        self.layout: dict[str, tuple[int, tuple[int, ...]]] = {}
        offset = 0
        for i, m in enumerate(self.layers):
            if isinstance(m, _Padded):
                for name, shape in m.shapes.items():
                    self.layout[f"{i}.{name}"] = (offset, shape)
                    offset += _padded(self.k * math.prod(shape))
        self.flat = torch.zeros(max(offset, PAD), device=device, requires_grad=True)
        self.flat.grad = torch.zeros_like(self.flat)
        base, grad_base = self.flat.detach(), self.flat.grad
        for i, m in enumerate(self.layers):
            if isinstance(m, _Padded):
                for name, shape in m.shapes.items():
                    off, _ = self.layout[f"{i}.{name}"]
                    n = self.k * math.prod(shape)
                    size = m.block_size(name)  # BatchNorm's spans its padding channels too
                    m.params[name] = base[off:off + n].view(self.k, *shape)
                    with torch.no_grad():
                        base[off:off + size].fill_(m.fills[name])
                    leaf = m.leaf(name, base[off:off + size])
                    leaf.requires_grad_(True)
                    # backward accumulates in place into this view of the flat gradient
                    leaf.grad = m.leaf(name, grad_base[off:off + size])
                    m.blocks[name] = leaf

    @torch.no_grad()
    def initialize(self, seeds: Sequence[int], init: str) -> None:
        """Model k's dense and conv layers as build_network(net, init=init, seed=seeds[k]) draws
        them (the same function draws both); norm layers keep weight 1, bias 0."""
        if len(seeds) != self.k:
            raise ValueError(f"{len(seeds)} seeds for {self.k} stacked models")
        weighted = [m for m in self.layers if isinstance(m, _Dense | _Conv)]
        for ordinal, m in enumerate(weighted):
            drawn = [weight_init(m.shapes["weight"], "bias" in m.shapes, init, seed, ordinal)
                     for seed in seeds]
            m.params["weight"].copy_(torch.stack([w for w, _ in drawn]))
            if "bias" in m.params:
                m.params["bias"].copy_(torch.stack([b for _, b in drawn if b is not None]))

    def zero_grad_flat(self) -> None:
        assert self.flat.grad is not None
        self.flat.grad.zero_()

    def slot(self, key: str, t: torch.Tensor, k: int) -> torch.Tensor:
        """Model k's part of a tensor laid out like `flat` (e.g. optimizer state)."""
        off, shape = self.layout[key]
        return t[off:off + self.k * math.prod(shape)].view(self.k, *shape)[k]

    def forward(self, x: torch.Tensor, mode: Mode = "eval",
                noise: torch.Tensor | None = None) -> torch.Tensor:
        """`noise`: this step's (K,) dropout keys (a row of `dropout_keys`), train mode only.
        `x` is (K, B, n_features), images flattened channel-major."""
        if len(self.input_shape) == 3:  # -> (B, K*C, H, W)
            c, h, w = self.input_shape
            x = x.transpose(0, 1).reshape(x.shape[1], self.k * c, h, w)
        for m in self.layers:
            x = m.forward(x, mode, noise)  # not m(...): hooks unused, per-call overhead saved
        return x

    def stacked_state(self) -> dict[str, torch.Tensor]:
        """(K, *shape) views of parameters and buffers, keyed as in `nn.Sequential` ("3.weight"),
        in nn.Sequential's state-dict order."""
        out: dict[str, torch.Tensor] = {}
        for i, m in enumerate(self.layers):
            if isinstance(m, _Padded):
                for name, t in m.params.items():
                    out[f"{i}.{name}"] = t
                for name, buf in m.buffers_state().items():
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


def stacked_network(net: ResolvedNetwork, *, seeds: Sequence[int], init: str,
                    device: torch.device, init_scale: float = 1.0) -> StackedNetwork:
    """K = len(seeds) models, model k initialised as build_network(net, init, seeds[k]), its
    dense and conv weights times `init_scale`."""
    model = StackedNetwork(net, len(seeds), device)
    model.initialize(seeds, init)
    if init_scale != 1.0:
        with torch.no_grad():
            for m in model.layers:
                if isinstance(m, _Dense | _Conv):
                    m.params["weight"].mul_(init_scale)
    return model
