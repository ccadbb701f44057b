"""Request dependencies as `Annotated` aliases: routes take `SessionDep`, `JobDep`, ... directly.

Every dependency a route names lives here: app state (settings, queue, caches, sessions), the
caller, the rows a path names (404 when not the caller's), and a stream's resume point.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

from fastapi import Depends, Header, Path, Query, Request
from sqlalchemy.orm import Session, sessionmaker

from api.auth import Principal
from api.errors import InvalidInput, NotFound
from api.predictors import ExportCache, PredictorCache
from api.queue import JobQueue
from api.settings import ApiSettings
from models.db import repository as repo
from models.db.tables import Dataset, Experiment, Job, Study


def get_settings(request: Request) -> ApiSettings:
    return request.app.state.settings  # type: ignore[no-any-return]


def get_queue(request: Request) -> JobQueue:
    return request.app.state.queue  # type: ignore[no-any-return]


def get_predictors(request: Request) -> PredictorCache:
    return request.app.state.predictors  # type: ignore[no-any-return]


def get_exports(request: Request) -> ExportCache:
    return request.app.state.exports  # type: ignore[no-any-return]


def get_session(request: Request) -> Iterator[Session]:
    # Routes commit what they change; anything uncommitted is rolled back on close.
    with request.app.state.sessions() as session:
        yield session


def get_sessions(request: Request) -> sessionmaker[Session]:
    return request.app.state.sessions  # type: ignore[no-any-return]


def get_principal(request: Request) -> Principal:
    # Authenticate (middleware) put it there for every /v1 request, or answered 401; a route
    # outside /v1 has none and must not need one.
    principal = getattr(request.state, "principal", None)
    if not isinstance(principal, Principal):
        raise RuntimeError(f"no principal for {request.url.path}: only /v1 routes have one")
    return principal


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


# The largest epoch number a request may name (query, path or Last-Event-ID): beyond any
# max_epochs, and small enough for every database's integer column.
MAX_EPOCH_NUMBER = 2**31 - 1

SettingsDep = Annotated[ApiSettings, Depends(get_settings)]
QueueDep = Annotated[JobQueue, Depends(get_queue)]
PredictorsDep = Annotated[PredictorCache, Depends(get_predictors)]
ExportsDep = Annotated[ExportCache, Depends(get_exports)]
SessionDep = Annotated[Session, Depends(get_session)]
# For a stream: it opens a short session per poll, never one for its whole life.
SessionsDep = Annotated[sessionmaker[Session], Depends(get_sessions)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]

# ------------------------------------------------------------------------------ path rows

# No pattern on ids: an id that cannot exist is simply not found (404), not a 422. Another
# key's id is not found either: nothing tells a caller that it exists.
JobId = Annotated[str, Path(description="id returned by POST /v1/jobs")]
DatasetId = Annotated[str, Path(description="id returned by POST /v1/datasets")]
ExperimentId = Annotated[str, Path(description="id returned by POST /v1/experiments")]
StudyId = Annotated[str, Path(description="id returned by POST /v1/studies")]


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


def get_experiment_or_404(experiment_id: ExperimentId, session: SessionDep,
                          principal: PrincipalDep) -> Experiment:
    exp = repo.get_experiment(session, experiment_id=experiment_id, owner=principal.owner)
    if exp is None:
        raise NotFound(f"no experiment with id '{experiment_id}': list experiments with "
                       "GET /v1/experiments")
    return exp


def get_study_or_404(study_id: StudyId, session: SessionDep, principal: PrincipalDep) -> Study:
    study = repo.get_study(session, study_id=study_id, owner=principal.owner)
    if study is None:
        raise NotFound(f"no study with id '{study_id}': list studies with GET /v1/studies")
    return study


JobDep = Annotated[Job, Depends(get_job_or_404)]
DatasetDep = Annotated[Dataset, Depends(get_dataset_or_404)]
ExperimentDep = Annotated[Experiment, Depends(get_experiment_or_404)]
StudyDep = Annotated[Study, Depends(get_study_or_404)]

# ------------------------------------------------------------------------------ streams
# A stream checks its subject with a short session of its own: the request's session
# dependency would hold a database connection for as long as the stream lasts. Ownership is
# checked once: an owner never changes.


def streamed_job_id(job_id: JobId, sessions: SessionsDep, principal: PrincipalDep) -> str:
    with sessions() as session:
        if repo.get_job(session, job_id=job_id, owner=principal.owner) is None:
            raise NotFound(f"no job with id '{job_id}': list jobs with GET /v1/jobs")
    return job_id


def streamed_study_id(study_id: StudyId, sessions: SessionsDep, principal: PrincipalDep) -> str:
    with sessions() as session:
        if repo.get_study(session, study_id=study_id, owner=principal.owner) is None:
            raise NotFound(f"no study with id '{study_id}': list studies with GET /v1/studies")
    return study_id


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


def epoch_after(last_event_id: str | None) -> int:
    """A job stream's event id: the epoch number of the last epoch event received."""
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


def epoch_resume(last_event_id: ResumeDep) -> int:
    return epoch_after(last_event_id)


def event_cursor(last: list[int]) -> str:
    """An experiment stream's event id: each child's last sent epoch, in child order."""
    return ".".join(str(e) for e in last)


def parse_cursor(value: str | None, n_children: int) -> list[int]:
    """An experiment event id ("3.3.2.0", see `event_cursor`) back as each child's epoch."""
    if value is None:
        return [0] * n_children
    try:
        last = [int(part) for part in value.split(".")]
    except ValueError:
        last = []
    if len(last) != n_children or any(not 0 <= e <= MAX_EPOCH_NUMBER for e in last):
        raise InvalidInput([f"Last-Event-ID: '{value[:80]}' is not an id of this experiment's "
                            "events; send the id of the last event received, or none to "
                            "start over"])
    return last


def experiment_resume(experiment_id: ExperimentId, sessions: SessionsDep,
                      resume: ResumeDep, principal: PrincipalDep) -> list[int]:
    """Each child's resume epoch; a dependency, so a bad id (or another key's) is a 404/422
    before the stream."""
    with sessions() as session:
        if repo.get_experiment(session, experiment_id=experiment_id,
                               owner=principal.owner) is None:
            raise NotFound(f"no experiment with id '{experiment_id}': list experiments with "
                           "GET /v1/experiments")
        n = len(repo.children(session, experiment_id=experiment_id))
    return parse_cursor(resume, n)


StreamedJobId = Annotated[str, Depends(streamed_job_id)]
StreamedStudyId = Annotated[str, Depends(streamed_study_id)]
ResumeEpochDep = Annotated[int, Depends(epoch_resume)]
ResumeCursorDep = Annotated[list[int], Depends(experiment_resume)]
