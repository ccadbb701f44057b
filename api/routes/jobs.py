"""Jobs: submit, list, read, cancel, delete."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, Query, Request, Response, status
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api.auth import Principal, require_visible_dataset
from api.deps import (
    JobDep,
    JobId,
    PrincipalDep,
    QueueDep,
    SessionDep,
    SettingsDep,
    get_job_or_404,
    get_principal,
)
from api.errors import Conflict, InvalidInput, NotReady
from api.examples import JOB_EXAMPLES
from api.ratelimit import check_active_jobs
from api.resolve import resolve
from api.schemas import JobOut, JobPage
from models.db import repository as repo
from models.db.tables import TERMINAL, Job, JobStatus
from models.spec import JobSpec

router = APIRouter(prefix="/jobs", tags=["jobs"])
log = logging.getLogger(__name__)


def job_out(job: Job) -> JobOut:
    elapsed = None
    if job.started_at is not None:  # timestamps come back timezone-aware (UTC)
        end = job.finished_at or datetime.now(UTC)
        elapsed = round((end - job.started_at).total_seconds(), 3)
    return JobOut(
        id=job.id, name=job.name, status=str(job.status), queue=job.queue, device=job.device,
        worker=job.worker, epoch=job.epochs_done, epochs=job.epochs_total,
        attempts=job.attempts, cancel_requested=job.cancel_requested, error=job.error,
        warnings=job.warnings or [], final_metrics=job.final_metrics,
        best_metrics=job.best_metrics, best_epoch=job.best_epoch, dataset_id=job.dataset_id,
        created_at=job.created_at, started_at=job.started_at, finished_at=job.finished_at,
        heartbeat_at=job.heartbeat_at, elapsed_s=elapsed, experiment_id=job.experiment_id,
        variant=job.variant, seed=job.seed, spec=job.spec,
    )


def body_hash(stored: dict[str, Any]) -> str:
    """What an Idempotency-Key replay compares: the normalised body, key order aside."""
    return hashlib.sha256(json.dumps(stored, sort_keys=True).encode()).hexdigest()


def choose_queue(session: Session, device: str, within_s: float) -> str:
    """cuda* -> gpu; auto -> gpu while a worker with a GPU serves it, else cpu; cpu -> cpu.

    A worker counts only if it reports a CUDA device: the embedded worker listens on both
    queues from a CPU-only machine, and `auto` jobs there belong on `cpu`.
    """
    if device.startswith("cuda"):
        return "gpu"
    if device == "auto" and any(
            (w.device or "").startswith("cuda")
            for w in repo.live_workers(session, queue="gpu", within_s=within_s)):
        return "gpu"
    return "cpu"


@router.post("", status_code=status.HTTP_202_ACCEPTED, response_model=JobOut,
             responses={200: {"description": "an earlier job with the same Idempotency-Key"},
                        409: {"description": "Idempotency-Key reused with another body"},
                        429: {"description": "rate limited, or max_active_jobs_per_key reached"},
                        503: {"description": "the broker is unreachable; nothing was stored"},
                        422: {"description": "the spec cannot run; `detail` lists what to change"}})
def submit_job(
    spec: Annotated[JobSpec, Body(openapi_examples=JOB_EXAMPLES)],
    session: SessionDep, settings: SettingsDep, queue: QueueDep, response: Response,
    principal: PrincipalDep,
    idempotency_key: Annotated[str | None, Header(max_length=255, description=(
        "retry-safe submission: the same key and body return the first job"))] = None,
) -> JobOut:
    """Validate the spec against its dataset, store it, then enqueue the job's id."""
    stored = spec.model_dump(mode="json")  # normalised: defaults filled, one spelling
    request_hash = body_hash(stored)
    if idempotency_key is not None:
        earlier = repo.find_by_idempotency_key(session, idempotency_key=idempotency_key,
                                               owner=principal.owner)
        if earlier is not None:
            return _replayed(earlier, request_hash, response)
    require_visible_dataset(session, spec, principal.owner)
    resolved, dataset = resolve(session, spec, settings.limits(), data_dir=settings.data_dir)
    check_active_jobs(session, owner=principal.owner, adding=1,
                      limit=settings.max_active_jobs_per_key)
    queue_name = choose_queue(session, spec.device, settings.worker_alive_within_s)
    try:
        job = repo.create_job(
            session, spec=stored, name=spec.name, queue=queue_name, device=spec.device,
            epochs_total=spec.training.epochs, warnings=resolved.warnings,
            dataset_id=dataset.id if dataset is not None else None,
            idempotency_key=idempotency_key, request_hash=request_hash,
            max_attempts=settings.max_attempts, owner=principal.owner,
        )
        session.commit()  # commit, then enqueue: the worker must find the row
    except IntegrityError:
        # A concurrent request with the same Idempotency-Key won the race.
        session.rollback()
        earlier = repo.find_by_idempotency_key(session, idempotency_key=idempotency_key or "",
                                               owner=principal.owner)
        if earlier is None:
            raise
        return _replayed(earlier, request_hash, response)
    try:
        queue.enqueue(job.id, queue=queue_name)
    except Exception as exc:
        # Nothing would ever pick the row up: remove it so a retry starts clean.
        log.exception("enqueue of job %s failed", job.id)
        repo.delete_job(session, job_id=job.id)
        session.commit()
        raise NotReady(f"the broker did not accept the job ({type(exc).__name__}); nothing "
                       "was stored: retry shortly (GET /readyz shows the broker's state)") from None
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return job_out(job)


def _replayed(job: Job, request_hash: str, response: Response) -> JobOut:
    if job.request_hash != request_hash:
        raise Conflict(f"Idempotency-Key already used for job '{job.id}' with a different "
                       "body: use a new key for a new job")
    response.status_code = status.HTTP_200_OK
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return job_out(job)


@router.get("", response_model=JobPage)
def list_jobs(
    session: SessionDep, principal: PrincipalDep,
    status: Annotated[JobStatus | None, Query(description="only jobs in this state")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
    experiment_id: Annotated[str | None, Query(description="only this experiment's "
                                                           "children")] = None,
) -> JobPage:
    """Newest first."""
    try:
        rows, next_cursor = repo.list_jobs(session, status=status, limit=limit, cursor=cursor,
                                           experiment_id=experiment_id, owner=principal.owner)
    except repo.InvalidCursor as exc:
        raise InvalidInput([f"cursor: {exc}"]) from None
    return JobPage(items=[job_out(j) for j in rows], next_cursor=next_cursor)


@contextmanager
def one_hop(request: Request) -> Iterator[tuple[Session, Principal]]:
    """A short session and the caller, for a sync route that does all its database work (and
    its serialising) in its own body: one threadpool hop, the connection back in the pool
    before the response is sent.

    With `JobDep` + `SessionDep` the session holds its connection across FastAPI's separate
    hops (dependency, endpoint, response validation, dependency exit), each waiting for a
    free threadpool thread. Under a few hundred pollers every pooled connection ended up
    parked in a request waiting for a thread while every thread waited for a connection:
    the pool timed out (30 s) and answered 500s.
    """
    principal = get_principal(request)
    with request.app.state.sessions() as session:
        yield session, principal


def job_etag(job: Job, *parts: object) -> str:
    """A weak ETag of what is read from a job: every write to the job's row (progress, status,
    heartbeat, a stored or truncated epoch) moves its updated_at. Weak: `elapsed_s` follows
    the clock between writes. `parts` add request parameters (history's since, format)."""
    raw = "|".join(str(p) for p in (job.id, job.status, job.epochs_done,
                                    job.updated_at.isoformat(), *parts))
    return f'W/"{hashlib.sha256(raw.encode()).hexdigest()[:24]}"'


def not_modified(request: Request, etag: str) -> Response | None:
    """304 when If-None-Match names `etag` (weak comparison, as RFC 9110 asks for GET)."""
    header = request.headers.get("if-none-match")
    if header is None:
        return None
    tags = {t.strip().removeprefix("W/") for t in header.split(",")}
    if "*" in tags or etag.removeprefix("W/") in tags:
        return Response(status_code=status.HTTP_304_NOT_MODIFIED,
                        headers={"ETag": etag, "Cache-Control": "no-cache"})
    return None


@router.get("/{job_id}", response_model=JobOut,
            responses={304: {"description": "If-None-Match holds the current ETag"}})
def get_job(job_id: JobId, request: Request) -> Any:
    # The hottest route (every poller): one threadpool hop with a session of its own, and
    # the body serialised here. See `one_hop`.
    with one_hop(request) as (session, principal):
        job = get_job_or_404(job_id, session, principal)
        etag = job_etag(job)
        if (unchanged := not_modified(request, etag)) is not None:
            return unchanged
        body = job_out(job).model_dump_json()
    # caches may keep it, but must revalidate
    return Response(body, media_type="application/json",
                    headers={"ETag": etag, "Cache-Control": "no-cache"})


@router.post("/{job_id}/cancel", response_model=JobOut)
def cancel_job(job: JobDep, session: SessionDep) -> JobOut:
    """A queued job is cancelled at once; a running one stops at its next epoch end."""
    if job.status in TERMINAL:
        raise Conflict(f"job '{job.id}' is already {job.status}; nothing to cancel")
    repo.request_cancel(session, job_id=job.id)
    session.commit()
    session.refresh(job)  # the repository updated the row behind the session's back
    return job_out(job)


@router.delete("/{job_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_job(job: JobDep, session: SessionDep) -> Response:
    """Delete a job with its history and checkpoints; a running job must be cancelled first."""
    if job.status == JobStatus.running:
        raise Conflict(f"job '{job.id}' is running: cancel it first (POST /v1/jobs/{job.id}/"
                       "cancel), then delete it once it has stopped")
    repo.delete_job(session, job_id=job.id)
    session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)
