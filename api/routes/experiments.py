"""Experiments: variants x seeds expanded into child jobs, their status, statistics and curves.

Children are ordinary jobs (they show in /v1/jobs with their experiment's id); those that
differ only by seed share a stack key, and a worker trains each stack as one batched model.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, Header, Path, Query, Response, status
from fastapi.sse import EventSourceResponse, ServerSentEvent
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api import plots
from api.auth import require_visible_dataset
from api.deps import MAX_EPOCH_NUMBER, PrincipalDep, QueueDep, SessionDep, SettingsDep
from api.errors import Conflict, InvalidInput, NotFound, NotReady
from api.ratelimit import check_active_jobs
from api.resolve import resolve
from api.routes.events import Poll, ResumeDep, SessionsDep, epoch_payload, stream
from api.routes.jobs import body_hash, choose_queue
from api.routes.results import PNG, series
from api.schemas import ChildOut, ExperimentOut, ExperimentPage, RetryOut
from models.db import repository as repo
from models.db.tables import Experiment, Job, Study
from models.experiment import Child, ExperimentSpec, expand, variant_names
from models.spec import SpecError
from models.stats import Run, summarize, summary_csv

router = APIRouter(prefix="/experiments", tags=["experiments"])
log = logging.getLogger(__name__)

EXAMPLES: dict[str, Any] = {
    "bn-placement": {"summary": "BatchNorm placement x 5 seeds", "value": {
        "name": "bn-placement",
        "base": {"dataset": {"name": "concentric_circles", "n_samples": 500, "noise": 0.1},
                 "network": {"hidden": [3, 2], "activation": "relu"},
                 "training": {"epochs": 50, "batch_size": 32,
                              "optimizer": {"name": "adam", "lr": 0.001},
                              "validation_split": 0.2, "split": "random"}},
        "variants": {"network.batchnorm": ["none", "before_activation", "after_activation"]},
        "seeds": 5}},
}

ExperimentId = Annotated[str, Path(description="id returned by POST /v1/experiments")]


def get_experiment_or_404(experiment_id: ExperimentId, session: SessionDep,
                          principal: PrincipalDep) -> Experiment:
    exp = repo.get_experiment(session, experiment_id=experiment_id, owner=principal.owner)
    if exp is None:
        raise NotFound(f"no experiment with id '{experiment_id}': list experiments with "
                       "GET /v1/experiments")
    return exp


ExperimentDep = Annotated[Experiment, Depends(get_experiment_or_404)]


def child_out(job: Job) -> ChildOut:
    return ChildOut(job_id=job.id, index=job.child_index or 0, variant=job.variant or "",
                    seed=job.seed or 0, status=str(job.status), epoch=job.epochs_done,
                    epochs=job.epochs_total, error=job.error, final_metrics=job.final_metrics,
                    best_epoch=job.best_epoch)


def experiment_out(session: Session, exp: Experiment, jobs: list[Job] | None = None
                   ) -> ExperimentOut:
    """`jobs`: its children when the caller read them already (a listing reads a page's
    children with one query)."""
    if jobs is None:
        jobs = repo.children(session, experiment_id=exp.id)
    warnings = list(dict.fromkeys(w for j in jobs for w in (j.warnings or [])))
    return ExperimentOut(
        id=exp.id, name=exp.name, cancel_requested=exp.cancel_requested,
        status=repo.experiment_status(jobs, exp.cancel_requested),  # type: ignore[arg-type]
        variants=list(exp.variants), seeds=list(exp.seeds), counts=repo.status_counts(jobs),
        stacks=len({j.stack_key or j.id for j in jobs}), warnings=warnings,
        created_at=exp.created_at, spec=exp.spec, children=[child_out(j) for j in jobs])


def _stack_key(experiment_id: str, key: str | None) -> str | None:
    # Stacks never span experiments: cancel, retry and summaries stay per experiment.
    if key is None:
        return None
    return hashlib.sha256(f"{experiment_id}/{key}".encode()).hexdigest()[:32]


def _resolve_children(session: Session, children: list[Child], settings: SettingsDep,
                      owner: str) -> tuple[dict[int, list[str]], dict[str, str | None]]:
    """Resolve one child per variant (seeds change nothing a check looks at): warnings per
    child index and the uploaded dataset's id per variant; raises SpecError naming the
    variant of every problem."""
    errors: list[str] = []
    warnings: dict[str, list[str]] = {}
    dataset_ids: dict[str, str | None] = {}
    for child in children:
        if child.variant in warnings:
            continue
        try:
            require_visible_dataset(session, child.spec, owner)
            resolved, dataset = resolve(session, child.spec, settings.limits(),
                                        data_dir=settings.data_dir)
        except SpecError as exc:
            errors += [f"variant '{child.variant}': {e}" for e in exc.errors]
            warnings[child.variant] = []
            continue
        except InvalidInput as exc:
            details = exc.detail if isinstance(exc.detail, list) else [exc.detail]
            errors += [f"variant '{child.variant}': {e}" for e in details]
            warnings[child.variant] = []
            continue
        warnings[child.variant] = list(resolved.warnings)
        dataset_ids[child.variant] = dataset.id if dataset is not None else None
    if errors:
        raise SpecError(errors)
    return {c.index: warnings[c.variant] for c in children}, dataset_ids


@dataclass
class PlannedExperiment:
    """An experiment expanded and checked, ready to store: its children, each child's
    warnings (by index) and each variant's uploaded dataset id."""

    body: ExperimentSpec
    children: list[Child]
    warnings: dict[int, list[str]]
    dataset_ids: dict[str, str | None]


def prepare_experiment(session: Session, body: ExperimentSpec, settings: SettingsDep,
                       owner: str, *, max_children: int) -> PlannedExperiment:
    """Expand and resolve (nothing stored); raises SpecError naming every problem."""
    children = expand(body, max_children=max_children)
    warnings, dataset_ids = _resolve_children(session, children, settings, owner)
    return PlannedExperiment(body, children, warnings, dataset_ids)


def store_experiment(session: Session, planned: PlannedExperiment, settings: SettingsDep,
                     owner: str, *, stored: dict[str, Any] | None = None,
                     idempotency_key: str | None = None, request_hash: str | None = None,
                     study: Study | None = None, claim: str | None = None
                     ) -> tuple[Experiment, list[Job]]:
    """Add the experiment row (a study's when `study` is given, testing `claim`) and its
    children, flushed, not committed: the caller commits, then enqueues every job."""
    body = planned.body
    stored = body.model_dump(mode="json") if stored is None else stored
    queues = {c.index: choose_queue(session, c.spec.device, settings.worker_alive_within_s)
              for c in planned.children}
    if study is None:
        exp = repo.create_experiment(session, spec=stored, name=body.name,
                                     variants=variant_names(body), seeds=body.seed_list(),
                                     idempotency_key=idempotency_key,
                                     request_hash=request_hash, owner=owner)
    else:
        exp = repo.create_study_experiment(session, study=study, claim=claim or "",
                                           spec=stored, name=body.name,
                                           variants=variant_names(body),
                                           seeds=body.seed_list())
    jobs = [repo.create_job(
        session, job_id=repo.child_job_id(exp.id, c.variant, c.seed),
        spec=c.spec.model_dump(mode="json"), name=c.spec.name, queue=queues[c.index],
        device=c.spec.device, epochs_total=c.spec.training.epochs,
        warnings=planned.warnings[c.index],
        dataset_id=planned.dataset_ids[c.variant],
        max_attempts=settings.max_attempts, experiment_id=exp.id, variant=c.variant,
        seed=c.seed, child_index=c.index, stack_key=_stack_key(exp.id, c.stack_key),
        owner=owner)
        for c in planned.children]
    return exp, jobs


@router.post("", status_code=status.HTTP_202_ACCEPTED, response_model=ExperimentOut,
             responses={200: {"description": "an earlier experiment with the same "
                                             "Idempotency-Key"},
                        409: {"description": "Idempotency-Key reused with another body"},
                        422: {"description": "a variant cannot run; `detail` says which and "
                                             "what to change"},
                        429: {"description": "rate limited, or max_active_jobs_per_key "
                                             "reached"},
                        503: {"description": "the broker is unreachable; nothing was stored"}})
def submit_experiment(
    body: Annotated[ExperimentSpec, Body(openapi_examples=EXAMPLES)],
    session: SessionDep, settings: SettingsDep, queue: QueueDep, response: Response,
    principal: PrincipalDep,
    idempotency_key: Annotated[str | None, Header(max_length=255, description=(
        "retry-safe submission: the same key and body return the first experiment"))] = None,
) -> ExperimentOut:
    """Expand variants x seeds into child jobs (deterministically), store and enqueue them."""
    stored = body.model_dump(mode="json")
    request_hash = body_hash(stored)
    if idempotency_key is not None:
        earlier = repo.find_experiment_by_idempotency_key(
            session, idempotency_key=idempotency_key, owner=principal.owner)
        if earlier is not None:
            return _replayed(session, earlier, request_hash, response)
    planned = prepare_experiment(session, body, settings, principal.owner,
                                 max_children=settings.max_experiment_children)
    check_active_jobs(session, owner=principal.owner, adding=len(planned.children),
                      limit=settings.max_active_jobs_per_key)
    try:
        exp, jobs = store_experiment(session, planned, settings, principal.owner,
                                     stored=stored, idempotency_key=idempotency_key,
                                     request_hash=request_hash)
        session.commit()  # commit, then enqueue: the workers must find the rows
    except IntegrityError:
        session.rollback()
        earlier = repo.find_experiment_by_idempotency_key(
            session, idempotency_key=idempotency_key or "", owner=principal.owner)
        if earlier is None:
            raise
        return _replayed(session, earlier, request_hash, response)
    enqueue_or_undo(session, queue, jobs, exp, "experiment")
    response.headers["Location"] = f"/v1/experiments/{exp.id}"
    return experiment_out(session, exp)


def _replayed(session: Session, exp: Experiment, request_hash: str,
              response: Response) -> ExperimentOut:
    if exp.request_hash != request_hash:
        raise Conflict(f"Idempotency-Key already used for experiment '{exp.id}' with a "
                       "different body: use a new key for a new experiment")
    response.status_code = status.HTTP_200_OK
    response.headers["Location"] = f"/v1/experiments/{exp.id}"
    return experiment_out(session, exp)


@router.get("", response_model=ExperimentPage)
def list_experiments(
    session: SessionDep, principal: PrincipalDep, limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
) -> ExperimentPage:
    """Newest first."""
    try:
        rows, next_cursor = repo.list_experiments(session, limit=limit, cursor=cursor,
                                                  owner=principal.owner)
    except repo.InvalidCursor as exc:
        raise InvalidInput([f"cursor: {exc}"]) from None
    kids = repo.children_of(session, experiment_ids=[e.id for e in rows])
    return ExperimentPage(items=[experiment_out(session, e, kids[e.id]) for e in rows],
                          next_cursor=next_cursor)


@router.get("/{experiment_id}", response_model=ExperimentOut)
def get_experiment(exp: ExperimentDep, session: SessionDep) -> ExperimentOut:
    return experiment_out(session, exp)


@router.post("/{experiment_id}/cancel", response_model=ExperimentOut)
def cancel_experiment(exp: ExperimentDep, session: SessionDep) -> ExperimentOut:
    """Queued children are cancelled at once; running ones stop at their next epoch end."""
    repo.cancel_experiment(session, experiment_id=exp.id)
    session.commit()
    session.refresh(exp)
    return experiment_out(session, exp)


@router.post("/{experiment_id}/retry", response_model=RetryOut)
def retry_experiment(exp: ExperimentDep, session: SessionDep, queue: QueueDep,
                     settings: SettingsDep) -> RetryOut:
    """Queue the failed children again from scratch; the others are left as they are."""
    failed = sum(str(j.status) == "failed" for j in repo.children(session, experiment_id=exp.id))
    if failed:
        check_active_jobs(session, owner=exp.owner, adding=failed,
                          limit=settings.max_active_jobs_per_key)
    ids = repo.reset_failed(session, experiment_id=exp.id)
    if not ids:
        raise Conflict(f"experiment '{exp.id}' has no failed children: nothing to retry")
    session.commit()
    requeue(session, queue, ids)
    session.refresh(exp)
    return RetryOut(retried=ids, experiment=experiment_out(session, exp))


def enqueue_or_undo(session: Session, queue: QueueDep, jobs: list[Job],
                    owner: Experiment | Study, what: str) -> None:
    """Enqueue committed jobs; if the broker refuses, delete `owner` (its rows go with it, ON
    DELETE CASCADE) so that nothing is left stored, and answer 503."""
    try:
        for job in jobs:
            queue.enqueue(job.id, queue=job.queue)
    except Exception as exc:
        log.exception("enqueue of %s %s failed", what, owner.id)
        session.delete(owner)
        session.commit()
        raise NotReady(f"the broker did not accept the {what}'s jobs ({type(exc).__name__}); "
                       "nothing was stored: retry shortly") from None


def requeue(session: Session, queue: QueueDep, job_ids: list[str]) -> None:
    """Enqueue reset (committed, queued) jobs again; a lost message is re-sent by the workers'
    reaper, since the rows are already queued."""
    for job_id in job_ids:
        job = repo.get_job(session, job_id=job_id)
        if job is not None:
            try:
                queue.enqueue(job.id, queue=job.queue)
            except Exception:
                log.exception("enqueue of retried job %s failed; the reaper will resend it",
                              job.id)


def _runs(session: Session, exp: Experiment, include: str) -> list[Run]:
    return runs_of(session, repo.children(session, experiment_id=exp.id), include)


def runs_of(session: Session, children: list[Job], include: str) -> list[Run]:
    """Runs (variant, seed, history) of an experiment's loaded children."""
    jobs = [j for j in children if include != "succeeded" or str(j.status) == "succeeded"]
    rows = repo.histories(session, job_ids=[j.id for j in jobs])  # one query, not one a child
    runs = []
    for job in jobs:
        history = series(rows[job.id])
        runs.append(Run(variant=job.variant or "", seed=job.seed or 0, history={
            k: [math.nan if v is None else float(v) for v in values]
            for k, values in history.items() if k not in ("epoch", "wall_time")}))
    return runs


def experiment_summary(session: Session, exp: Experiment, include: str) -> dict[str, Any]:
    spec = ExperimentSpec.model_validate(exp.spec)
    summary = summarize(_runs(session, exp, include), variants=list(exp.variants),
                        metrics=list(spec.metrics),
                        thresholds={str(k): v for k, v in spec.thresholds.items()},
                        confidence=spec.confidence)
    return {"experiment_id": exp.id, "name": exp.name, "include": include, **summary}


Include = Annotated[Literal["succeeded", "all"], Query(
    description="'succeeded': finished children only; 'all': every child's epochs so far "
                "(a live view while the experiment runs)")]


@router.get("/{experiment_id}/summary", responses={200: {"content": {"text/csv": {}}}})
def get_summary(exp: ExperimentDep, session: SessionDep, include: Include = "succeeded",
                format: Annotated[Literal["json", "csv"], Query()] = "json") -> Any:
    """Per variant and metric: per-epoch mean, std and confidence band across seeds; final
    and best values; epochs to each threshold; paired differences between variants."""
    summary = experiment_summary(session, exp, include)
    if format == "csv":
        return Response(summary_csv(summary), media_type="text/csv", headers={
            "Content-Disposition": f'attachment; filename="experiment-{exp.id}.csv"'})
    return summary


@router.get("/{experiment_id}/curves.png", response_class=Response, responses=PNG)
def get_curves(exp: ExperimentDep, session: SessionDep,
               metric: Annotated[str, Query(description="one of the experiment's metrics")
                                 ] = "val_accuracy",
               include: Include = "succeeded") -> Response:
    """One line per variant (mean over seeds) with its confidence band."""
    spec = ExperimentSpec.model_validate(exp.spec)
    if metric not in spec.metrics:
        raise InvalidInput([f"metric: '{metric}' is not one of this experiment's metrics "
                            f"({', '.join(spec.metrics)})"])
    summary = experiment_summary(session, exp, include)
    title = f"{exp.name or exp.id}: {metric}"
    return Response(plots.experiment_png(summary, metric, title), media_type="image/png")


# ------------------------------------------------------------------------------ live events


def _cursor(last: list[int]) -> str:
    return ".".join(str(e) for e in last)


def parse_cursor(value: str | None, n_children: int) -> list[int]:
    """An experiment event id: each child's last sent epoch, in child order ("3.3.2.0")."""
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


@dataclass
class ExperimentEvents:
    """The poller of one experiment's stream: every child's epochs and status changes."""

    experiment_id: str
    last: list[int]
    statuses: dict[str, str] = field(default_factory=dict)

    def poll(self, session: Session) -> Poll:
        exp = repo.get_experiment(session, experiment_id=self.experiment_id)
        if exp is None:
            return Poll([ServerSentEvent(event="error", data={
                "error": "NotFound", "detail": f"experiment '{self.experiment_id}' was deleted"})],
                True)
        jobs = repo.children(session, experiment_id=exp.id)
        # Every child's new epochs with one query (from the least advanced child on).
        new = repo.histories(session, job_ids=[j.id for j in jobs], since=min(self.last,
                                                                              default=0))
        out = Poll()
        overall = repo.experiment_status(jobs, exp.cancel_requested)
        for i, job in enumerate(jobs):
            who = {"job_id": job.id, "index": i, "variant": job.variant, "seed": job.seed}
            status = str(job.status)
            if self.statuses.get(job.id) != status:
                out.events.append(ServerSentEvent(event="status", data={
                    **who, "status": status, "epoch": job.epochs_done,
                    "epochs": job.epochs_total, "error": job.error,
                    "experiment_status": overall}))
                self.statuses[job.id] = status
            for row in new[job.id]:
                if row.epoch <= self.last[i]:
                    continue
                self.last[i] = row.epoch
                out.events.append(ServerSentEvent(event="epoch", id=_cursor(self.last),
                                                  data={**epoch_payload(row), **who}))
        if overall in ("succeeded", "failed", "cancelled"):
            out.events.append(ServerSentEvent(
                event="done", data=experiment_out(session, exp, jobs).model_dump(mode="json")))
            out.finished = True
        return out


def experiment_resume(experiment_id: ExperimentId, sessions: SessionsDep,
                      resume: ResumeDep, principal: PrincipalDep) -> list[int]:
    """Each child's resume epoch; a dependency, so a bad id (or another key's) is a 404/422
    before the stream."""
    with sessions() as session:  # short: the stream must not hold a connection
        if repo.get_experiment(session, experiment_id=experiment_id,
                               owner=principal.owner) is None:
            raise NotFound(f"no experiment with id '{experiment_id}': list experiments with "
                           "GET /v1/experiments")
        n = len(repo.children(session, experiment_id=experiment_id))
    return parse_cursor(resume, n)


@router.get("/{experiment_id}/events", response_class=EventSourceResponse, responses={
    200: {"description": "`status` per child change, `epoch` per child epoch, final `done`"},
    404: {"description": "no such experiment"},
    422: {"description": "Last-Event-ID is not an id of this experiment's events"}})
async def experiment_events(experiment_id: ExperimentId, sessions: SessionsDep,
                            last: Annotated[list[int], Depends(experiment_resume)]
                            ) -> AsyncIterator[ServerSentEvent]:
    """Server-Sent Events of an experiment: each child's status changes and epochs (tagged
    with its job id, variant and seed), then `done` with the experiment. An event's id holds
    every child's last epoch, so a reconnect with Last-Event-ID misses and repeats nothing."""
    async for event in stream(sessions, ExperimentEvents(experiment_id, last)):
        yield event
