"""The job spec: one pydantic schema for the API body, the stored job and the network builder.

Importable without torch (the client uses it). Structural checks live in the pydantic models
here; checks that need the dataset's shape (output width, parameter budget) live in
`models.resolution`, which runs before anything is allocated and raises `SpecError` with
messages that say what to change.
"""

from __future__ import annotations

from dataclasses import dataclass
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


# ---------------------------------------------------------------------------- limits


@dataclass(frozen=True)
class Limits:
    """Bounds `models.resolution` checks before allocation; the API and worker fill these from
    their settings."""

    max_params: int = 10_000_000
    max_layers: int = 64
    max_units: int = 65_536
    max_epochs: int = 10_000
    max_batch_size: int = 65_536
    max_rows: int = 1_000_000
    max_features: int = 1_024  # table columns
    max_input_values: int = 262_144  # one image's C*H*W (3x256x256 fits)
    max_activation_bytes: int = 2 * 1024**3  # one batch's layer outputs, float32


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
