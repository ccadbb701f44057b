"""Worker lifecycle hooks: heartbeat and broker clean-up threads in the main process."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from celery.signals import worker_ready, worker_shutdown

from worker.heartbeat import Periodic, clean_processed, worker_device

log = logging.getLogger(__name__)
_threads: list[Periodic] = []


@worker_ready.connect
def start_background(sender: Any = None, **_: Any) -> None:
    from models.db.repository import beat_worker
    from worker.celery_app import settings
    from worker.db import sessions

    name: str = getattr(sender, "hostname", None) or settings.node_name
    try:
        queues = sorted(sender.app.amqp.queues.consume_from)
    except AttributeError:
        queues = settings.queues
    device = worker_device(queues)
    url = settings.sqlalchemy_url

    def beat() -> None:
        with sessions(url).begin() as session:
            beat_worker(session, name=name, queues=queues, device=device)

    _threads.append(Periodic("bnlab-heartbeat", settings.heartbeat_interval, beat))
    if settings.embedded:
        processed = Path(settings.celery_transport_options()["processed_folder"])
        _threads.append(Periodic(
            "bnlab-broker-cleanup", settings.broker_cleanup_interval,
            lambda: clean_processed(processed, older_than=settings.broker_retention)))
    for thread in _threads:
        thread.start()
    log.info("worker %s ready: queues %s, device %s", name, ",".join(queues), device)


@worker_shutdown.connect
def stop_background(**_: Any) -> None:
    for thread in _threads:
        thread.stop()
    _threads.clear()
