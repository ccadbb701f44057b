"""The reaper: a periodic sweep that gives lost jobs back to the queue.

(a) Running jobs whose lease heartbeat is older than lease_timeout lost their worker (killed,
OOM, machine gone): released to queued and re-enqueued, or failed once their attempts are
spent. (b) Queued jobs no broker holds any more (Redis lost its data, a local transport dropped
an in-flight message) are enqueued again, and so are queued jobs whose only message was
delivered longer than the lease timeout ago to a consumer that never claimed the job (killed
between taking the message and the claim: Redis would keep it unacknowledged for the whole
visibility timeout, 12 h). Every worker runs one; they may race, so every
transition is a conditional update, and a duplicate message is harmless (the claim is
conditional too). Cancelled and finished jobs are never touched.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import time
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
# for steps above 0), one hash of messages delivered but not acknowledged yet, and a sorted
# set of their delivery tags scored by when they were delivered.
_REDIS_PRIORITY_SEP = "\x06\x16"
_REDIS_UNACKED = "unacked"
_REDIS_UNACKED_INDEX = "unacked_index"


@dataclass(frozen=True)
class BrokerView:
    """What a broker holds for our queues, as searchable text: `held`, messages waiting or
    delivered recently (`job_id in view` asks this), and `stranded`, messages delivered long
    ago and never acknowledged, whose consumer died before it claimed the job."""

    held: str
    stranded: str = ""

    def __contains__(self, job_id: str) -> bool:
        return job_id in self.held


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


def redis_messages(url: str, *, stranded_after_s: float | None = None) -> BrokerView:
    """Every message the Redis broker holds for our queues, waiting or unacknowledged; with
    `stranded_after_s`, those unacknowledged for longer than that count as stranded."""
    import redis

    client = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=10)
    try:
        keys = list(QUEUES) + [f"{q}{_REDIS_PRIORITY_SEP}{step}"
                                      for q in QUEUES for step in range(1, 10)]
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.lrange(key, 0, -1)
        pipe.hgetall(_REDIS_UNACKED)
        pipe.zrangebyscore(_REDIS_UNACKED_INDEX, "-inf", "+inf", withscores=True)
        *chunks, unacked, delivered = pipe.execute()
    finally:
        client.close()
    waiting = [_message_text(m) for chunk in chunks for m in chunk]
    # kombu scores a delivery with the consumer's time.time(); the lease timeout is far
    # larger than any clock skew between our hosts is allowed to be.
    cutoff = None if stranded_after_s is None else time.time() - stranded_after_s
    since = dict(delivered)
    fresh: list[str] = []
    stranded: list[str] = []
    for tag, raw in unacked.items():
        at = since.get(tag)
        old = cutoff is not None and at is not None and at < cutoff
        (stranded if old else fresh).append(_message_text(raw))
    return BrokerView("\n".join(waiting + fresh), "\n".join(stranded))


def folder_messages(folder: Path) -> BrokerView:
    """Every message waiting in the filesystem transport's queue folder."""
    texts = []
    for path in folder.glob("*.msg"):
        try:
            texts.append(_message_text(path.read_bytes()))
        except FileNotFoundError:  # consumed meanwhile
            continue
    # A consumed message file is gone: nothing is ever unacknowledged here.
    return BrokerView("\n".join(texts))


def broker_messages(settings: WorkerSettings) -> Callable[[], BrokerView]:
    """What the configured broker holds; a message delivered longer than the lease timeout
    ago and still unacknowledged, for a job still queued, is stranded."""
    if settings.embedded:
        folder = Path(settings.celery_transport_options()["data_folder_in"])
        return lambda: folder_messages(folder)
    url = settings.redis_url
    if url is None:
        scheme = settings.celery_broker_url.split(":", 1)[0]
        raise ValueError(f"the reaper cannot look into broker {scheme!r}")
    return lambda: redis_messages(url, stranded_after_s=settings.lease_timeout)


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
    broker_messages: Callable[[], BrokerView]
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
                why = ("its message was taken by a consumer that never claimed it"
                       if job_id in held.stranded else "no broker holds its message")
                log.warning("reaper: job %s is queued but %s; re-enqueued", job_id, why)
                done.requeued_orphans.append(job_id)
                self._send(job_id, queue)

    def _send(self, job_id: str, queue: str) -> None:
        try:
            self.enqueue(job_id, queue)
        except Exception:
            # Queued with a fresh updated_at: the next sweep after the grace period retries.
            log.warning("reaper: could not enqueue job %s; will retry", job_id, exc_info=True)
