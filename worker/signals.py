"""Worker lifecycle hooks in the main process: heartbeat, reaper and broker clean-up threads,
and the release of running jobs on shutdown."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from billiard.process import current_process
from celery.signals import worker_ready, worker_shutdown, worker_shutting_down

from models.queueing import TRAIN_TASK
from worker.heartbeat import Periodic, clean_processed, worker_device
from worker.hold import counted_sweeps

log = logging.getLogger(__name__)
_threads: list[Periodic] = []
# Set when this worker starts shutting down; a task running in this process (solo pool) sees
# it at its next epoch end. Pool children see the job's release_requested flag instead.
STOPPING = threading.Event()


@contextmanager
def sigterm_stops_training() -> Iterator[None]:
    """While a task trains in a pool child: SIGTERM sent to the child itself (the whole process
    group was signalled: systemd, `kill -- -PGID`) stops the job at its epoch end, checkpointed
    and released, as the parent's warm shutdown would. billiard installs its own handlers after
    worker_process_init, so this is set around the task and restored after it. The solo pool
    runs tasks in the main process, where Celery's own handler does the job."""
    if current_process().name == "MainProcess" \
            or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, lambda *_: STOPPING.set())
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@worker_ready.connect
def start_background(sender: Any = None, **_: Any) -> None:
    from models.db.repository import beat_worker
    from worker.celery_app import settings
    from worker.db import sessions
    from worker.reaper import Reaper, broker_messages

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

    def enqueue(job_id: str, queue: str) -> None:
        sender.app.send_task(TRAIN_TASK, args=[job_id], queue=queue, ignore_result=True)

    reaper = Reaper(sessions(url), enqueue, broker_messages(settings),
                    lease_timeout=settings.lease_timeout, requeue_grace=settings.requeue_grace)
    _threads.append(Periodic("bnlab-heartbeat", settings.heartbeat_interval, beat))
    _threads.append(Periodic("bnlab-reaper", settings.reaper_interval,
                             counted_sweeps(settings.test_hold_dir, reaper.sweep)))
    if settings.embedded:
        processed = Path(settings.celery_transport_options()["processed_folder"])
        _threads.append(Periodic(
            "bnlab-broker-cleanup", settings.broker_cleanup_interval,
            lambda: clean_processed(processed, older_than=settings.broker_retention)))
    for thread in _threads:
        thread.start()
    log.info("worker %s ready: queues %s, device %s", name, ",".join(queues), device)


@worker_shutting_down.connect
def release_running_jobs(sender: Any = None, **_: Any) -> None:
    """SIGTERM (warm shutdown): every job this node runs checkpoints at its epoch end and goes
    back to the queue for another worker, its attempt not counted.

    This runs inside the signal handler, possibly on the thread that is training and holding a
    database transaction, so the database write happens on a thread of its own.
    """
    STOPPING.set()
    # No more sweeps here: they would re-enqueue the released job for this very consumer.
    for thread in _threads:
        if thread.name == "bnlab-reaper":
            thread.stop()
    node = str(sender)
    threading.Thread(target=_request_release, args=(node,), name="bnlab-release").start()


def _request_release(node: str) -> None:
    from models.db.repository import request_release
    from worker.celery_app import settings
    from worker.db import retrying, sessions

    def mark() -> list[str]:
        with sessions(settings.sqlalchemy_url).begin() as session:
            return request_release(session, worker=node)

    try:
        ids = retrying(mark, what="release on shutdown", deadline_s=15.0)
    except Exception:
        log.warning("could not ask %s's jobs to stop; their leases will lapse", node,
                    exc_info=True)
        return
    if ids:
        log.info("worker %s shutting down: releasing jobs %s at their epoch end", node,
                 ", ".join(ids))


@worker_shutdown.connect
def stop_background(**_: Any) -> None:
    for thread in _threads:
        thread.stop()
    _threads.clear()
