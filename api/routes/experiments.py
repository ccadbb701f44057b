"""Experiments: variants x seeds expanded into child jobs, their status, statistics and curves.

Children are ordinary jobs (they show in /v1/jobs with their experiment's id); those that
differ only by seed share a stack key, and a worker trains each stack as one batched model.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Header, Query, Response, status
from fastapi.sse import EventSourceResponse, ServerSentEvent
from sqlalchemy.orm import Session

from api import plots
from api.deps import (
    ExperimentDep,
    ExperimentId,
    PrincipalDep,
    QueueDep,
    ResumeCursorDep,
    SessionDep,
    SessionsDep,
    SettingsDep,
    event_cursor,
)
from api.errors import Conflict, InvalidInput
from api.experiment_plan import PlannedExperiment, prepare_experiment, store_experiment
from api.experiment_stats import experiment_summary
from api.plots import PNG
from api.presenters import epoch_payload
from api.ratelimit import check_active_jobs
from api.schemas import ChildOut, ExperimentOut, ExperimentPage, RetryOut
from api.sse import Poll, stream
from api.submission import EXPERIMENT, requeue, submit
from models.db import repository as repo
from models.db.tables import Experiment, Job
from models.experiment import ExperimentSpec
from models.stats import summary_csv

router = APIRouter(prefix="/experiments", tags=["experiments"])

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

    def prepare() -> PlannedExperiment:
        return prepare_experiment(session, body, settings, principal.owner,
                                  max_children=settings.max_experiment_children)

    def create(planned: PlannedExperiment, request_hash: str) -> tuple[Experiment, list[Job]]:
        return store_experiment(session, planned, settings, principal.owner, stored=stored,
                                idempotency_key=idempotency_key, request_hash=request_hash)

    exp = submit(session, queue, response, EXPERIMENT, stored=stored, owner=principal.owner,
                 idempotency_key=idempotency_key, max_active=settings.max_active_jobs_per_key,
                 prepare=prepare, adding=lambda planned: len(planned.children), create=create)
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
                out.events.append(ServerSentEvent(event="epoch", id=event_cursor(self.last),
                                                  data={**epoch_payload(row), **who}))
        if overall in ("succeeded", "failed", "cancelled"):
            out.events.append(ServerSentEvent(
                event="done", data=experiment_out(session, exp, jobs).model_dump(mode="json")))
            out.finished = True
        return out


@router.get("/{experiment_id}/events", response_class=EventSourceResponse, responses={
    200: {"description": "`status` per child change, `epoch` per child epoch, final `done`"},
    404: {"description": "no such experiment"},
    422: {"description": "Last-Event-ID is not an id of this experiment's events"}})
async def experiment_events(experiment_id: ExperimentId, sessions: SessionsDep,
                            last: ResumeCursorDep) -> AsyncIterator[ServerSentEvent]:
    """Server-Sent Events of an experiment: each child's status changes and epochs (tagged
    with its job id, variant and seed), then `done` with the experiment. An event's id holds
    every child's last epoch, so a reconnect with Last-Event-ID misses and repeats nothing."""
    async for event in stream(sessions, ExperimentEvents(experiment_id, last)):
        yield event
