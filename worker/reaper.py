"""The reaper: a periodic sweep that gives lost jobs back to the queue.

(a) Running jobs whose lease heartbeat is older than lease_timeout lost their worker (killed,
OOM, machine gone): released to queued and re-enqueued, or failed once their attempts are
spent. (b) Queued jobs no broker holds any more (Redis lost its data, a local transport dropped
an in-flight message) are enqueued again. Every worker runs one; they may race, so every
transition is a conditional update, and a duplicate message is harmless (the claim is
conditional too). Cancelled and finished jobs are never touched.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from models.db import repository as repo
from models.db.tables import JobStatus, utcnow
from models.queueing import QUEUES
from worker.settings import WorkerSettings

log = logging.getLogger(__name__)

Enqueue = Callable[[str, str], None]  # (job id, queue)
# kombu's Redis transport: a list per queue and priority step (key "<queue>\x06\x16<step>"
# for steps above 0), and one hash of messages delivered but not acknowledged yet.
_REDIS_PRIORITY_SEP = "\x06\x16"
_REDIS_UNACKED = "unacked"


def _message_text(raw: str | bytes) -> str:
    """A broker message as text, with a base64 body decoded (where the task args live)."""
    text = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
    parts = [text]
    try:
        payload: Any = json.loads(text)
    except ValueError:
        return text
    if isinstance(payload, list) and payload:  # Redis 'unacked': [message, exchange, key]
        payload = payload[0]
    if isinstance(payload, dict) and isinstance(payload.get("body"), str):
        with contextlib.suppress(ValueError):
            parts.append(base64.b64decode(payload["body"]).decode(errors="replace"))
    return "\n".join(parts)


def redis_messages(url: str) -> str:
    """Every message the Redis broker holds for our queues, waiting or unacknowledged."""
    import redis

    client = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=10)
    try:
        keys = list(QUEUES) + [f"{q}{_REDIS_PRIORITY_SEP}{step}"
                                      for q in QUEUES for step in range(1, 10)]
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.lrange(key, 0, -1)
        pipe.hvals(_REDIS_UNACKED)
        chunks: list[list[bytes]] = pipe.execute()
        return "\n".join(_message_text(m) for chunk in chunks for m in chunk)
    finally:
        client.close()


def folder_messages(folder: Path) -> str:
    """Every message waiting in the filesystem transport's queue folder."""
    texts = []
    for path in folder.glob("*.msg"):
        try:
            texts.append(_message_text(path.read_bytes()))
        except FileNotFoundError:  # consumed meanwhile
            continue
    return "\n".join(texts)


def broker_messages(settings: WorkerSettings) -> Callable[[], str]:
    """What the configured broker holds, as searchable text."""
    if settings.embedded:
        folder = Path(settings.celery_transport_options()["data_folder_in"])
        return lambda: folder_messages(folder)
    url = settings.celery_broker_url
    if not url.startswith(("redis://", "rediss://")):
        raise ValueError(f"the reaper cannot look into broker {url.split(':', 1)[0]!r}")
    return lambda: redis_messages(url)


def lost_reason(attempts: int, worker: str | None, seen: datetime | None) -> str:
    """The failure reason of a job whose worker vanished: how often, where, when last seen."""
    when = f"{seen:%Y-%m-%d %H:%M:%S} UTC" if seen is not None else "an unknown time"
    return f"worker lost {attempts} times (last seen on {worker} at {when})"


def release_dead_process(sessions: sessionmaker[Session], *, node: str, pid: int) -> list[str]:
    """Worker process `pid` of `node` died (its supervisor saw it exit): its running jobs go
    back to the queue now, counting the attempt, instead of after the lease timeout, and are
    due for the next reaper sweep (the restarted worker's, at its start). Returns their ids."""
    released = []
    with sessions.begin() as session:
        for job in repo.held_by(session, lease_prefix=f"{node}/{pid}/"):
            error = lost_reason(job.attempts, job.worker, job.heartbeat_at)
            status = repo.release_job(session, job_id=job.id, worker=job.lease_owner,
                                      error=error)
            repo.make_due(session, job_id=job.id)
            log.warning("job %s: its worker process %d died; %s", job.id, pid, status)
            released.append(job.id)
    return released


@dataclass
class Sweep:
    requeued_lost: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    requeued_orphans: list[str] = field(default_factory=list)


@dataclass
class Reaper:
    sessions: sessionmaker[Session]
    enqueue: Enqueue
    broker_messages: Callable[[], str]
    lease_timeout: float = 60.0
    requeue_grace: float = 30.0

    def sweep(self) -> Sweep:
        done = Sweep()
        self._lost_workers(done)
        self._orphaned_messages(done)
        return done

    def _lost_workers(self, done: Sweep) -> None:
        cutoff = utcnow() - timedelta(seconds=self.lease_timeout)
        with self.sessions() as session:
            stale = [(j.id, j.queue, j.attempts, j.worker, j.heartbeat_at)
                     for j in repo.stale_jobs(session, older_than_s=self.lease_timeout)]
        for job_id, queue, attempts, worker, seen in stale:
            error = lost_reason(attempts, worker, seen)
            with self.sessions.begin() as session:
                # Conditional on the heartbeat still being stale: a live worker that renewed
                # its lease since we looked keeps its job.
                status = repo.release_job(session, job_id=job_id, error=error,
                                          stale_before=cutoff)
            if status == JobStatus.queued:
                log.warning("reaper: job %s lost its worker %s (last heartbeat %s); "
                            "re-enqueued", job_id, worker, seen)
                done.requeued_lost.append(job_id)
                self._send(job_id, queue)
            elif status == JobStatus.failed:
                log.warning("reaper: job %s failed: %s", job_id, error)
                done.failed.append(job_id)
            elif status == JobStatus.cancelled:
                log.info("reaper: job %s lost its worker after a cancel; cancelled", job_id)

    def _orphaned_messages(self, done: Sweep) -> None:
        cutoff = utcnow() - timedelta(seconds=self.requeue_grace)
        with self.sessions() as session:
            waiting = [(j.id, j.queue)
                       for j in repo.queued_jobs(session, older_than_s=self.requeue_grace)]
        if not waiting:
            return
        held = self.broker_messages()
        for job_id, queue in waiting:
            if job_id in held:
                continue
            with self.sessions.begin() as session:
                # Only one of several racing reapers wins the touch, so one message is sent.
                mine = repo.touch_queued(session, job_id=job_id, untouched_since=cutoff)
            if mine:
                log.warning("reaper: job %s is queued but no broker holds its message; "
                            "re-enqueued", job_id)
                done.requeued_orphans.append(job_id)
                self._send(job_id, queue)

    def _send(self, job_id: str, queue: str) -> None:
        try:
            self.enqueue(job_id, queue)
        except Exception:
            # Queued with a fresh updated_at: the next sweep after the grace period retries.
            log.warning("reaper: could not enqueue job %s; will retry", job_id, exc_info=True)
