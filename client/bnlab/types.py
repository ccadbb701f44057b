"""What the server returns, as pydantic models of the client's own (the client never imports
the server). Unknown fields are kept (`extra="allow"`), so a newer server does not break an
older client."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

TERMINAL = frozenset({"succeeded", "failed", "cancelled"})


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow")


class JobData(_Model):
    id: str
    name: str | None = None
    status: str
    queue: str | None = None
    device: str | None = None
    worker: str | None = None
    epoch: int = Field(0, description="epochs finished so far")
    epochs: int = Field(0, description="epochs the spec asks for")
    attempts: int = 0
    cancel_requested: bool = False
    error: str | None = None
    warnings: list[str] = Field(default_factory=list)
    final_metrics: dict[str, float | None] | None = None
    best_metrics: dict[str, Any] | None = None
    best_epoch: int | None = None
    dataset_id: str | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    heartbeat_at: datetime | None = None
    elapsed_s: float | None = None
    experiment_id: str | None = None
    variant: str | None = None
    seed: int | None = None
    spec: dict[str, Any] = Field(default_factory=dict)

    @property
    def done(self) -> bool:
        return self.status in TERMINAL

    @property
    def succeeded(self) -> bool:
        return self.status == "succeeded"


class Dataset(_Model):
    id: str
    name: str | None = None
    filename: str | None = None
    n_rows: int
    n_features: int
    format: str = "csv"  # "csv" or "npz" (an .npz upload, or an IDX pair stored as one)
    input_shape: list[int] | None = None  # one row's shape: [F] for a table, [C, H, W] images
    columns: list[str]
    label_column: str
    classes: list[str]
    class_counts: dict[str, int] = Field(default_factory=dict)
    size: int | None = None
    sha256: str | None = None
    created_at: datetime | None = None

    @property
    def feature_columns(self) -> list[str]:
        return [c for c in self.columns if c != self.label_column]

    @property
    def is_image(self) -> bool:
        return self.input_shape is not None and len(self.input_shape) > 1


class CheckpointRef(_Model):
    kind: str
    epoch: int
    sha256: str | None = None


class Prediction(_Model):
    classes: list[str]
    probabilities: list[list[float]]
    class_names: list[str]
    checkpoint: CheckpointRef


class ExperimentChild(_Model):
    job_id: str
    index: int | None = None
    variant: str
    seed: int
    status: str
    epoch: int = 0
    epochs: int = 0
    error: str | None = None
    final_metrics: dict[str, float | None] | None = None


class ExperimentData(_Model):
    id: str
    name: str | None = None
    status: str
    cancel_requested: bool = False
    warnings: list[str] = Field(default_factory=list)
    created_at: datetime | None = None
    spec: dict[str, Any] = Field(default_factory=dict)
    variants: list[str] = Field(default_factory=list)
    seeds: list[int] = Field(default_factory=list)
    counts: dict[str, int] = Field(default_factory=dict)
    children: list[ExperimentChild] = Field(default_factory=list)

    @property
    def done(self) -> bool:
        """Finished: a terminal status, or children that are all settled."""
        if self.status in TERMINAL:
            return True
        pending = self.counts.get("queued", 0) + self.counts.get("running", 0)
        return bool(self.counts) and sum(self.counts.values()) > 0 and pending == 0


# -- studies -------------------------------------------------------------------------------

_PENDING = ("queued", "running")


class StudyClaim(_Model):
    """One claim of a study: the experiment that tests it and how far its children are."""

    claim: str
    text: str | None = None
    experiment_id: str | None = None
    status: str = "queued"
    counts: dict[str, int] = Field(default_factory=dict)
    epochs_done: int | None = None
    epochs_total: int | None = None

    @property
    def total(self) -> int:
        """Children of the claim's experiment."""
        return sum(v for v in self.counts.values() if isinstance(v, int))

    @property
    def succeeded(self) -> int:
        return self.counts.get("succeeded", 0)

    @property
    def done(self) -> bool:
        if self.status in TERMINAL:
            return True
        return self.total > 0 and not sum(self.counts.get(s, 0) for s in _PENDING)


class StudyCost(_Model):
    children: int = 0
    epochs: int | None = None
    estimated_seconds: float | None = None
    note: str | None = None


class StudyData(_Model):
    id: str
    name: str | None = None
    status: str
    cancel_requested: bool = False
    created_at: datetime | None = None
    spec: dict[str, Any] = Field(default_factory=dict)
    claims: list[StudyClaim] = Field(default_factory=list)
    counts: dict[str, int] = Field(default_factory=dict, description=(
        "children of every claim per status (summed from the claims if the server omits it)"))
    cost: StudyCost | None = None
    warnings: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _sum_counts(self) -> StudyData:
        if not self.counts and self.claims:
            for c in self.claims:
                for k, v in c.counts.items():
                    self.counts[k] = self.counts.get(k, 0) + v
        return self

    @property
    def done(self) -> bool:
        """Finished: a terminal status, or every claim's children settled."""
        if self.status in TERMINAL:
            return True
        return bool(self.claims) and all(c.done for c in self.claims)

    @property
    def succeeded(self) -> bool:
        return self.status == "succeeded"


class PairedTest(_Model):
    """A claim's paired test (a positive difference is the claim's direction)."""

    test: str | None = None  # "t", "wilcoxon", ...
    n: int | None = None
    estimate: float | None = None  # the effect the CI is about (a mean or a median)
    mean: float | None = None
    median: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    effect_size: float | None = None
    p_two_sided: float | None = None


class ClaimVerdict(_Model):
    """One claim of a study's report."""

    claim: str
    text: str | None = None
    verdict: str  # "supported" | "contradicted" | "inconclusive"
    reason: str | None = None
    measure: str | None = None
    comparison: str | None = None
    rule: str | None = None
    test: PairedTest = Field(default_factory=PairedTest)
    adjusted_p: float | None = None
    details: dict[str, Any] = Field(default_factory=dict)
    partial: bool = False
    experiment_id: str | None = None
    experiment_status: str | None = None
    firm_up: dict[str, Any] | None = None


class StudyReport(_Model):
    """GET /v1/studies/{id}/report: `StudyReport.model_validate(client.studies.report(id))`."""

    id: str
    name: str | None = None
    status: str | None = None
    created_at: datetime | None = None
    partial: bool = False
    alpha: float | None = None
    confidence: float | None = None
    seeds: int | list[int] | None = None
    claims: list[ClaimVerdict] = Field(default_factory=list)


def study_done(data: dict[str, Any]) -> bool:
    return StudyData.model_validate(data).done


def job_done(data: dict[str, Any]) -> bool:
    return data.get("status") in TERMINAL


def experiment_done(data: dict[str, Any]) -> bool:
    return ExperimentData.model_validate(data).done


# -- events ---------------------------------------------------------------------------------

_EPOCH_KEYS = frozenset({"job_id", "variant", "seed", "epoch", "child_index", "index"})


class EpochEvent(_Model):
    """A finished epoch. For an experiment's stream `job_id`, `variant` and `seed` name the
    child. `id` is the event id to resume after (opaque)."""

    type: Literal["epoch"] = "epoch"
    id: str | None = None
    epoch: int
    job_id: str | None = None
    variant: str | None = None
    seed: int | None = None
    metrics: dict[str, float | None] = Field(default_factory=dict)


class StatusEvent(_Model):
    """A status seen by the server: the job's (or a child's, with `job_id`), or the
    experiment's."""

    type: Literal["status"] = "status"
    status: str
    job_id: str | None = None
    epoch: int | None = None
    epochs: int | None = None
    error: str | None = None


class DoneEvent(_Model):
    """The last event: `data` is the final job (or experiment) as GET returns it."""

    type: Literal["done"] = "done"
    data: dict[str, Any]


Event = EpochEvent | StatusEvent | DoneEvent


def parse_event(name: str, data: str, event_id: str | None) -> Event | None:
    """A typed event from one SSE message; None for kinds this client does not know (a newer
    server may send more). An `error` event raises the matching client error."""
    if name == "ping" or not data:
        return None
    body = json.loads(data)
    if name == "epoch":
        metrics = body.get("metrics") if isinstance(body.get("metrics"), dict) else {
            k: v for k, v in body.items()
            if k not in _EPOCH_KEYS and (v is None or isinstance(v, int | float))
            and not isinstance(v, bool)}
        return EpochEvent(id=event_id, epoch=body["epoch"], job_id=body.get("job_id"),
                          variant=body.get("variant"), seed=body.get("seed"), metrics=metrics)
    if name == "status":
        return StatusEvent.model_validate(body)
    if name == "done":
        return DoneEvent(data=body)
    if name == "error":
        from bnlab.errors import NotFound

        raise NotFound(404, str(body.get("error", "NotFound")), body.get("detail"))
    return None


def status_event(data: dict[str, Any]) -> StatusEvent:
    """A StatusEvent from a polled job or experiment."""
    return StatusEvent(status=str(data.get("status")), job_id=data.get("id"),
                       epoch=data.get("epoch"), epochs=data.get("epochs"),
                       error=data.get("error"))


def epoch_events(job_id: str, history: dict[str, list[Any]]) -> list[EpochEvent]:
    """EpochEvents from a polled history (Keras's shape)."""
    return [EpochEvent(id=str(n), epoch=n, job_id=job_id,
                       metrics={k: v[i] for k, v in history.items() if k != "epoch"})
            for i, n in enumerate(history["epoch"])]
