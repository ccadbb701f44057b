"""A job's live events as Server-Sent Events, read from the database (not the broker) through
the feed its streams share (`api.sse`).

`/v1/jobs/{id}/events`:
- `event: status`, data `{"job_id", "status", "epoch", "epochs", "error"}`: the state at connect,
  then every change seen (a change that comes and goes between two polls is not seen);
- `event: epoch`, `id: <epoch>`, data `{"job_id", "epoch", "loss", ..., "wall_time"}`: each
  stored epoch once, in order (NaN/inf are null);
- `event: done`, data the job as `GET /v1/jobs/{id}` returns it; then the stream ends (a browser
  `EventSource` must `close()` on it, or it reconnects and gets `done` again).
- `event: error`, data `{"error", "detail"}`: the job was deleted meanwhile; the stream ends.
A reconnect with `Last-Event-ID: N` (or `?last_event_id=N`) resumes after epoch N.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import APIRouter, Response

from api.deps import ResumeEpochDep, SessionsDep, StreamedJobId
from api.sse import SSE_ITEM, EventStream, JobEvents, framed, shared_feed

router = APIRouter(prefix="/jobs", tags=["events"])


# response_class=Response (no media type): FastAPI would otherwise document the body as a
# plain string beside the item schema.
@router.get("/{job_id}/events", response_class=Response, responses={
    200: {"description": "`status`, `epoch` (id = epoch number) and a final `done` event",
          "content": {"text/event-stream": {"itemSchema": SSE_ITEM}}},
    404: {"description": "no such job"}, 422: {"description": "Last-Event-ID is not an epoch"}})
async def job_events(job_id: StreamedJobId, sessions: SessionsDep,
                     after: ResumeEpochDep) -> EventStream:
    """Server-Sent Events of one job: its status, every finished epoch's metrics, then `done`."""

    async def body() -> AsyncIterator[bytes]:
        with shared_feed(sessions, job_id) as feed:
            async for chunk in framed(sessions, JobEvents(job_id, last_epoch=after, feed=feed)):
                yield chunk

    return EventStream(body(), headers={"Cache-Control": "no-cache",
                                        "X-Accel-Buffering": "no"})
