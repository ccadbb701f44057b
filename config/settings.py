"""Settings shared by every bnlab process; api/ and worker/ subclass `BaseBnlabSettings`.

Embedded default: no BNLAB_DATABASE_URL and no BNLAB_BROKER_URL means a SQLite file and
kombu's filesystem transport, both under BNLAB_HOME, so nothing needs installing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from platformdirs import user_data_dir
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from models.spec import Limits


def normalize_database_url(url: str) -> str:
    """Accept plain `postgresql://` / `postgres://` URLs and pick the installed driver."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


class BaseBnlabSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BNLAB_", extra="ignore")

    home: Path = Field(default_factory=lambda: Path(user_data_dir("bnlab", appauthor=False)))
    database_url: str | None = None
    broker_url: str | None = None
    # Longest a job may run before Redis re-delivers its unacked message (seconds).
    visibility_timeout: int = 12 * 3600
    # Embedded (filesystem) broker: seconds between a waiting worker's looks at the queue
    # folder, the most a submitted job waits to be picked up (kombu's default is 1 s). Redis
    # needs none: it pushes.
    broker_polling_interval: float = Field(default=0.1, gt=0)

    # Logs of `bnlab serve` and the worker: "json" (one object per line), "text", or "auto"
    # (text when stderr is a terminal, JSON otherwise: containers, systemd, files).
    log_format: Literal["auto", "json", "text"] = "auto"
    # The default level when the command line does not give one (DEBUG, INFO, WARNING, ...).
    log_level: str = Field(default="INFO", pattern=r"(?i)^(debug|info|warning|error|critical)$")

    # A job is tried this many times (claims by a worker) before it fails for good.
    max_attempts: int = Field(default=3, ge=1)
    # A running job whose lease heartbeat is older than this is presumed lost (seconds).
    lease_timeout: float = Field(default=60.0, gt=0)

    # Spec bounds: the API checks them at submission, the worker again before allocating.
    max_params: int = Field(default=Limits.max_params, ge=1)
    max_layers: int = Field(default=Limits.max_layers, ge=1)
    max_units: int = Field(default=Limits.max_units, ge=1)
    max_epochs: int = Field(default=Limits.max_epochs, ge=1)
    max_batch_size: int = Field(default=Limits.max_batch_size, ge=1)
    max_csv_rows: int = Field(default=200_000, ge=1)
    max_features: int = Field(default=Limits.max_features, ge=1)
    # One image's C*H*W, and one batch's layer outputs (float32 bytes: batch x the sum of the
    # layers' output sizes x 4), both checked by arithmetic before anything is allocated.
    max_input_values: int = Field(default=Limits.max_input_values, ge=1)
    max_activation_bytes: int = Field(default=Limits.max_activation_bytes, ge=1)

    # Where the data-directory datasets (mnist, fashion_mnist, cifar10) are read from, under
    # fixed names: mnist/train-images-idx3-ubyte[.gz], ..., cifar10/cifar-10-batches-bin/...
    # (see models.image_data). The API reads their headers, the workers their data: give both
    # the same directory. Unset: those datasets are refused with a message; nothing downloads.
    data_dir: Path | None = None

    def limits(self) -> Limits:
        return Limits(max_params=self.max_params, max_layers=self.max_layers,
                      max_units=self.max_units, max_epochs=self.max_epochs,
                      max_batch_size=self.max_batch_size, max_rows=self.max_csv_rows,
                      max_features=self.max_features, max_input_values=self.max_input_values,
                      max_activation_bytes=self.max_activation_bytes)

    @property
    def embedded(self) -> bool:
        return self.broker_url is None

    @property
    def sqlalchemy_url(self) -> str:
        if self.database_url:
            return normalize_database_url(self.database_url)
        return f"sqlite:///{self.home / 'bnlab.sqlite3'}"

    @property
    def celery_broker_url(self) -> str:
        return self.broker_url or "filesystem://"

    @property
    def redis_url(self) -> str | None:
        """The broker's URL when it is Redis (what the reaper, the queue metrics and the
        shared rate limits look into), else None."""
        url = self.broker_url or ""
        return url if url.startswith(("redis://", "rediss://")) else None

    @property
    def broker_folder(self) -> Path:
        return self.home / "broker"

    def celery_transport_options(self) -> dict[str, Any]:
        if self.broker_url is None:
            queue = self.broker_folder / "queue"
            processed = self.broker_folder / "processed"
            # One folder for in and out: producer and consumer are different processes. The
            # control folder holds the exchange table; kombu's default is ./control in the cwd.
            return {"data_folder_in": str(queue), "data_folder_out": str(queue),
                    "processed_folder": str(processed), "store_processed": True,
                    "control_folder": str(self.broker_folder / "control"),
                    "polling_interval": self.broker_polling_interval}
        return {"visibility_timeout": self.visibility_timeout}

    def prepare_dirs(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        if self.broker_url is None:
            (self.broker_folder / "queue").mkdir(parents=True, exist_ok=True)
            for sub in ("processed", "control"):
                (self.broker_folder / sub).mkdir(parents=True, exist_ok=True)
