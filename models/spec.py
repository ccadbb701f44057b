"""The job spec: one pydantic schema for the API body, the stored job and the network builder.

Importable without torch (the client uses it). Structural checks live in the pydantic models;
checks that need the dataset's shape (output width, parameter budget) live in `resolve_job`,
which runs before anything is allocated and raises `SpecError` with messages that say what to
change.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator


class SpecError(ValueError):
    """A spec that cannot run; `errors` holds one actionable message per problem."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


class Activation(StrEnum):
    relu = "relu"
    leaky_relu = "leaky_relu"
    gelu = "gelu"
    tanh = "tanh"
    sigmoid = "sigmoid"
    softmax = "softmax"
    linear = "linear"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---------------------------------------------------------------------------- layers


class DenseLayer(_Strict):
    type: Literal["dense"] = "dense"
    units: int = Field(ge=1, description="Output width of the layer.")
    activation: Activation | None = None
    use_bias: bool = True


class BatchNormLayer(_Strict):
    """BatchNorm1d options in PyTorch's convention (Keras momentum 0.99 == PyTorch 0.01)."""

    type: Literal["batchnorm"] = "batchnorm"
    momentum: float = Field(default=0.1, gt=0.0, lt=1.0)
    eps: float = Field(default=1e-5, gt=0.0, le=1.0)
    affine: bool = True
    track_running_stats: bool = True


class ActivationLayer(_Strict):
    type: Literal["activation"] = "activation"
    activation: Activation
    negative_slope: float = Field(default=0.01, ge=0.0, le=1.0, description="leaky_relu only")


class DropoutLayer(_Strict):
    type: Literal["dropout"] = "dropout"
    rate: float = Field(ge=0.0, lt=1.0)


class LayerNormLayer(_Strict):
    type: Literal["layernorm"] = "layernorm"
    eps: float = Field(default=1e-5, gt=0.0, le=1.0)
    elementwise_affine: bool = True


Layer = Annotated[
    DenseLayer | BatchNormLayer | ActivationLayer | DropoutLayer | LayerNormLayer,
    Field(discriminator="type"),
]


class BatchNormPlacement(StrEnum):
    none = "none"
    before_activation = "before_activation"  # Linear -> BN -> act (the seed's PyTorch example)
    after_activation = "after_activation"  # Dense(act) -> BN (the seed's Keras example)


class NetworkSpec(_Strict):
    """Either an explicit `layers` list or the `hidden` shorthand; never both.

    `momentum_convention: "keras"` reads every BN momentum as Keras's (0.99) and stores it in
    PyTorch's (0.01), so the stored spec spells one model one way.
    """

    layers: list[Layer] | None = None
    hidden: list[Annotated[int, Field(ge=1)]] | None = None
    activation: Activation = Activation.relu
    batchnorm: BatchNormPlacement = BatchNormPlacement.none
    momentum: float | None = Field(default=None, gt=0.0, lt=1.0)
    eps: float | None = Field(default=None, gt=0.0, le=1.0)
    affine: bool = True
    track_running_stats: bool = True
    momentum_convention: Literal["pytorch", "keras"] = "pytorch"
    output_units: int | None = Field(default=None, ge=1)
    output_activation: Activation | None = None

    @model_validator(mode="after")
    def _one_form_and_pytorch_momentum(self) -> NetworkSpec:
        if (self.layers is None) == (self.hidden is None):
            raise ValueError(
                "network needs exactly one of 'layers' (explicit list) or 'hidden' (shorthand)"
            )
        if self.layers is not None and len(self.layers) == 0:
            raise ValueError("network.layers is empty: give at least the output dense layer")
        if self.momentum_convention == "keras":
            if self.momentum is not None:
                self.momentum = _keras_to_torch_momentum(self.momentum)
            for layer in self.layers or []:
                if isinstance(layer, BatchNormLayer):
                    layer.momentum = _keras_to_torch_momentum(layer.momentum)
            self.momentum_convention = "pytorch"
        return self


def _keras_to_torch_momentum(m: float) -> float:
    # Keras: running = m*running + (1-m)*batch; PyTorch: running = (1-m)*running + m*batch
    torch_m = round(1.0 - m, 12)
    if not 0.0 < torch_m < 1.0:  # a Keras momentum within 1e-12 of 0 or 1
        raise ValueError(f"Keras momentum {m!r} is PyTorch momentum {torch_m!r}, which must be "
                         "strictly between 0 and 1: use a Keras momentum such as 0.99")
    return torch_m


# ---------------------------------------------------------------------------- datasets


class _Generated(_Strict):
    n_samples: int = Field(default=500, ge=4)
    noise: float = Field(default=0.1, ge=0.0, le=10.0)
    seed: int = Field(default=0, ge=0, le=2**32 - 1)


class CirclesDataset(_Generated):
    name: Literal["concentric_circles"]
    factor: float = Field(default=0.5, gt=0.0, lt=1.0, description="inner radius / outer radius")


class MoonsDataset(_Generated):
    name: Literal["moons"]


class XorDataset(_Generated):
    name: Literal["xor"]


class SpiralsDataset(_Generated):
    name: Literal["spirals"]
    n_classes: int = Field(default=2, ge=2, le=10)
    turns: float = Field(default=1.5, gt=0.0, le=10.0)


class BlobsDataset(_Generated):
    name: Literal["blobs"]
    n_classes: int = Field(default=3, ge=2, le=100)
    n_features: int = Field(default=2, ge=1, le=1024)
    cluster_std: float = Field(default=1.0, gt=0.0, le=100.0)


NOTEBOOK_ROWS = 499


class NotebookDataset(_Strict):
    """The seed notebook's concertriccir2.csv as shipped with bnlab: 499 rows (X, Y, class) in the
    file's order, so a `tail` split takes the same validation rows as Keras's validation_split."""

    name: Literal["concertriccir2"]

    @property
    def n_samples(self) -> int:
        return NOTEBOOK_ROWS


BuiltinDataset = (CirclesDataset | MoonsDataset | XorDataset | SpiralsDataset | BlobsDataset
                  | NotebookDataset)
GeneratedDataset = Annotated[BuiltinDataset, Field(discriminator="name")]

ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"


class UploadedDataset(_Strict):
    id: str = Field(pattern=ID_PATTERN, description="id returned by POST /v1/datasets")
    label_column: str | None = Field(default=None, max_length=256)


def _dataset_kind(value: Any) -> str:
    if isinstance(value, dict):
        return "uploaded" if "id" in value else "generated"
    return "uploaded" if isinstance(value, UploadedDataset) else "generated"


DatasetSpec = Annotated[
    Annotated[UploadedDataset, Tag("uploaded")] | Annotated[GeneratedDataset, Tag("generated")],
    Discriminator(_dataset_kind),
]


def generated_shape(ds: BuiltinDataset) -> tuple[int, int]:
    """(n_features, n_classes) of a built-in dataset, known without generating or reading it."""
    if isinstance(ds, BlobsDataset):
        return ds.n_features, ds.n_classes
    if isinstance(ds, SpiralsDataset):
        return 2, ds.n_classes
    return 2, 2


# ---------------------------------------------------------------------------- training


class OptimizerSpec(_Strict):
    name: Literal["adam", "adamw", "sgd", "rmsprop"] = "adam"
    lr: float = Field(default=1e-3, gt=0.0, le=10.0)
    weight_decay: float = Field(default=0.0, ge=0.0, le=1.0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(default=1e-7, gt=0.0, le=1.0, description="Keras's default 1e-7")
    momentum: float = Field(default=0.0, ge=0.0, lt=1.0, description="sgd and rmsprop")
    nesterov: bool = False
    alpha: float = Field(default=0.9, gt=0.0, lt=1.0, description="rmsprop smoothing (Keras rho)")

    @model_validator(mode="after")
    def _check(self) -> OptimizerSpec:
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError("optimizer.betas must both be in [0, 1)")
        if self.nesterov and (self.name != "sgd" or self.momentum <= 0):
            raise ValueError("optimizer.nesterov needs name 'sgd' and momentum > 0")
        return self


class StepSchedule(_Strict):
    type: Literal["step"]
    step_size: int = Field(ge=1, description="epochs between decays")
    gamma: float = Field(default=0.1, gt=0.0, le=1.0)


class CosineSchedule(_Strict):
    type: Literal["cosine"]
    t_max: int | None = Field(default=None, ge=1, description="epochs; default: all epochs")
    eta_min: float = Field(default=0.0, ge=0.0)


class PlateauSchedule(_Strict):
    type: Literal["reduce_on_plateau"]
    monitor: Literal["val_loss", "val_accuracy", "loss", "accuracy"] = "val_loss"
    factor: float = Field(default=0.1, gt=0.0, lt=1.0)
    patience: int = Field(default=10, ge=0)
    min_lr: float = Field(default=0.0, ge=0.0)


LRSchedule = Annotated[StepSchedule | CosineSchedule | PlateauSchedule, Field(discriminator="type")]

Metric = Literal["val_loss", "val_accuracy", "loss", "accuracy"]


def metric_mode(metric: str) -> Literal["min", "max"]:
    return "min" if metric.endswith("loss") else "max"


class EarlyStopping(_Strict):
    monitor: Metric = "val_loss"
    patience: int = Field(default=10, ge=0)
    min_delta: float = Field(default=0.0, ge=0.0)


class TrainingSpec(_Strict):
    epochs: int = Field(default=200, ge=1)
    batch_size: int = Field(default=32, ge=1)
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec)
    lr_schedule: LRSchedule | None = None
    loss: Literal["binary_crossentropy", "categorical_crossentropy"] | None = None
    validation_split: float = Field(default=0.2, ge=0.0, lt=1.0)
    split: Literal["tail", "random", "stratified"] = "tail"
    shuffle: bool = True
    seed: int = Field(default=0, ge=0, le=2**32 - 1)
    early_stopping: EarlyStopping | None = None
    init: Literal["pytorch", "keras"] = "pytorch"
    record_train_mode_val: bool = False
    checkpoint_monitor: Metric = "val_accuracy"


class JobSpec(_Strict):
    name: str | None = Field(default=None, max_length=200)
    dataset: DatasetSpec
    network: NetworkSpec
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    device: str = Field(default="auto", pattern=r"^(auto|cpu|cuda(:\d{1,2})?)$")


# ---------------------------------------------------------------------------- resolution


@dataclass(frozen=True)
class Limits:
    """Bounds checked before allocation; the API and worker fill these from their settings."""

    max_params: int = 10_000_000
    max_layers: int = 64
    max_units: int = 65_536
    max_epochs: int = 10_000
    max_batch_size: int = 65_536
    max_rows: int = 1_000_000
    max_features: int = 1_024


@dataclass(frozen=True)
class SummaryRow:
    name: str
    type: str
    output_shape: tuple[int | None, int]
    trainable: int
    non_trainable: int

    @property
    def params(self) -> int:
        return self.trainable + self.non_trainable


@dataclass(frozen=True)
class ResolvedNetwork:
    """The explicit layer list, output layer included, for a dataset of known shape.

    `layers` ends with the output dense (its activation, if any, is the head). `modules()`
    expands it into primitive modules, one torch module each; state_dict keys are
    `<module index>.<param>` of an `nn.Sequential` over `modules()` minus the head.
    """

    n_features: int
    n_classes: int
    layers: list[DenseLayer | BatchNormLayer | ActivationLayer | DropoutLayer | LayerNormLayer]
    loss: Literal["binary_crossentropy", "categorical_crossentropy"]
    head: Literal["sigmoid", "softmax", "linear"]
    warnings: list[str] = field(default_factory=list)

    @property
    def output_units(self) -> int:
        return _last_dense(self.layers).units

    def modules(self) -> list[DenseLayer | BatchNormLayer | ActivationLayer | DropoutLayer
                            | LayerNormLayer]:
        """Primitive modules: a dense's activation becomes its own ActivationLayer.

        The final sigmoid/softmax (the head) is left out: training works on logits and the
        predictor applies the head.
        """
        out: list[Any] = []
        for layer in self.layers:
            if isinstance(layer, DenseLayer) and layer.activation not in (None, Activation.linear):
                out.append(layer.model_copy(update={"activation": None}))
                out.append(ActivationLayer(activation=layer.activation))
            elif isinstance(layer, DenseLayer):
                out.append(layer.model_copy(update={"activation": None}))
            elif isinstance(layer, ActivationLayer) and layer.activation == Activation.linear:
                continue
            else:
                out.append(layer)
        if self.head != "linear":
            assert isinstance(out[-1], ActivationLayer)
            out.pop()
        return out

    def summary(self) -> list[SummaryRow]:
        return summarize(self.layers, self.n_features)

    @property
    def has_batchnorm(self) -> bool:
        return any(isinstance(layer, BatchNormLayer) for layer in self.layers)


def _last_dense(layers: list[Any]) -> DenseLayer:
    return next(layer for layer in reversed(layers) if isinstance(layer, DenseLayer))


def summarize(layers: list[Any], n_features: int) -> list[SummaryRow]:
    """Keras-style rows; BN's running mean and variance count as non-trainable, as Keras does."""
    rows: list[SummaryRow] = []
    width = n_features
    counts: dict[str, int] = {}
    for layer in layers:
        kind = layer.type
        counts[kind] = counts.get(kind, 0) + 1
        name = kind if counts[kind] == 1 else f"{kind}_{counts[kind] - 1}"
        trainable = non_trainable = 0
        if isinstance(layer, DenseLayer):
            trainable = width * layer.units + (layer.units if layer.use_bias else 0)
            width = layer.units
        elif isinstance(layer, BatchNormLayer):
            trainable = 2 * width if layer.affine else 0
            non_trainable = 2 * width if layer.track_running_stats else 0
        elif isinstance(layer, LayerNormLayer):
            trainable = 2 * width if layer.elementwise_affine else 0
        rows.append(SummaryRow(name, kind, (None, width), trainable, non_trainable))
    return rows


def expand_shorthand(net: NetworkSpec, n_classes: int) -> list[Any]:
    """The explicit layer list a `hidden` shorthand stands for, output layer included."""
    assert net.hidden is not None
    bn = BatchNormLayer(
        momentum=net.momentum if net.momentum is not None else 0.1,
        eps=net.eps if net.eps is not None else 1e-5,
        affine=net.affine,
        track_running_stats=net.track_running_stats,
    )
    layers: list[Any] = []
    for units in net.hidden:
        if net.batchnorm == BatchNormPlacement.before_activation:
            layers += [DenseLayer(units=units), bn.model_copy(),
                       ActivationLayer(activation=net.activation)]
        elif net.batchnorm == BatchNormPlacement.after_activation:
            layers += [DenseLayer(units=units, activation=net.activation), bn.model_copy()]
        else:
            layers.append(DenseLayer(units=units, activation=net.activation))
    binary = n_classes == 2
    units = net.output_units or (1 if binary else n_classes)
    activation = net.output_activation or (Activation.sigmoid if units == 1 else Activation.softmax)
    layers.append(DenseLayer(units=units, activation=activation))
    return layers


def _head_of(layers: list[Any]) -> tuple[Literal["sigmoid", "softmax", "linear"], list[str]]:
    errors: list[str] = []
    last = layers[-1]
    if isinstance(last, DenseLayer):
        act = last.activation or Activation.linear
    elif isinstance(last, ActivationLayer) and isinstance(layers[-2], DenseLayer) \
            and layers[-2].activation in (None, Activation.linear):
        act = last.activation
    else:
        errors.append(
            f"the last layer ({last.type}) must be the output dense layer, optionally followed "
            "by an activation layer; move normalisation/dropout before the output dense"
        )
        return "linear", errors
    if act not in (Activation.sigmoid, Activation.softmax, Activation.linear):
        errors.append(
            f"output activation '{act}' cannot give class probabilities: use 'sigmoid' "
            "(1 unit, binary), 'softmax' (one unit per class) or 'linear' (logits)"
        )
        return "linear", errors
    return act.value, errors  # type: ignore[return-value]


def resolve_network(net: NetworkSpec, n_features: int, n_classes: int) -> ResolvedNetwork:
    errors: list[str] = []
    layers = list(net.layers) if net.layers is not None else expand_shorthand(net, n_classes)
    dense_seen = False
    for i, layer in enumerate(layers):
        if isinstance(layer, DenseLayer):
            dense_seen = True
        elif isinstance(layer, BatchNormLayer | LayerNormLayer) and not dense_seen:
            errors.append(
                f"layer {i} ({layer.type}) comes before any dense layer: place it after a dense "
                "layer (normalising the raw inputs is the dataset's job)"
            )
    if not dense_seen:
        raise SpecError([*errors, "network has no dense layer: the output layer must be dense"])
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
    return ResolvedNetwork(n_features, n_classes, layers, loss, head)


def parameter_count(layers: list[Any], n_features: int) -> int:
    return sum(row.params for row in summarize(layers, n_features))


def check_limits(spec: JobSpec, n_features: int, n_rows: int, limits: Limits) -> None:
    """Bounds a user can hit, checked on the spec alone (pure arithmetic, nothing allocated)."""
    errors: list[str] = []
    net = spec.network
    widths = [layer.units for layer in net.layers or [] if isinstance(layer, DenseLayer)]
    widths += list(net.hidden or []) + ([net.output_units] if net.output_units else [])
    n_layers = len(net.layers) if net.layers is not None else 3 * len(net.hidden or []) + 1
    if n_layers > limits.max_layers:
        errors.append(f"network has {n_layers} layers; the limit is {limits.max_layers}")
    too_wide = [w for w in widths if w > limits.max_units]
    if too_wide:
        errors.append(f"a dense layer has {max(too_wide)} units; the limit is {limits.max_units} "
                      "units per layer")
    if spec.training.epochs > limits.max_epochs:
        errors.append(f"training.epochs is {spec.training.epochs}; the limit is "
                      f"{limits.max_epochs}")
    if spec.training.batch_size > limits.max_batch_size:
        errors.append(f"training.batch_size is {spec.training.batch_size}; the limit is "
                      f"{limits.max_batch_size}")
    if n_rows > limits.max_rows:
        errors.append(f"the dataset has {n_rows} rows; the limit is {limits.max_rows}")
    if n_features > limits.max_features:
        errors.append(f"the dataset has {n_features} feature columns; the limit is "
                      f"{limits.max_features}")
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


def resolve_job(spec: JobSpec, *, n_features: int, n_classes: int, n_rows: int,
                limits: Limits | None = None) -> ResolvedJob:
    """Every check that needs the dataset's shape; raises SpecError, returns warnings."""
    limits = limits or Limits()
    check_limits(spec, n_features, n_rows, limits)
    net = resolve_network(spec.network, n_features, n_classes)
    errors: list[str] = []
    n_params = parameter_count(net.layers, n_features)
    if n_params > limits.max_params:
        errors.append(f"the network has {n_params:,} parameters; the limit is "
                      f"{limits.max_params:,}: use fewer or narrower layers")
    t = spec.training
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
    return ResolvedJob(spec, ResolvedNetwork(net.n_features, net.n_classes, net.layers,
                                             net.loss, net.head, warnings), n_rows, warnings)


def bn_warnings(layers: list[Any], training: TrainingSpec) -> list[str]:
    """Accepted, but BatchNorm is likely to mislead here."""
    warnings: list[str] = []
    bn_idx = [i for i, layer in enumerate(layers) if isinstance(layer, BatchNormLayer)]
    if not bn_idx:
        return warnings
    if training.batch_size < 16:
        warnings.append(f"batch_size {training.batch_size} is under 16: BatchNorm's batch "
                        "statistics are noisy at this size (16-32 or more works best)")
    last_dense = max(i for i, layer in enumerate(layers) if isinstance(layer, DenseLayer))
    for i in bn_idx:
        prev = layers[i - 1] if i > 0 else None
        if isinstance(prev, DenseLayer) and prev.use_bias and prev.activation in (
                None, Activation.linear):
            warnings.append(f"layer {i - 1} (dense) has a bias directly before BatchNorm "
                            f"layer {i}, which cancels it: set use_bias false")
        if i == last_dense - 1:
            warnings.append(f"BatchNorm layer {i} sits directly before the output layer")
        if not layers[i].track_running_stats:
            warnings.append(f"BatchNorm layer {i} has track_running_stats false: eval mode and "
                            "inference will use each request's batch statistics")
    return warnings


def validate_id(value: str) -> str:
    if not re.fullmatch(ID_PATTERN, value):
        raise ValueError("ids are 1-64 letters, digits, '-' or '_'")
    return value


# The notebook's two networks, exactly as it writes them (used in docs and tests).
NOTEBOOK_PLAIN_LAYERS: list[dict[str, Any]] = [
    {"type": "dense", "units": 2, "activation": "relu"},
    {"type": "dense", "units": 2, "activation": "relu"},
    {"type": "dense", "units": 1, "activation": "sigmoid"},
]
NOTEBOOK_BN_LAYERS: list[dict[str, Any]] = [
    {"type": "dense", "units": 3, "activation": "relu"},
    {"type": "batchnorm"},
    {"type": "dense", "units": 2, "activation": "relu"},
    {"type": "batchnorm"},
    {"type": "dense", "units": 1, "activation": "sigmoid"},
]
