"""The tables (SQLAlchemy 2.x typed mappings). Schema changes go through migrations/ only."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    Enum,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, deferred, mapped_column, relationship

from models.db.types import MetricFloat, MetricsJSON, UTCDateTime
from models.queueing import QUEUES

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_N_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def new_id() -> str:
    """A fresh row id: uuid4 as 32 hex characters."""
    return uuid.uuid4().hex


# Who owns a row: an API key's id, or this when auth is off (every row is then shared).
ANONYMOUS = "anonymous"


def _owner() -> Mapped[str]:
    return mapped_column(String(64), default=ANONYMOUS, server_default=ANONYMOUS)


def utcnow() -> datetime:
    """Now, timezone-aware UTC (what every `_at` column stores)."""
    return datetime.now(UTC)


class JobStatus(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


TERMINAL = frozenset({JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled})
CHECKPOINT_KINDS = ("best", "last")


def _in(column: str, values: tuple[str, ...]) -> str:
    quoted = ", ".join(f"'{v!s}'" for v in values)
    return f"{column} IN ({quoted})"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UTCDateTime(), dict[str, Any]: JSON(), list[str]: JSON()}


DATASET_FORMATS = ("csv", "npz")


class Dataset(Base):
    """An upload: its bytes (deferred: listing never loads them), their format ("csv", or
    "npz", which IDX pairs are stored as) and what was parsed (`input_shape`: one row's shape,
    [F] for a table, [C, H, W] for images)."""

    __tablename__ = "dataset"
    __table_args__ = (Index("ix_dataset_owner_created_at_id", "owner", "created_at", "id"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str | None] = mapped_column(String(255))
    filename: Mapped[str | None] = mapped_column(String(255))
    content: Mapped[bytes] = deferred(mapped_column(LargeBinary, nullable=False))
    size: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    n_rows: Mapped[int] = mapped_column(Integer)
    n_features: Mapped[int] = mapped_column(Integer)
    format: Mapped[str] = mapped_column(String(8), default="csv", server_default="csv")
    input_shape: Mapped[list[int]] = mapped_column(JSON)
    columns: Mapped[list[str]]
    label_column: Mapped[str] = mapped_column(String(255))
    classes: Mapped[list[str]]
    class_counts: Mapped[dict[str, Any]]
    owner: Mapped[str] = _owner()
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class Study(Base):
    """A study: the seed's claims about BatchNorm, one experiment per claim
    (experiment.study_id, experiment.claim). Status and reports are derived on read."""

    __tablename__ = "study"
    __table_args__ = (
        Index("ix_study_owner_created_at_id", "owner", "created_at", "id"),
        UniqueConstraint("owner", "idempotency_key"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str | None] = mapped_column(String(255))
    spec: Mapped[dict[str, Any]]  # the normalised StudySpec
    claims: Mapped[list[str]]  # claim names, in the study's order
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    owner: Mapped[str] = _owner()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Experiment(Base):
    """A grid of variants x seeds; its children are ordinary jobs (job.experiment_id).

    Status and counts are derived from the children on read; only the request is stored here.
    """

    __tablename__ = "experiment"
    __table_args__ = (
        Index("ix_experiment_created_at_id", "created_at", "id"),
        Index("ix_experiment_owner_created_at_id", "owner", "created_at", "id"),
        # Idempotency keys are per owner: one key's choice never collides with another's.
        UniqueConstraint("owner", "idempotency_key"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str | None] = mapped_column(String(255))
    spec: Mapped[dict[str, Any]]  # the normalised ExperimentSpec
    variants: Mapped[list[str]]  # variant names, in expansion order
    seeds: Mapped[list[int]] = mapped_column(JSON)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    owner: Mapped[str] = _owner()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    # A study's experiments: which study, and the claim this one tests.
    study_id: Mapped[str | None] = mapped_column(
        ForeignKey("study.id", ondelete="CASCADE"), index=True)
    claim: Mapped[str | None] = mapped_column(String(64))

    children: Mapped[list[Job]] = relationship(
        back_populates="experiment", cascade="all, delete-orphan", passive_deletes=True,
        order_by="Job.child_index")


class Job(Base):
    """One training job; the database is the source of truth, the broker only a doorbell."""

    __tablename__ = "job"
    __table_args__ = (
        CheckConstraint(_in("status", tuple(JobStatus)), name="status"),
        CheckConstraint(_in("queue", QUEUES), name="queue"),
        # Listing newest first, optionally by status; (created_at, id) is the cursor.
        Index("ix_job_created_at_id", "created_at", "id"),
        Index("ix_job_status_created_at_id", "status", "created_at", "id"),
        # The reaper looks for running jobs with a stale heartbeat.
        Index("ix_job_status_heartbeat_at", "status", "heartbeat_at"),
        # A worker claiming a stack looks for its queued siblings.
        Index("ix_job_stack_key_status", "stack_key", "status"),
        # One owner's listing, and its active-job count (max_active_jobs_per_key).
        Index("ix_job_owner_created_at_id", "owner", "created_at", "id"),
        Index("ix_job_owner_status", "owner", "status"),
        UniqueConstraint("owner", "idempotency_key"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str | None] = mapped_column(String(255))
    spec: Mapped[dict[str, Any]]
    status: Mapped[JobStatus] = mapped_column(
        Enum(JobStatus, native_enum=False, create_constraint=False, length=16,
             values_callable=lambda e: [m.value for m in e], validate_strings=True),
        default=JobStatus.queued)
    queue: Mapped[str] = mapped_column(String(8), default="cpu")
    device: Mapped[str | None] = mapped_column(String(64))  # requested, then the one used
    worker: Mapped[str | None] = mapped_column(String(255))
    lease_owner: Mapped[str | None] = mapped_column(String(255))
    heartbeat_at: Mapped[datetime | None]
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # Set when the worker holding the lease shuts down: stop at the epoch end, go back to queued.
    release_requested: Mapped[bool] = mapped_column(Boolean, default=False,
                                                    server_default=false())
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    owner: Mapped[str] = _owner()
    dataset_id: Mapped[str | None] = mapped_column(
        ForeignKey("dataset.id", ondelete="SET NULL"), index=True)
    warnings: Mapped[list[str]] = mapped_column(JSON, default=list)
    epochs_done: Mapped[int] = mapped_column(Integer, default=0)
    epochs_total: Mapped[int] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    final_metrics: Mapped[dict[str, Any] | None] = mapped_column(MetricsJSON)
    best_metrics: Mapped[dict[str, Any] | None] = mapped_column(MetricsJSON)
    best_epoch: Mapped[int | None] = mapped_column(Integer)
    # Experiment children: which experiment, variant and seed; children with one stack_key
    # differ only by seed and train together as one stacked model.
    experiment_id: Mapped[str | None] = mapped_column(
        ForeignKey("experiment.id", ondelete="CASCADE"), index=True)
    variant: Mapped[str | None] = mapped_column(String(255))
    seed: Mapped[int | None] = mapped_column(Integer)
    child_index: Mapped[int | None] = mapped_column(Integer)
    stack_key: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    # passive_deletes: the database's ON DELETE CASCADE removes the rows without loading them.
    epochs: Mapped[list[EpochMetric]] = relationship(
        back_populates="job", cascade="all, delete-orphan", passive_deletes=True,
        order_by="EpochMetric.epoch")
    checkpoints: Mapped[list[Checkpoint]] = relationship(
        back_populates="job", cascade="all, delete-orphan", passive_deletes=True)
    experiment: Mapped[Experiment | None] = relationship(back_populates="children")


class EpochMetric(Base):
    """One row per job and epoch (1-based); NaN/inf are stored as such."""

    __tablename__ = "epoch_metric"

    job_id: Mapped[str] = mapped_column(
        ForeignKey("job.id", ondelete="CASCADE"), primary_key=True)
    epoch: Mapped[int] = mapped_column(Integer, primary_key=True)
    loss: Mapped[float | None] = mapped_column(MetricFloat)
    accuracy: Mapped[float | None] = mapped_column(MetricFloat)
    val_loss: Mapped[float | None] = mapped_column(MetricFloat)
    val_accuracy: Mapped[float | None] = mapped_column(MetricFloat)
    lr: Mapped[float | None] = mapped_column(MetricFloat)
    wall_time: Mapped[float | None] = mapped_column(MetricFloat)
    extras: Mapped[dict[str, Any] | None] = mapped_column(MetricsJSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    job: Mapped[Job] = relationship(back_populates="epochs")


class Checkpoint(Base):
    """The best and the last safetensors blob of a job (content deferred)."""

    __tablename__ = "checkpoint"
    __table_args__ = (CheckConstraint(_in("kind", CHECKPOINT_KINDS), name="kind"),)

    job_id: Mapped[str] = mapped_column(
        ForeignKey("job.id", ondelete="CASCADE"), primary_key=True)
    kind: Mapped[str] = mapped_column(String(8), primary_key=True)
    epoch: Mapped[int] = mapped_column(Integer)
    content: Mapped[bytes] = deferred(mapped_column(LargeBinary, nullable=False))
    size: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    metrics: Mapped[dict[str, Any] | None] = mapped_column(MetricsJSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    job: Mapped[Job] = relationship(back_populates="checkpoints")


class ApiKey(Base):
    """An API key made by `bnlab keys create`: only its sha256 is kept (the key is shown once).

    Its id is the owner of what it creates, so revoking a key and making a new one does not
    hand the old key's jobs to the new one.
    """

    __tablename__ = "api_key"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str | None] = mapped_column(String(255))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))  # shown by `bnlab keys list`
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None]


class WorkerHeartbeat(Base):
    """A worker node's last sign of life and the queues it consumes."""

    __tablename__ = "worker_heartbeat"

    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    queues: Mapped[list[str]]
    device: Mapped[str | None] = mapped_column(String(64))
    last_seen_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
