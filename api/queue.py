"""A minimal Celery producer: the API sends tasks by name and never imports worker/.

The message carries only the job id; the database is the source of truth.
"""

from __future__ import annotations

from pathlib import Path

from celery import Celery

from config.settings import BaseBnlabSettings
from models.queueing import QUEUES, TRAIN_TASK


class JobQueue:
    def __init__(self, settings: BaseBnlabSettings) -> None:
        self._settings = settings
        self.celery = Celery("bnlab-api", broker=settings.celery_broker_url, set_as_current=False)
        self.celery.conf.update(
            broker_transport_options=settings.celery_transport_options(),
            task_serializer="json",
            accept_content=["json"],
            result_backend=None,
            broker_connection_retry_on_startup=True,
        )

    def enqueue(self, job_id: str, *, queue: str) -> None:
        if queue not in QUEUES:
            raise ValueError(f"unknown queue {queue!r}")
        self.celery.send_task(TRAIN_TASK, args=[job_id], queue=queue, ignore_result=True)

    def check(self, timeout: float) -> None:
        """Raise if the broker cannot take a message now (for /readyz)."""
        if self._settings.embedded:
            options = self._settings.celery_transport_options()
            for key in ("data_folder_in", "data_folder_out", "processed_folder"):
                if not Path(options[key]).is_dir():
                    raise ConnectionError(f"broker folder {options[key]} does not exist")
            return
        with self.celery.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0,
                                   timeout=timeout)

    def close(self) -> None:
        self.celery.close()
