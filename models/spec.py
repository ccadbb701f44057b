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
    """After a dense layer, nn.LayerNorm over its features. After a conv, each sample is
    normalised over all of (C, H, W) with a per-channel scale and shift (GroupNorm with one
    group, the usual CNN form; 2*C parameters, as Keras's LayerNormalization on channels)."""

    type: Literal["layernorm"] = "layernorm"
    eps: float = Field(default=1e-5, gt=0.0, le=1.0)
    elementwise_affine: bool = True


class GroupNormLayer(_Strict):
    """nn.GroupNorm: channels (or features) in `groups` groups, each normalised per sample."""

    type: Literal["groupnorm"] = "groupnorm"
    groups: int = Field(ge=1, description="must divide the number of channels")
    eps: float = Field(default=1e-5, gt=0.0, le=1.0)
    affine: bool = True


class InstanceNormLayer(_Strict):
    """nn.InstanceNorm2d (PyTorch's defaults: no affine, no running statistics); conv only."""

    type: Literal["instancenorm"] = "instancenorm"
    eps: float = Field(default=1e-5, gt=0.0, le=1.0)
    momentum: float = Field(default=0.1, gt=0.0, lt=1.0)
    affine: bool = False
    track_running_stats: bool = False


Padding = Literal["same", "valid"] | Annotated[int, Field(ge=0, le=64)]


class Conv2dLayer(_Strict):
    type: Literal["conv2d"] = "conv2d"
    filters: int = Field(ge=1, description="output channels")
    kernel_size: int = Field(default=3, ge=1, le=64)
    stride: int = Field(default=1, ge=1, le=64)
    padding: Padding = Field(default="valid", description="'same' (stride 1), 'valid' or an int")
    activation: Activation | None = None
    use_bias: bool = True


class MaxPool2dLayer(_Strict):
    type: Literal["maxpool2d"] = "maxpool2d"
    pool_size: int = Field(default=2, ge=1, le=64)
    stride: int | None = Field(default=None, ge=1, le=64, description="default: pool_size")


class AvgPool2dLayer(_Strict):
    type: Literal["avgpool2d"] = "avgpool2d"
    pool_size: int = Field(default=2, ge=1, le=64)
    stride: int | None = Field(default=None, ge=1, le=64, description="default: pool_size")


class GlobalAvgPoolLayer(_Strict):
    """(C, H, W) -> (C,): the mean of each channel."""

    type: Literal["global_avg_pool"] = "global_avg_pool"


class FlattenLayer(_Strict):
    """(C, H, W) -> (C*H*W,), channel-major (PyTorch's order)."""

    type: Literal["flatten"] = "flatten"


AnyLayer = (DenseLayer | BatchNormLayer | ActivationLayer | DropoutLayer | LayerNormLayer
            | GroupNormLayer | InstanceNormLayer | Conv2dLayer | MaxPool2dLayer
            | AvgPool2dLayer | GlobalAvgPoolLayer | FlattenLayer)
NormLayer = BatchNormLayer | LayerNormLayer | GroupNormLayer | InstanceNormLayer
PoolLayer = MaxPool2dLayer | AvgPool2dLayer
Layer = Annotated[AnyLayer, Field(discriminator="type")]


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
    conv: list[Annotated[int, Field(ge=1)]] | None = Field(default=None, description=(
        "shorthand conv blocks: filters per conv2d (images only), before the hidden dense ones"))
    kernel_size: int = Field(default=3, ge=1, le=64, description="shorthand conv2d kernel")
    padding: Padding = Field(default="same", description="shorthand conv2d padding")
    pool: Literal["max", "avg", "none"] = Field(
        default="none", description="shorthand: a 2x2 pool after each conv block")
    reduce: Literal["global_avg_pool", "flatten"] = Field(
        default="global_avg_pool", description="shorthand: from the last conv block to dense")
    activation: Activation = Activation.relu
    batchnorm: BatchNormPlacement = Field(
        default=BatchNormPlacement.none,
        description="shorthand: where the normalisation goes in each block (see `norm`)")
    norm: Literal["batchnorm", "groupnorm", "layernorm", "instancenorm", "none"] | None = Field(
        default=None, description=(
            "shorthand: which normalisation each block gets (default batchnorm when `batchnorm` "
            "places one; another norm without a placement goes before the activation); "
            "instancenorm applies to conv blocks only"))
    groups: int | None = Field(default=None, ge=1, description=(
        "shorthand groupnorm groups (default: 8, or the largest divisor of the width below 8)"))
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0, description=(
        "shorthand: a dropout layer of this rate after each hidden dense block (0: none)"))
    momentum: float | None = Field(default=None, gt=0.0, lt=1.0)
    eps: float | None = Field(default=None, gt=0.0, le=1.0)
    affine: bool = True
    track_running_stats: bool = True
    momentum_convention: Literal["pytorch", "keras"] = "pytorch"
    output_units: int | None = Field(default=None, ge=1)
    output_activation: Activation | None = None

    @model_validator(mode="after")
    def _one_form_and_pytorch_momentum(self) -> NetworkSpec:
        shorthand = self.hidden is not None or self.conv is not None
        if (self.layers is None) == (not shorthand):
            raise ValueError(
                "network needs exactly one of 'layers' (explicit list) or 'hidden'/'conv' "
                "(shorthand)"
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


class DigitsDataset(_Strict):
    """scikit-learn's handwritten digits (UCI): 1,797 images of 8x8 pixels valued 0-16, ten
    classes; `layout` "image" serves them as (1, 8, 8), "flat" as 64 features."""

    name: Literal["digits"]
    layout: Literal["image", "flat"] = "image"

    @property
    def n_samples(self) -> int:
        return SKLEARN_SHAPES["digits"][2]


class TabularSklearnDataset(_Strict):
    """A real table that ships inside scikit-learn: iris (150 x 4, 3 classes), wine (178 x 13,
    3 classes) or breast_cancer (569 x 30, 2 classes; raw features from about 0.001 to 4,000).
    Rows in the file's order, with the real feature and class names."""

    name: Literal["iris", "wine", "breast_cancer"]

    @property
    def n_samples(self) -> int:
        return SKLEARN_SHAPES[self.name][2]


# name -> (features, classes, rows), known without loading scikit-learn
SKLEARN_SHAPES: dict[str, tuple[int, int, int]] = {
    "digits": (64, 10, 1797), "iris": (4, 3, 150), "wine": (13, 3, 178),
    "breast_cancer": (30, 2, 569)}


class DataDirDataset(_Strict):
    """MNIST, Fashion-MNIST (IDX files) or CIFAR-10 (binary version) from the directory the
    operator configures (BNLAB_DATA_DIR); nothing is downloaded. `limit` keeps the first rows."""

    name: Literal["mnist", "fashion_mnist", "cifar10"]
    split: Literal["train", "test"] = "train"
    limit: int | None = Field(default=None, ge=4, description="use only the first N images")


BuiltinDataset = (CirclesDataset | MoonsDataset | XorDataset | SpiralsDataset | BlobsDataset
                  | NotebookDataset | DigitsDataset | TabularSklearnDataset | DataDirDataset)
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
    """(n_features, n_classes) of a generator or the notebook's CSV, known without generating
    it; the real datasets' shapes come from `models.image_data.builtin_shape`."""
    if isinstance(ds, DigitsDataset | TabularSklearnDataset | DataDirDataset):
        raise TypeError(f"{ds.name} is not a generator: use models.image_data.builtin_shape")
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
    init_scale: float = Field(default=1.0, gt=0.0, le=100.0, description=(
        "multiplies every initial dense and conv weight (a sensitivity-to-initialisation knob)"))
    record_train_mode_val: bool = False
    checkpoint_monitor: Metric = "val_accuracy"
    standardize: bool = Field(default=False, description=(
        "scale inputs to mean 0, std 1 (per feature; per channel for images), fitted on the "
        "training rows only; stored with the checkpoint and applied at predict and export"))


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
    max_features: int = 1_024  # table columns
    max_input_values: int = 262_144  # one image's C*H*W (3x256x256 fits)
    max_activation_bytes: int = 2 * 1024**3  # one batch's layer outputs, float32


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


def output_shape(layer: Any, shape: Shape, index: int) -> Shape:
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


def layer_shapes(layers: list[Any], input_shape: Shape) -> list[Shape]:
    """Each layer's output shape; raises SpecError at the first that cannot take its input."""
    shapes, shape = [], tuple(input_shape)
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
        out: list[Any] = []
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


def _last_dense(layers: list[Any]) -> DenseLayer:
    return next(layer for layer in reversed(layers) if isinstance(layer, DenseLayer))


def _as_shape(shape: Shape | int) -> Shape:
    return (shape,) if isinstance(shape, int) else tuple(shape)


def _params(layer: Any, shape: Shape) -> tuple[int, int]:
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


def summarize(layers: list[Any], input_shape: Shape | int) -> list[SummaryRow]:
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


def _block(main: DenseLayer | Conv2dLayer, net: NetworkSpec, norm: str) -> list[Any]:
    """One shorthand block: the layer, its normalisation where `batchnorm` places it (before
    the activation by default) and its activation."""
    placement = net.batchnorm
    if norm == "none":
        return [main.model_copy(update={"activation": net.activation})]
    if placement == BatchNormPlacement.none:
        placement = BatchNormPlacement.before_activation
    width = main.units if isinstance(main, DenseLayer) else main.filters
    n: Any
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


def expand_shorthand(net: NetworkSpec, n_classes: int) -> list[Any]:
    """The explicit layer list a `conv`/`hidden` shorthand stands for, output layer included."""
    norm = net.norm or ("batchnorm" if net.batchnorm != BatchNormPlacement.none else "none")
    layers: list[Any] = []
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


def _head_of(layers: list[Any]) -> tuple[Literal["sigmoid", "softmax", "linear"], list[str]]:
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
    if act not in (Activation.sigmoid, Activation.softmax, Activation.linear):
        errors.append(
            f"output activation '{act}' cannot give class probabilities: use 'sigmoid' "
            "(1 unit, binary), 'softmax' (one unit per class) or 'linear' (logits)"
        )
        return "linear", errors
    return act.value, errors  # type: ignore[return-value]


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


def parameter_count(layers: list[Any], input_shape: Shape | int) -> int:
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
    if (input_shape is None) == (n_features is None):
        raise TypeError("resolve_job needs exactly one of input_shape and n_features")
    shape = _as_shape(input_shape if input_shape is not None else n_features)  # type: ignore[arg-type]
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
        if isinstance(prev, DenseLayer | Conv2dLayer) and prev.use_bias and prev.activation in (
                None, Activation.linear):
            warnings.append(f"layer {i - 1} ({prev.type}) has a bias directly before BatchNorm "
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
