"""Jobs: submit, list, read, cancel, delete."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, Query, Request, Response, status

from api.auth import require_visible_dataset
from api.deps import (
    JobDep,
    JobId,
    PrincipalDep,
    QueueDep,
    SessionDep,
    SettingsDep,
    get_job_or_404,
    one_hop,
)
from api.errors import Conflict, InvalidInput
from api.examples import JOB_EXAMPLES
from api.http_cache import job_etag, not_modified
from api.presenters import job_out
from api.resolve import resolve
from api.schemas import JobOut, JobPage
from api.submission import JOB, choose_queue, submit
from models.db import repository as repo
from models.db.tables import TERMINAL, Job, JobStatus
from models.spec import JobSpec

router = APIRouter(prefix="/jobs", tags=["jobs"])


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

    def prepare() -> tuple[list[str], str | None]:
        """The resolved spec's warnings and its uploaded dataset's id."""
        require_visible_dataset(session, spec, principal.owner)
        resolved, dataset = resolve(session, spec, settings.limits(), data_dir=settings.data_dir)
        return resolved.warnings, dataset.id if dataset is not None else None

    def create(checked: tuple[list[str], str | None], request_hash: str
               ) -> tuple[Job, list[Job]]:
        warnings, dataset_id = checked
        job = repo.create_job(
            session, spec=stored, name=spec.name, device=spec.device,
            queue=choose_queue(session, spec.device, settings.worker_alive_within_s),
            epochs_total=spec.training.epochs, warnings=warnings, dataset_id=dataset_id,
            idempotency_key=idempotency_key, request_hash=request_hash,
            max_attempts=settings.max_attempts, owner=principal.owner,
        )
        return job, [job]

    job = submit(session, queue, response, JOB, stored=stored, owner=principal.owner,
                 idempotency_key=idempotency_key, max_active=settings.max_active_jobs_per_key,
                 prepare=prepare, adding=lambda _: 1, create=create)
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
