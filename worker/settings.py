"""Worker settings: BNLAB_* environment on top of the shared settings."""

from __future__ import annotations

import socket
from pathlib import Path

from pydantic import Field

from config.settings import BaseBnlabSettings


class WorkerSettings(BaseBnlabSettings):
    # Comma-separated Celery queues this worker consumes ("cpu", "gpu" or "cpu,gpu").
    worker_queues: str = "cpu"
    worker_concurrency: int = Field(default=1, ge=1)
    # Node name (celery -n); default "<queues>@<host>" so two hosts never collide.
    worker_name: str | None = None
    # Epochs between "last" checkpoint writes (1 = every epoch) ...
    checkpoint_every: int = Field(default=1, ge=1)
    # ... and, for networks with more parameters than this, at most one every
    # checkpoint_interval seconds (a large model's checkpoint is not free).
    checkpoint_small_params: int = Field(default=1_000_000, ge=0)
    checkpoint_interval: float = Field(default=60.0, ge=0)
    # Intra-op CPU threads per worker process (0: torch's default, one per core). Small
    # networks train several times faster on one thread than on contended cores; scale out
    # with more worker processes instead.
    torch_threads: int = Field(default=1, ge=0)
    # Most experiment children (same network, different seeds) one task trains stacked as
    # one batched model; more wait for the next task (memory and step time grow with it).
    max_stack: int = Field(default=64, ge=1)
    # A stack writes its members' "last" checkpoints at most this often (seconds; each epoch's
    # metrics are still written every epoch, and "best" whenever it improves).
    stack_checkpoint_interval: float = Field(default=10.0, ge=0)
    # ... and a lone job's "last" checkpoint of a small network at most this often (0: every
    # checkpoint_every epochs). Encoding one costs about what a small epoch does; a job
    # stopped by cancel or shutdown still checkpoints the epoch it stops at.
    small_checkpoint_interval: float = Field(default=2.0, ge=0)
    # Seconds finished epochs may wait in memory before they are written, all in one
    # transaction (0: each epoch on its own). The first epoch is written at once and the
    # rest when the job ends; cancel and shutdown requests are read as often. A small epoch
    # takes milliseconds and so does its write: 0 would make such a job about twice as slow.
    epoch_write_interval: float = Field(default=0.25, ge=0)
    # Seconds between worker_heartbeat rows (the API routes device=auto by them) and between
    # renewals of a running job's lease; keep it well under lease_timeout.
    heartbeat_interval: float = Field(default=5.0, gt=0)
    # Seconds between reaper sweeps (stale running jobs, queued jobs no broker holds) ...
    reaper_interval: float = Field(default=30.0, gt=0)
    # ... which re-enqueue a queued job only once it has waited this long untouched.
    requeue_grace: float = Field(default=30.0, ge=0)
    # How long a worker keeps retrying a database write (epoch, finish) through an outage.
    db_retry: float = Field(default=120.0, ge=0)
    # Embedded filesystem broker: processed message files older than this are deleted.
    broker_retention: float = Field(default=24 * 3600, gt=0)
    broker_cleanup_interval: float = Field(default=600, gt=0)
    # Test seam, unset in production (see worker.hold): every job this worker trains waits
    # after its epoch test_hold_epoch is stored until test_hold_dir/<job id>@<epoch>.go exists
    # (0: after its message is taken, before the job is claimed).
    test_hold_epoch: int | None = Field(default=None, ge=0)
    test_hold_dir: Path | None = None

    @property
    def queues(self) -> list[str]:
        return [q.strip() for q in self.worker_queues.split(",") if q.strip()]

    @property
    def node_name(self) -> str:
        return self.worker_name or f"{'-'.join(self.queues)}@{socket.gethostname()}"
