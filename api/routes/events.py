"""Live events as Server-Sent Events, read from the database (not the broker).

Each stream polls the database every `POLL_INTERVAL_S` in the threadpool, in a short session of
its own, so it works the same on SQLite and PostgreSQL and behind several API processes: any
process can serve any reconnect. FastAPI's SSE support encodes the events and sends `: ping`
comments while a stream is idle.

`/v1/jobs/{id}/events`:
- `event: status`, data `{"job_id", "status", "epoch", "epochs", "error"}`: the state at connect,
  then every change seen (a change that comes and goes between two polls is not seen);
- `event: epoch`, `id: <epoch>`, data `{"job_id", "epoch", "loss", ..., "wall_time"}`: each
  stored epoch once, in order (NaN/inf are null);
- `event: done`, data the job as `GET /v1/jobs/{id}` returns it; then the stream ends (a browser
  `EventSource` must `close()` on it, or it reconnects and gets `done` again).
- `event: error`, data `{"error", "detail"}`: the job was deleted meanwhile; the stream ends.
A reconnect with `Last-Event-ID: N` (or `?last_event_id=N`) resumes after epoch N.

Other streams (experiments) reuse `stream()` with a `Poller` of their own.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Annotated, Any, Protocol

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.sse import EventSourceResponse, ServerSentEvent
from sqlalchemy.orm import Session, sessionmaker

from api.deps import MAX_EPOCH_NUMBER, JobId, PrincipalDep
from api.errors import InvalidInput, NotFound
from api.routes.jobs import job_out
from api.routes.results import COLUMNS, EXTRA_SERIES, finite
from models.db import repository as repo
from models.db.tables import TERMINAL, EpochMetric, Job

router = APIRouter(prefix="/jobs", tags=["events"])

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


async def stream(sessions: sessionmaker[Session], poller: Poller,
                 interval: float | None = None) -> AsyncIterator[ServerSentEvent]:
    """Poll until the poller says finished, yielding its events; the first carries `retry:`."""

    def once() -> Poll:
        with sessions() as session:
            return poller.poll(session)

    first = True
    while True:
        result = await run_in_threadpool(once)
        for event in result.events:
            if first:
                event.retry, first = RETRY_MS, False
            yield event
        if result.finished:
            return
        await asyncio.sleep(POLL_INTERVAL_S if interval is None else interval)


def epoch_after(last_event_id: str | None) -> int:
    if last_event_id is None:
        return 0
    try:
        epoch = int(last_event_id)
    except ValueError:
        epoch = -1
    if not 0 <= epoch <= MAX_EPOCH_NUMBER:
        raise InvalidInput([f"Last-Event-ID: '{last_event_id[:40]}' is not an epoch number; "
                            "send the id of the last epoch event received, or none to start "
                            "over"])
    return epoch



def epoch_payload(row: EpochMetric) -> dict[str, Any]:
    """One epoch's metrics as the history endpoint names them."""
    data: dict[str, Any] = {"job_id": row.job_id, "epoch": row.epoch}
    for col in COLUMNS:
        data[col] = finite(getattr(row, col))
    for name in EXTRA_SERIES:
        if (row.extras or {}).get(name) is not None:
            data[name] = finite(row.extras[name])  # type: ignore[index]
    return data


def status_payload(job: Job) -> dict[str, Any]:
    return {"job_id": job.id, "status": str(job.status), "epoch": job.epochs_done,
            "epochs": job.epochs_total, "error": job.error}


@dataclass
class JobEvents:
    """The poller of one job's stream."""

    job_id: str
    last_epoch: int = 0
    last_status: str | None = None

    def poll(self, session: Session) -> Poll:
        # The job row first, then the epochs: a terminal status was committed after the last
        # epoch's row, so the epochs read next include all of them.
        job = repo.get_job(session, job_id=self.job_id)
        if job is None:
            return Poll([ServerSentEvent(event="error", data={
                "error": "NotFound", "detail": f"job '{self.job_id}' was deleted"})], True)
        out = Poll()
        status = str(job.status)
        terminal = job.status in TERMINAL
        status_changed = status != self.last_status
        if status_changed and not terminal:
            out.events.append(ServerSentEvent(event="status", data=status_payload(job)))
        for row in repo.history(session, job_id=self.job_id, since=self.last_epoch):
            out.events.append(ServerSentEvent(event="epoch", id=str(row.epoch),
                                              data=epoch_payload(row)))
            self.last_epoch = row.epoch
        if status_changed and terminal:
            out.events.append(ServerSentEvent(event="status", data=status_payload(job)))
        self.last_status = status
        if terminal:
            out.events.append(ServerSentEvent(
                event="done", data=job_out(job).model_dump(mode="json")))
            out.finished = True
        return out


def get_sessions(request: Request) -> sessionmaker[Session]:
    return request.app.state.sessions  # type: ignore[no-any-return]


SessionsDep = Annotated[sessionmaker[Session], Depends(get_sessions)]


def resume_after(
    last_event_id_header: Annotated[str | None, Header(
        alias="Last-Event-ID", description="resume after this event id (EventSource sends it "
                                           "on reconnect)")] = None,
    last_event_id: Annotated[str | None, Query(
        description="the same as the Last-Event-ID header, for clients that cannot set it; "
                    "wins over the header")] = None,
) -> str | None:
    """The resume point; a dependency, so a bad one is a 422 before the stream starts."""
    value = last_event_id if last_event_id not in (None, "") else last_event_id_header
    return value.strip() if value and value.strip() else None


ResumeDep = Annotated[str | None, Depends(resume_after)]


def existing_job_id(job_id: JobId, sessions: SessionsDep, principal: PrincipalDep) -> str:
    # A short session of its own: the request's session dependency would hold a database
    # connection for as long as the stream lasts. Ownership is checked here, once: the job's
    # owner never changes.
    with sessions() as session:
        if repo.get_job(session, job_id=job_id, owner=principal.owner) is None:
            raise NotFound(f"no job with id '{job_id}': list jobs with GET /v1/jobs")
    return job_id


def epoch_resume(last_event_id: ResumeDep) -> int:
    return epoch_after(last_event_id)


@router.get("/{job_id}/events", response_class=EventSourceResponse, responses={
    200: {"description": "`status`, `epoch` (id = epoch number) and a final `done` event"},
    404: {"description": "no such job"}, 422: {"description": "Last-Event-ID is not an epoch"}})
async def job_events(
    job_id: Annotated[str, Depends(existing_job_id)], sessions: SessionsDep,
    after: Annotated[int, Depends(epoch_resume)],
) -> AsyncIterator[ServerSentEvent]:
    """Server-Sent Events of one job: its status, every finished epoch's metrics, then `done`."""
    async for event in stream(sessions, JobEvents(job_id, last_epoch=after)):
        yield event
