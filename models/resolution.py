"""Resolution: a JobSpec checked against its dataset's shape, before anything is allocated.

The shorthand expands into explicit layers, every layer's output shape is inferred, the output
layer is matched to the classes and the limits are checked; every problem raises `SpecError`
with a message that says what to change. Importable without torch, like `models.spec`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from models.spec import (
    Activation,
    ActivationLayer,
    AnyLayer,
    AvgPool2dLayer,
    BatchNormLayer,
    BatchNormPlacement,
    Conv2dLayer,
    DenseLayer,
    DropoutLayer,
    FlattenLayer,
    GlobalAvgPoolLayer,
    GroupNormLayer,
    InstanceNormLayer,
    JobSpec,
    LayerNormLayer,
    Limits,
    MaxPool2dLayer,
    NetworkSpec,
    NormLayer,
    PoolLayer,
    SpecError,
    TrainingSpec,
)

Shape = tuple[int, ...]  # one row: (F,) or (C, H, W)


@dataclass(frozen=True)
class SummaryRow:
    name: str
    type: str
    output_shape: tuple[int | None, ...]  # (None, F) or (None, C, H, W)
    trainable: int
    non_trainable: int

    @property
    def params(self) -> int:
        return self.trainable + self.non_trainable


def _fmt(shape: Shape) -> str:
    return "(" + ", ".join(map(str, shape)) + ")"


def conv_padding(layer: Conv2dLayer) -> int | str:
    """PyTorch's padding argument: an int, or "same" for even kernels (padded asymmetrically)."""
    if layer.padding == "valid":
        return 0
    if layer.padding == "same":
        return (layer.kernel_size - 1) // 2 if layer.kernel_size % 2 else "same"
    return int(layer.padding)


def pool_stride(layer: PoolLayer) -> int:
    return layer.stride or layer.pool_size


def output_shape(layer: AnyLayer, shape: Shape, index: int) -> Shape:
    """One layer's output shape for input `shape`; SpecError names the layer and the shapes."""
    where = f"{layer.type} layer {index}"
    image = len(shape) == 3
    if isinstance(layer, Conv2dLayer | MaxPool2dLayer | AvgPool2dLayer | GlobalAvgPoolLayer
                  | FlattenLayer | InstanceNormLayer) and not image:
        raise SpecError([f"{where} needs an image input (C, H, W) but gets {_fmt(shape)} "
                         "features: use an image dataset (e.g. digits with layout 'image') or "
                         "move it before the flatten/global_avg_pool"])
    if isinstance(layer, DenseLayer):
        if image:
            raise SpecError([f"{where} follows a {_fmt(shape)} feature map: add a 'flatten' or "
                             "'global_avg_pool' layer before it"])
        return (layer.units,)
    if isinstance(layer, Conv2dLayer):
        c, h, w = shape
        k, s = layer.kernel_size, layer.stride
        if layer.padding == "same":
            if s != 1:
                raise SpecError([f"{where}: padding 'same' needs stride 1 (it has stride {s}): "
                                 "use padding 'valid' or an int with that stride"])
            return (layer.filters, h, w)
        p = int(conv_padding(layer))
        if k > h + 2 * p or k > w + 2 * p:
            raise SpecError([f"{where}: kernel {k} larger than its {h}×{w} input "  # noqa: RUF001
                             f"(padding {p}): use a smaller kernel, padding 'same', or fewer "
                             "pools before it"])
        return (layer.filters, (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1)
    if isinstance(layer, MaxPool2dLayer | AvgPool2dLayer):
        c, h, w = shape
        k, s = layer.pool_size, pool_stride(layer)
        if k > h or k > w:
            raise SpecError([f"{where}: pool {k} larger than its {h}×{w} input: "  # noqa: RUF001
                             "use a smaller "
                             "pool_size or fewer pools before it"])
        return (c, (h - k) // s + 1, (w - k) // s + 1)
    if isinstance(layer, GlobalAvgPoolLayer):
        return (shape[0],)
    if isinstance(layer, FlattenLayer):
        return (math.prod(shape),)
    if isinstance(layer, GroupNormLayer) and shape[0] % layer.groups:
        raise SpecError([f"{where}: {layer.groups} groups do not divide its {shape[0]} "
                         f"{'channels' if image else 'features'}: use a divisor of {shape[0]}"])
    if isinstance(layer, ActivationLayer) and image and layer.activation == Activation.softmax:
        raise SpecError([f"{where}: softmax over a {_fmt(shape)} feature map is not supported: "
                         "use softmax on the output dense layer only"])
    return shape  # norms, activations, dropout keep the shape


def layer_shapes(layers: Sequence[AnyLayer], input_shape: Shape) -> list[Shape]:
    """Each layer's output shape; raises SpecError at the first that cannot take its input."""
    shapes: list[Shape] = []
    shape = tuple(input_shape)
    for i, layer in enumerate(layers):
        shape = output_shape(layer, shape, i)
        shapes.append(shape)
    return shapes


@dataclass(frozen=True)
class ResolvedNetwork:
    """The explicit layer list, output layer included, for a dataset of known shape.

    `layers` ends with the output dense (its activation, if any, is the head). `modules()`
    expands it into primitive modules, one torch module each; state_dict keys are
    `<module index>.<param>` of an `nn.Sequential` over `modules()` minus the head.
    """

    input_shape: Shape
    n_classes: int
    layers: list[AnyLayer]
    loss: Literal["binary_crossentropy", "categorical_crossentropy"]
    head: Literal["sigmoid", "softmax", "linear"]
    warnings: list[str] = field(default_factory=list)

    @property
    def n_features(self) -> int:
        """Values in one input row (C*H*W for images)."""
        return math.prod(self.input_shape)

    @property
    def is_image(self) -> bool:
        return len(self.input_shape) == 3

    @property
    def output_units(self) -> int:
        return _last_dense(self.layers).units

    def modules(self) -> list[AnyLayer]:
        """Primitive modules: a dense's or conv's activation becomes its own ActivationLayer.

        The final sigmoid/softmax (the head) is left out: training works on logits and the
        predictor applies the head.
        """
        out: list[AnyLayer] = []
        for layer in self.layers:
            if isinstance(layer, DenseLayer | Conv2dLayer):
                out.append(layer.model_copy(update={"activation": None}))
                if layer.activation not in (None, Activation.linear):
                    out.append(ActivationLayer(activation=layer.activation))
            elif isinstance(layer, ActivationLayer) and layer.activation == Activation.linear:
                continue
            else:
                out.append(layer)
        if self.head != "linear":
            assert isinstance(out[-1], ActivationLayer)
            out.pop()
        return out

    def module_shapes(self) -> list[Shape]:
        """Input shape of each primitive module in `modules()`."""
        shapes, shape = [], self.input_shape
        for i, m in enumerate(self.modules()):
            shapes.append(shape)
            shape = output_shape(m, shape, i)
        return shapes

    def summary(self) -> list[SummaryRow]:
        return summarize(self.layers, self.input_shape)

    @property
    def has_batchnorm(self) -> bool:
        return any(isinstance(layer, BatchNormLayer) for layer in self.layers)


def _last_dense(layers: Sequence[AnyLayer]) -> DenseLayer:
    return next(layer for layer in reversed(layers) if isinstance(layer, DenseLayer))


def _as_shape(shape: Shape | int) -> Shape:
    return (shape,) if isinstance(shape, int) else tuple(shape)


def _params(layer: AnyLayer, shape: Shape) -> tuple[int, int]:
    """(trainable, non-trainable) of one layer on input `shape`, as Keras counts them: norm
    statistics (BatchNorm's and a tracking InstanceNorm's running mean and variance) are
    non-trainable; norms after a conv have one scale and shift per channel."""
    width = shape[0]  # features, or channels of a feature map
    if isinstance(layer, DenseLayer):
        return width * layer.units + (layer.units if layer.use_bias else 0), 0
    if isinstance(layer, Conv2dLayer):
        k = layer.kernel_size
        return width * layer.filters * k * k + (layer.filters if layer.use_bias else 0), 0
    if isinstance(layer, BatchNormLayer):
        return (2 * width if layer.affine else 0), (2 * width if layer.track_running_stats else 0)
    if isinstance(layer, InstanceNormLayer):
        return (2 * width if layer.affine else 0), (2 * width if layer.track_running_stats else 0)
    if isinstance(layer, GroupNormLayer):
        return (2 * width if layer.affine else 0), 0
    if isinstance(layer, LayerNormLayer):
        return (2 * width if layer.elementwise_affine else 0), 0
    return 0, 0


def summarize(layers: Sequence[AnyLayer], input_shape: Shape | int) -> list[SummaryRow]:
    """Keras-style rows: name, output shape [None, ...], trainable and non-trainable counts."""
    rows: list[SummaryRow] = []
    shape = _as_shape(input_shape)
    counts: dict[str, int] = {}
    for i, layer in enumerate(layers):
        kind = layer.type
        counts[kind] = counts.get(kind, 0) + 1
        name = kind if counts[kind] == 1 else f"{kind}_{counts[kind] - 1}"
        trainable, non_trainable = _params(layer, shape)
        shape = output_shape(layer, shape, i)
        rows.append(SummaryRow(name, kind, (None, *shape), trainable, non_trainable))
    return rows


def _groups_for(width: int, groups: int | None) -> int:
    if groups is not None:
        return groups
    return next(g for g in range(min(8, width), 0, -1) if width % g == 0)


def _block(main: DenseLayer | Conv2dLayer, net: NetworkSpec, norm: str) -> list[AnyLayer]:
    """One shorthand block: the layer, its normalisation where `batchnorm` places it (before
    the activation by default) and its activation."""
    placement = net.batchnorm
    if norm == "none":
        return [main.model_copy(update={"activation": net.activation})]
    if placement == BatchNormPlacement.none:
        placement = BatchNormPlacement.before_activation
    width = main.units if isinstance(main, DenseLayer) else main.filters
    n: NormLayer
    if norm == "batchnorm":
        n = BatchNormLayer(momentum=net.momentum if net.momentum is not None else 0.1,
                           eps=net.eps if net.eps is not None else 1e-5, affine=net.affine,
                           track_running_stats=net.track_running_stats)
    elif norm == "groupnorm":
        n = GroupNormLayer(groups=_groups_for(width, net.groups),
                           eps=net.eps if net.eps is not None else 1e-5, affine=net.affine)
    elif norm == "layernorm":
        n = LayerNormLayer(eps=net.eps if net.eps is not None else 1e-5,
                           elementwise_affine=net.affine)
    else:
        n = InstanceNormLayer(eps=net.eps if net.eps is not None else 1e-5)
    if placement == BatchNormPlacement.before_activation:
        return [main, n, ActivationLayer(activation=net.activation)]
    return [main.model_copy(update={"activation": net.activation}), n]


def expand_shorthand(net: NetworkSpec, n_classes: int) -> list[AnyLayer]:
    """The explicit layer list a `conv`/`hidden` shorthand stands for, output layer included."""
    norm = net.norm or ("batchnorm" if net.batchnorm != BatchNormPlacement.none else "none")
    layers: list[AnyLayer] = []
    for filters in net.conv or []:
        layers += _block(Conv2dLayer(filters=filters, kernel_size=net.kernel_size,
                                     padding=net.padding), net, norm)
        if net.pool != "none":
            layers.append(MaxPool2dLayer() if net.pool == "max" else AvgPool2dLayer())
    if net.conv:
        layers.append(GlobalAvgPoolLayer() if net.reduce == "global_avg_pool"
                      else FlattenLayer())
    for units in net.hidden or []:
        layers += _block(DenseLayer(units=units), net, "none" if norm == "instancenorm" else norm)
        if net.dropout > 0:
            layers.append(DropoutLayer(rate=net.dropout))
    binary = n_classes == 2
    units = net.output_units or (1 if binary else n_classes)
    activation = net.output_activation or (Activation.sigmoid if units == 1 else Activation.softmax)
    layers.append(DenseLayer(units=units, activation=activation))
    return layers


# the output activations that give class probabilities (or logits), as the head's name
_HEADS: dict[Activation, Literal["sigmoid", "softmax", "linear"]] = {
    Activation.sigmoid: "sigmoid", Activation.softmax: "softmax", Activation.linear: "linear"}


def _head_of(layers: Sequence[AnyLayer]
             ) -> tuple[Literal["sigmoid", "softmax", "linear"], list[str]]:
    errors: list[str] = []
    last = layers[-1]
    if isinstance(last, DenseLayer):
        act = last.activation or Activation.linear
    elif isinstance(last, ActivationLayer) and len(layers) > 1 \
            and isinstance(layers[-2], DenseLayer) \
            and layers[-2].activation in (None, Activation.linear):
        act = last.activation
    else:
        errors.append(
            f"the last layer ({last.type}) must be the output dense layer, optionally followed "
            "by an activation layer; move normalisation/dropout before the output dense"
        )
        return "linear", errors
    head = _HEADS.get(act)
    if head is None:
        errors.append(
            f"output activation '{act}' cannot give class probabilities: use 'sigmoid' "
            "(1 unit, binary), 'softmax' (one unit per class) or 'linear' (logits)"
        )
        return "linear", errors
    return head, errors


def resolve_network(net: NetworkSpec, input_shape: Shape | int, n_classes: int
                    ) -> ResolvedNetwork:
    input_shape = _as_shape(input_shape)
    errors: list[str] = []
    layers = list(net.layers) if net.layers is not None else expand_shorthand(net, n_classes)
    if net.layers is None and net.conv and len(input_shape) != 3:
        raise SpecError([f"network.conv needs an image dataset (C, H, W); this one has "
                         f"{_fmt(input_shape)} features: use 'hidden' only, or an image dataset"])
    if not any(isinstance(layer, DenseLayer) for layer in layers):
        raise SpecError(["network has no dense layer: the output layer must be dense"])
    layer_shapes(layers, input_shape)  # raises with the first layer that cannot take its input
    head, head_errors = _head_of(layers)
    errors += head_errors
    units = _last_dense(layers).units
    if head == "softmax" and units == 1:
        errors.append(
            "softmax on a 1-unit output is always 1.0: use 'sigmoid' for a binary output, or "
            f"{n_classes} units with softmax"
        )
    elif units == 1 and n_classes != 2:
        errors.append(
            f"the dataset has {n_classes} classes but the output layer has 1 unit: "
            f"give the output dense {n_classes} units with softmax"
        )
    elif units != 1 and units != n_classes:
        errors.append(
            f"the output dense has {units} units but the dataset has {n_classes} classes: "
            f"use {n_classes} units (softmax)" + (" or 1 unit (sigmoid)" if n_classes == 2 else "")
        )
    elif units == 1 and head not in ("sigmoid", "linear"):
        errors.append("a 1-unit output needs 'sigmoid' (or 'linear' logits)")
    loss: Literal["binary_crossentropy", "categorical_crossentropy"] = (
        "binary_crossentropy" if units == 1 else "categorical_crossentropy"
    )
    if errors:
        raise SpecError(errors)
    return ResolvedNetwork(input_shape, n_classes, layers, loss, head)


def parameter_count(layers: Sequence[AnyLayer], input_shape: Shape | int) -> int:
    return sum(row.params for row in summarize(layers, input_shape))


def activation_bytes(net: ResolvedNetwork, batch_size: int) -> int:
    """float32 bytes of one batch's layer outputs: batch x the sum of the output sizes x 4."""
    return 4 * batch_size * sum(math.prod(d or 1 for d in row.output_shape[1:])
                                for row in net.summary())


def check_limits(spec: JobSpec, input_shape: Shape | int, n_rows: int, limits: Limits) -> None:
    """Bounds a user can hit, checked on the spec alone (pure arithmetic, nothing allocated)."""
    errors: list[str] = []
    shape = _as_shape(input_shape)
    net = spec.network
    widths = [layer.units for layer in net.layers or [] if isinstance(layer, DenseLayer)]
    widths += list(net.hidden or []) + ([net.output_units] if net.output_units else [])
    filters = [layer.filters for layer in net.layers or [] if isinstance(layer, Conv2dLayer)]
    filters += list(net.conv or [])
    n_layers = len(net.layers) if net.layers is not None else (
        3 * len(net.hidden or []) + 4 * len(net.conv or []) + 2)
    if n_layers > limits.max_layers:
        errors.append(f"network has {n_layers} layers; the limit is {limits.max_layers}")
    too_wide = [w for w in widths if w > limits.max_units]
    if too_wide:
        errors.append(f"a dense layer has {max(too_wide)} units; the limit is {limits.max_units} "
                      "units per layer")
    too_many = [f for f in filters if f > limits.max_units]
    if too_many:
        errors.append(f"a conv2d layer has {max(too_many)} filters; the limit is "
                      f"{limits.max_units} filters per layer")
    if spec.training.epochs > limits.max_epochs:
        errors.append(f"training.epochs is {spec.training.epochs}; the limit is "
                      f"{limits.max_epochs}")
    if spec.training.batch_size > limits.max_batch_size:
        errors.append(f"training.batch_size is {spec.training.batch_size}; the limit is "
                      f"{limits.max_batch_size}")
    if n_rows > limits.max_rows:
        errors.append(f"the dataset has {n_rows} rows; the limit is {limits.max_rows}")
    if len(shape) == 1 and shape[0] > limits.max_features:
        errors.append(f"the dataset has {shape[0]} feature columns; the limit is "
                      f"{limits.max_features}")
    if len(shape) > 1 and math.prod(shape) > limits.max_input_values:
        errors.append(f"one input is {_fmt(shape)} = {math.prod(shape):,} values; the limit is "
                      f"{limits.max_input_values:,}: use smaller images")
    if errors:
        raise SpecError(errors)


@dataclass(frozen=True)
class ResolvedJob:
    spec: JobSpec
    network: ResolvedNetwork
    n_rows: int
    warnings: list[str]

    @property
    def steps_per_epoch(self) -> int:
        n_train = train_rows(self.n_rows, self.spec.training.validation_split)
        return math.ceil(n_train / self.spec.training.batch_size)


def train_rows(n_rows: int, validation_split: float) -> int:
    """Rows left for training; Keras's rule: int(n * (1 - split)) train, the rest validation."""
    return int(n_rows * (1.0 - validation_split))


def resolve_job(spec: JobSpec, *, n_classes: int, n_rows: int,
                input_shape: Shape | None = None, n_features: int | None = None,
                limits: Limits | None = None) -> ResolvedJob:
    """Every check that needs the dataset's shape (`input_shape`, or `n_features` for a table);
    raises SpecError, returns warnings."""
    if input_shape is not None and n_features is None:
        shape = _as_shape(input_shape)
    elif n_features is not None and input_shape is None:
        shape = _as_shape(n_features)
    else:
        raise TypeError("resolve_job needs exactly one of input_shape and n_features")
    limits = limits or Limits()
    check_limits(spec, shape, n_rows, limits)
    net = resolve_network(spec.network, shape, n_classes)
    errors: list[str] = []
    n_params = parameter_count(net.layers, shape)
    if n_params > limits.max_params:
        errors.append(f"the network has {n_params:,} parameters; the limit is "
                      f"{limits.max_params:,}: use fewer or narrower layers")
    t = spec.training
    act = activation_bytes(net, t.batch_size)
    if act > limits.max_activation_bytes:
        errors.append(f"one batch of {t.batch_size} needs {act / 2**20:,.0f} MiB of layer "
                      f"outputs; the limit is {limits.max_activation_bytes / 2**20:,.0f} MiB: "
                      "lower training.batch_size, use fewer filters or pool earlier")
    if spec.training.loss is not None and spec.training.loss != net.loss:
        errors.append(f"training.loss '{t.loss}' does not fit a {net.output_units}-unit output: "
                      f"use '{net.loss}' (or leave loss out)")
    n_train = train_rows(n_rows, t.validation_split)
    if n_train < 2:
        errors.append(f"validation_split {t.validation_split} leaves {n_train} training rows "
                      f"of {n_rows}: lower it")
    if t.validation_split > 0 and n_rows - n_train < 1:
        errors.append(f"validation_split {t.validation_split} leaves no validation row: raise "
                      "it or set it to 0")
    if net.has_batchnorm and t.batch_size < 2:
        errors.append("training.batch_size must be at least 2 when BatchNorm trains (batch "
                      "statistics of one row are undefined): use 16 or more")
    if errors:
        raise SpecError(errors)
    warnings = bn_warnings(net.layers, t)
    return ResolvedJob(spec, ResolvedNetwork(net.input_shape, net.n_classes, net.layers,
                                             net.loss, net.head, warnings), n_rows, warnings)


def bn_warnings(layers: Sequence[AnyLayer], training: TrainingSpec) -> list[str]:
    """Accepted, but BatchNorm is likely to mislead here."""
    warnings: list[str] = []
    bns = [(i, layer) for i, layer in enumerate(layers) if isinstance(layer, BatchNormLayer)]
    if not bns:
        return warnings
    if training.batch_size < 16:
        warnings.append(f"batch_size {training.batch_size} is under 16: BatchNorm's batch "
                        "statistics are noisy at this size (16-32 or more works best)")
    last_dense = max(i for i, layer in enumerate(layers) if isinstance(layer, DenseLayer))
    for i, bn in bns:
        prev = layers[i - 1] if i > 0 else None
        if isinstance(prev, DenseLayer | Conv2dLayer) and prev.use_bias and prev.activation in (
                None, Activation.linear):
            warnings.append(f"layer {i - 1} ({prev.type}) has a bias directly before BatchNorm "
                            f"layer {i}, which cancels it: set use_bias false")
        if i == last_dense - 1:
            warnings.append(f"BatchNorm layer {i} sits directly before the output layer")
        if not bn.track_running_stats:
            warnings.append(f"BatchNorm layer {i} has track_running_stats false: eval mode and "
                            "inference will use each request's batch statistics")
    return warnings

