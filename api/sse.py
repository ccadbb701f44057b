"""Server-Sent Events polled from the database: the polling loop every stream runs, the
framing of its events, and the feed that all of this process's streams of one job share.

The database is polled every `POLL_INTERVAL_S` in the threadpool, in a short session (no
connection is held between polls), so it works the same on SQLite and PostgreSQL and behind
several API processes: any process can serve any reconnect. A stream is a `Poller`: stateful,
it remembers what it sent; `stream()` yields its events (FastAPI's EventSourceResponse frames
them and pings while idle), `framed()` frames each poll's events into one chunk itself.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import math
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from fastapi.sse import ServerSentEvent, format_sse_event
from sqlalchemy.orm import Session, sessionmaker

from api.presenters import epoch_payload, job_out, status_payload
from models.db import repository as repo
from models.db.tables import TERMINAL

POLL_INTERVAL_S = 0.5  # module-level so tests may shorten it
RETRY_MS = 2000  # what a browser waits before reconnecting after a dropped connection


@dataclass
class Poll:
    """What one poll found: events to send in order, and whether the stream is over."""

    events: list[ServerSentEvent] = field(default_factory=list)
    finished: bool = False


class Poller(Protocol):
    """Stateful: remembers what it already sent. `poll` runs in the threadpool with a session
    that is closed right after, so no connection is held between polls."""

    def poll(self, session: Session) -> Poll: ...


async def polls(sessions: sessionmaker[Session], poller: Poller,
                interval: float | None = None) -> AsyncIterator[list[ServerSentEvent]]:
    """Poll until the poller says finished, yielding each poll's events (maybe none); the
    stream's first event carries `retry:`."""

    def once() -> Poll:
        with sessions() as session:
            return poller.poll(session)

    first = True
    while True:
        result = await run_in_threadpool(once)
        if first and result.events:  # a copy: epoch events are shared by a job's streams
            result.events[0] = result.events[0].model_copy(update={"retry": RETRY_MS})
            first = False
        yield result.events
        if result.finished:
            return
        await asyncio.sleep(POLL_INTERVAL_S if interval is None else interval)


async def stream(sessions: sessionmaker[Session], poller: Poller,
                 interval: float | None = None) -> AsyncIterator[ServerSentEvent]:
    """Poll until the poller says finished, yielding its events; the first carries `retry:`."""
    async for events in polls(sessions, poller, interval):
        for event in events:
            yield event


class EventStream(StreamingResponse):
    media_type = "text/event-stream"


# What FastAPI documents for an EventSourceResponse route, kept for the hand-framed stream.
SSE_ITEM = {"type": "object", "properties": {
    "data": {"type": "string"}, "event": {"type": "string"}, "id": {"type": "string"},
    "retry": {"type": "integer", "minimum": 0}}}
PING_INTERVAL_S = 15.0  # a comment line while idle, so proxies keep the connection


def frame(event: ServerSentEvent) -> bytes:
    data = event.raw_data if event.raw_data is not None else (
        None if event.data is None else json.dumps(event.data, separators=(",", ":"),
                                                   allow_nan=False))
    return format_sse_event(data_str=data, event=event.event, id=event.id, retry=event.retry,
                            comment=event.comment)


async def framed(sessions: sessionmaker[Session], poller: Poller) -> AsyncIterator[bytes]:
    """`stream()`'s events, each poll's framed into one chunk: one write per poll instead of
    one per epoch through every ASGI layer (50 viewers of a job training 75 epochs a second
    were 3,700 sends a second, most of the API's CPU)."""
    idle_since = time.monotonic()
    async for events in polls(sessions, poller):
        if events:
            yield b"".join(frame(e) for e in events)
            idle_since = time.monotonic()
        elif time.monotonic() - idle_since >= PING_INTERVAL_S:
            yield b": ping\n\n"
            idle_since = time.monotonic()



# ------------------------------------------------------------------------------ a job's feed


@dataclass
class Snapshot:
    """A job as one poll of its feed found it (status None: the job was deleted)."""

    status: str | None
    terminal: bool
    status_data: dict[str, Any]
    done_data: dict[str, Any] | None


class JobFeed:
    """One job's events as every stream of it in this process sees them: the database is read
    once per POLL_INTERVAL_S for all of them (not once per stream: 50 viewers of a training
    job were 100 polls a second), and each stream takes what it has not sent yet.

    Holds the job's epoch payloads while any stream of the job is open (about 0.5 KB each).
    """

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self._lock = threading.Lock()
        self._polled = -math.inf
        self._snapshot: Snapshot | None = None
        self._epochs: list[int] = []  # increasing, and their events alongside
        self._events: list[ServerSentEvent] = []

    def read(self, session: Session, after: int) -> tuple[Snapshot, list[ServerSentEvent]]:
        """The latest snapshot (polled now if the last poll is older than POLL_INTERVAL_S)
        and the events of the epochs after `after` (shared: copy one before changing it)."""
        with self._lock:
            if self._snapshot is None or time.monotonic() - self._polled >= POLL_INTERVAL_S:
                self._snapshot = self._poll(session)
                self._polled = time.monotonic()
            start = bisect.bisect_right(self._epochs, after)
            return self._snapshot, self._events[start:]

    def _poll(self, session: Session) -> Snapshot:
        # The job row first, then the epochs: a terminal status was committed after the last
        # epoch's row, so the epochs read next include all of them.
        job = repo.get_job(session, job_id=self.job_id)
        if job is None:
            return Snapshot(None, True, {}, None)
        last = self._epochs[-1] if self._epochs else 0
        if job.epochs_done < last:  # resumed from an earlier checkpoint: epochs rewritten
            self._epochs, self._events, last = [], [], 0
        for row in repo.history(session, job_id=self.job_id, since=last):
            self._epochs.append(row.epoch)
            # Encoded once here, not by every stream (FastAPI's jsonable_encoder per event
            # per stream was most of the API's time with 50 viewers of a training job).
            self._events.append(ServerSentEvent(
                event="epoch", id=str(row.epoch), raw_data=json.dumps(
                    epoch_payload(row), separators=(",", ":"), allow_nan=False)))
        terminal = job.status in TERMINAL
        return Snapshot(str(job.status), terminal, status_payload(job),
                        job_out(job).model_dump(mode="json") if terminal else None)


_feeds: dict[tuple[int, str], tuple[JobFeed, int]] = {}  # (sessions, job) -> feed, streams
_feeds_lock = threading.Lock()


@contextlib.contextmanager
def shared_feed(sessions: sessionmaker[Session], job_id: str) -> Iterator[JobFeed]:
    """The feed of `job_id` that this process's open streams share; gone with the last one."""
    key = (id(sessions), job_id)
    with _feeds_lock:
        feed, n = _feeds.get(key, (JobFeed(job_id), 0))
        _feeds[key] = (feed, n + 1)
    try:
        yield feed
    finally:
        with _feeds_lock:
            feed, n = _feeds[key]
            if n <= 1:
                del _feeds[key]
            else:
                _feeds[key] = (feed, n - 1)


@dataclass
class JobEvents:
    """The poller of one job's stream: what it sent so far, read from the job's feed (a
    private one unless the route passes the shared one)."""

    job_id: str
    last_epoch: int = 0
    last_status: str | None = None
    feed: JobFeed | None = None

    def poll(self, session: Session) -> Poll:
        if self.feed is None:
            self.feed = JobFeed(self.job_id)
        snap, epochs = self.feed.read(session, self.last_epoch)
        if snap.status is None:
            return Poll([ServerSentEvent(event="error", data={
                "error": "NotFound", "detail": f"job '{self.job_id}' was deleted"})], True)
        out = Poll()
        status_changed = snap.status != self.last_status
        if status_changed and not snap.terminal:
            out.events.append(ServerSentEvent(event="status", data=snap.status_data))
        for event in epochs:
            out.events.append(event)
            self.last_epoch = int(event.id or 0)
        if status_changed and snap.terminal:
            out.events.append(ServerSentEvent(event="status", data=snap.status_data))
        self.last_status = snap.status
        if snap.terminal:
            out.events.append(ServerSentEvent(event="done", data=snap.done_data))
            out.finished = True
        return out
