"""The Celery app, built from WorkerSettings. `celery -A worker.celery_app worker` loads `app`.

Long tasks: acks late, prefetch 1, JSON only, no result backend (the database holds results).
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.signals import celeryd_init, setup_logging
from kombu.entity import Exchange, Queue

from config.logging import configure_logging
from models.queueing import QUEUES, TRAIN_TASK
from worker.settings import WorkerSettings


def create_app(settings: WorkerSettings) -> Celery:
    app = Celery("bnlab", include=["worker.tasks", "worker.signals"])
    app.conf.update(
        broker_url=settings.celery_broker_url,
        broker_transport_options=settings.celery_transport_options(),
        broker_connection_retry_on_startup=True,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        result_backend=None,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # The same exchange/routing Celery creates for the API's send_task(queue=...).
        task_queues=[Queue(name, Exchange(name, type="direct"), routing_key=name)
                     for name in QUEUES],
        task_default_queue="cpu",
        task_routes={TRAIN_TASK: {"queue": "cpu"}},  # the API overrides it per job
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        # Training is one long task; its bounds are the spec limits, not a time limit.
        task_time_limit=None,
        task_soft_time_limit=None,
    )
    return app


settings = WorkerSettings()
app = create_app(settings)


@celeryd_init.connect
def _prepare_dirs(**_: Any) -> None:
    # The filesystem transport needs its folders before the worker connects; done here rather
    # than at import so importing this module has no side effects.
    settings.prepare_dirs()


@setup_logging.connect
def _configure_logging(loglevel: int | str | None = None, **_: Any) -> None:
    # With a receiver here Celery leaves logging alone: its lines and the task's come out in
    # BNLAB_LOG_FORMAT like the API's, job_id bound by the task (worker.training_run).
    configure_logging(settings.log_format, loglevel or settings.log_level)
