"""Worker settings: BNLAB_* environment on top of the shared settings."""

from __future__ import annotations

import socket

from pydantic import Field

from config.settings import BaseBnlabSettings
from models.spec import Limits


class WorkerSettings(BaseBnlabSettings):
    # Comma-separated Celery queues this worker consumes ("cpu", "gpu" or "cpu,gpu").
    worker_queues: str = "cpu"
    worker_concurrency: int = Field(default=1, ge=1)
    # Node name (celery -n); default "<queues>@<host>" so two hosts never collide.
    worker_name: str | None = None
    # Epochs between best/last checkpoint writes (1 = every epoch).
    checkpoint_every: int = Field(default=1, ge=1)
    # Intra-op CPU threads per worker process (0: torch's default, one per core). Small
    # networks train several times faster on one thread than on contended cores; scale out
    # with more worker processes instead.
    torch_threads: int = Field(default=1, ge=0)
    # Seconds between worker_heartbeat rows; the API routes device=auto by them.
    heartbeat_interval: float = Field(default=5.0, gt=0)
    # Embedded filesystem broker: processed message files older than this are deleted.
    broker_retention: float = Field(default=24 * 3600, gt=0)
    broker_cleanup_interval: float = Field(default=600, gt=0)

    # Same bounds the API checks at submission; re-checked here before allocating anything.
    max_params: int = Limits.max_params
    max_layers: int = Limits.max_layers
    max_units: int = Limits.max_units
    max_epochs: int = Limits.max_epochs
    max_batch_size: int = Limits.max_batch_size
    max_csv_rows: int = 200_000  # the API's name and default for the row bound
    max_features: int = Limits.max_features

    @property
    def queues(self) -> list[str]:
        return [q.strip() for q in self.worker_queues.split(",") if q.strip()]

    @property
    def node_name(self) -> str:
        return self.worker_name or f"{'-'.join(self.queues)}@{socket.gethostname()}"

    def limits(self) -> Limits:
        return Limits(max_params=self.max_params, max_layers=self.max_layers,
                      max_units=self.max_units, max_epochs=self.max_epochs,
                      max_batch_size=self.max_batch_size, max_rows=self.max_csv_rows,
                      max_features=self.max_features)
