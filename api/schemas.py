"""Response and request bodies of the API (kept apart from the SQLAlchemy tables)."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class JobOut(_Out):
    id: str
    name: str | None
    status: str
    queue: str | None = None
    device: str | None = Field(default=None, description="requested device; the worker's actual "
                                                         "device once running")
    worker: str | None = None
    epoch: int = Field(description="epochs finished so far")
    epochs: int = Field(description="epochs the spec asks for")
    attempts: int = 0
    cancel_requested: bool = False
    error: str | None = None
    warnings: list[str] = Field(default_factory=list)
    final_metrics: dict[str, float | None] | None = None
    best_metrics: dict[str, Any] | None = None
    best_epoch: int | None = None
    dataset_id: str | None = None
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    heartbeat_at: datetime | None = None
    elapsed_s: float | None = Field(default=None, description="seconds from start to finish "
                                                              "(or to now while running)")
    experiment_id: str | None = Field(default=None, description="set on experiment children")
    variant: str | None = None
    seed: int | None = None
    spec: dict[str, Any]

    @field_validator("final_metrics", mode="before")
    @classmethod
    def _nan_to_none(cls, v: Any) -> Any:
        if isinstance(v, dict):
            return {k: (None if isinstance(x, float) and not math.isfinite(x) else x)
                    for k, x in v.items()}
        return v


class JobPage(BaseModel):
    items: list[JobOut]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next (older) page")


class DatasetOut(_Out):
    id: str
    name: str | None
    filename: str | None = None
    n_rows: int
    n_features: int
    format: str = Field(default="csv", description='how the upload is stored: "csv", or '
                        '"npz" (an .npz upload, and an IDX pair, canonicalised as x and y)')
    input_shape: list[int] = Field(description="one row's shape: [n_features] for a table, "
                                   "[C, H, W] for images")
    columns: list[str]
    label_column: str
    classes: list[str]
    class_counts: dict[str, int]
    size: int = Field(description="bytes of the stored file")
    sha256: str
    created_at: datetime


class DatasetPage(BaseModel):
    items: list[DatasetOut]
    next_cursor: str | None = None


class GeneratorParam(BaseModel):
    name: str
    type: str | None
    default: Any = None
    description: str | None = None
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: float | None = None
    exclusive_maximum: float | None = None
    choices: list[Any] | None = Field(default=None, description="the values it accepts, when "
                                      "they are a fixed list")


class GeneratorOut(BaseModel):
    name: str
    description: str | None = None
    n_features: int | str = Field(description="fixed, or the parameter that sets it")
    input_shape: list[int] | None = Field(default=None, description=(
        "one row's shape with the default parameters: [n_features] for a table, [C, H, W] for "
        "images; null where a parameter sets it (blobs' n_features)"))
    n_classes: int | str
    n_rows: int | str | None = Field(description="fixed, or the parameter that sets it; null "
                                     "for a data-directory dataset that is not available")
    available: bool = Field(default=True, description="false: a data-directory dataset whose "
                            "files are not configured (see note)")
    note: str | None = None
    parameters: list[GeneratorParam]
    example: dict[str, Any]


class CheckpointOut(_Out):
    kind: str
    epoch: int
    size: int
    sha256: str
    metrics: dict[str, float | None] | None = None
    created_at: datetime
    url: str

    @field_validator("metrics", mode="before")
    @classmethod
    def _nan_to_none(cls, v: Any) -> Any:
        return JobOut._nan_to_none(v)


class CheckpointRef(BaseModel):
    kind: str
    epoch: int
    sha256: str


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    inputs: list[Any] | None = Field(default=None, min_length=1, description=(
        "tables: rows of feature values, in the dataset's column order; images: one nested list "
        "per image shaped like the dataset's [C, H, W] ([H, W] also works for one channel)"))
    npy: str | None = Field(default=None, max_length=64 * 1024 * 1024, description=(
        "instead of `inputs`: base64 of a .npy file holding a numeric array (n, *input_shape); "
        "read without pickle"))
    checkpoint: Literal["best", "last"] = Field(
        default="last", description="'last' is the latest weights (also while the job runs); "
                                    "'best' is the epoch best on training.checkpoint_monitor")

    @model_validator(mode="after")
    def _one_source(self) -> PredictRequest:
        if (self.inputs is None) == (self.npy is None):
            raise ValueError("give exactly one of 'inputs' (nested lists) and 'npy' (base64 of "
                             "a .npy array)")
        return self


class PredictResponse(BaseModel):
    classes: list[str] = Field(description="predicted class of each row")
    probabilities: list[list[float]] = Field(description="per row, one probability per class")
    class_names: list[str] = Field(description="the column order of probabilities")
    checkpoint: CheckpointRef


class ModelTotals(BaseModel):
    total: int
    trainable: int
    non_trainable: int = Field(description="BN running mean and variance, as Keras counts them")


class ModelOut(BaseModel):
    model_config = ConfigDict(extra="allow")

    checkpoint: CheckpointRef | None = Field(description="the checkpoint read (best, else "
                                                         "last); null before the first one")
    layers: list[dict[str, Any]] = Field(description="Keras-style summary rows")
    totals: ModelTotals
    head: str
    loss: str
    classes: list[str] | None = None
    batchnorm: list[dict[str, Any]] = Field(
        default_factory=list, description="each BN layer's running_mean, running_var, gamma "
                                          "and beta (empty before the first checkpoint)")


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    checks: dict[str, str] = Field(default_factory=dict)


class ChildOut(BaseModel):
    job_id: str
    index: int
    variant: str
    seed: int
    status: str
    epoch: int = Field(description="epochs finished so far")
    epochs: int
    error: str | None = None
    final_metrics: dict[str, float | None] | None = None
    best_epoch: int | None = None

    @field_validator("final_metrics", mode="before")
    @classmethod
    def _nan_to_none(cls, v: Any) -> Any:
        return JobOut._nan_to_none(v)


class ExperimentOut(BaseModel):
    id: str
    name: str | None
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    cancel_requested: bool = False
    variants: list[str]
    seeds: list[int]
    counts: dict[str, int] = Field(description="children per status")
    stacks: int = Field(description="groups of children that train stacked as one batched "
                                    "model (same network and settings, different seeds)")
    warnings: list[str] = Field(default_factory=list)
    created_at: datetime
    spec: dict[str, Any]
    children: list[ChildOut]


class ExperimentPage(BaseModel):
    items: list[ExperimentOut]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next (older) page")


class RetryOut(BaseModel):
    retried: list[str] = Field(description="job ids of the failed children queued again")
    experiment: ExperimentOut


class StudyClaimOut(BaseModel):
    claim: str
    text: str = Field(description="the claim in words")
    experiment_id: str
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    counts: dict[str, int] = Field(description="the experiment's children per status")
    epochs_done: int = Field(description="epochs its children have finished")
    epochs_total: int = Field(description="epochs its children will run")


class StudyCost(BaseModel):
    children: int = Field(description="child jobs of every claim's experiment")
    epochs: int = Field(description="epochs of every child together")
    estimated_seconds: float | None = Field(description=(
        "upper bound on the wall time: the median seconds per epoch of this server's recently "
        "finished jobs x the epochs / the live workers (stacking ignored); null before any "
        "job has finished"))
    note: str


class StudyOut(BaseModel):
    id: str
    name: str | None
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    cancel_requested: bool = False
    created_at: datetime
    spec: dict[str, Any] = Field(description="the normalised StudySpec")
    claims: list[StudyClaimOut]
    counts: dict[str, int] = Field(description="children of every experiment per status")
    cost: StudyCost


class StudyPage(BaseModel):
    items: list[StudyOut]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next (older) page")


class StudyRetryOut(BaseModel):
    retried: list[str] = Field(description="job ids of the failed children queued again")
    study: StudyOut
