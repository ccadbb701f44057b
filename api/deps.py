"""Request dependencies as `Annotated` aliases: routes take `SessionDep`, `JobDep`, ... directly."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Path, Request
from sqlalchemy.orm import Session

from api.auth import Principal
from api.errors import NotFound
from api.predictors import PredictorCache
from api.queue import JobQueue
from api.settings import ApiSettings
from models.db import repository as repo
from models.db.tables import Dataset, Job


def get_settings(request: Request) -> ApiSettings:
    return request.app.state.settings  # type: ignore[no-any-return]


def get_queue(request: Request) -> JobQueue:
    return request.app.state.queue  # type: ignore[no-any-return]


def get_predictors(request: Request) -> PredictorCache:
    return request.app.state.predictors  # type: ignore[no-any-return]


def get_session(request: Request) -> Iterator[Session]:
    # Routes commit what they change; anything uncommitted is rolled back on close.
    with request.app.state.sessions() as session:
        yield session


def get_principal(request: Request) -> Principal:
    # Authenticate (middleware) put it there for every /v1 request, or answered 401; a route
    # outside /v1 has none and must not need one.
    principal = getattr(request.state, "principal", None)
    if not isinstance(principal, Principal):
        raise RuntimeError(f"no principal for {request.url.path}: only /v1 routes have one")
    return principal


# The largest epoch number a request may name (query, path or Last-Event-ID): beyond any
# max_epochs, and small enough for every database's integer column.
MAX_EPOCH_NUMBER = 2**31 - 1

SettingsDep = Annotated[ApiSettings, Depends(get_settings)]
QueueDep = Annotated[JobQueue, Depends(get_queue)]
PredictorsDep = Annotated[PredictorCache, Depends(get_predictors)]
SessionDep = Annotated[Session, Depends(get_session)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]

# No pattern on ids: an id that cannot exist is simply not found (404), not a 422. Another
# key's id is not found either: nothing tells a caller that it exists.
JobId = Annotated[str, Path(description="id returned by POST /v1/jobs")]
DatasetId = Annotated[str, Path(description="id returned by POST /v1/datasets")]


def get_job_or_404(job_id: JobId, session: SessionDep, principal: PrincipalDep) -> Job:
    job = repo.get_job(session, job_id=job_id, owner=principal.owner)
    if job is None:
        raise NotFound(f"no job with id '{job_id}': list jobs with GET /v1/jobs")
    return job


def get_dataset_or_404(dataset_id: DatasetId, session: SessionDep,
                       principal: PrincipalDep) -> Dataset:
    dataset = repo.get_dataset(session, dataset_id=dataset_id, owner=principal.owner)
    if dataset is None:
        raise NotFound(f"no dataset with id '{dataset_id}': list datasets with GET /v1/datasets")
    return dataset


JobDep = Annotated[Job, Depends(get_job_or_404)]
DatasetDep = Annotated[Dataset, Depends(get_dataset_or_404)]
