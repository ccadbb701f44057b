"""Studies: a stored request whose experiments (experiment.study_id, one per claim) are ordinary
experiments with ordinary children. Status, progress and reports are derived on read.
"""

from __future__ import annotations

import statistics
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from models.db._sql import forget
from models.db.experiments_repo import cancel_experiment, reset_failed
from models.db.paging import newest_first
from models.db.tables import ANONYMOUS, Experiment, Job, JobStatus, Study, utcnow


def create_study(
    session: Session, *, spec: dict[str, Any], name: str | None, claims: list[str],
    idempotency_key: str | None = None, request_hash: str | None = None,
    owner: str = ANONYMOUS,
) -> Study:
    """Add a study row (flushed, not committed); add its experiments with
    create_study_experiment."""
    study = Study(spec=spec, name=name, claims=list(claims), idempotency_key=idempotency_key,
                  request_hash=request_hash, cancel_requested=False, owner=owner)
    session.add(study)
    session.flush()
    return study


def create_study_experiment(
    session: Session, *, study: Study, claim: str, spec: dict[str, Any], name: str | None,
    variants: list[str], seeds: list[int],
) -> Experiment:
    """Add the experiment testing `claim` in `study` (flushed, not committed; same owner);
    add its children with create_job."""
    exp = Experiment(spec=spec, name=name, variants=list(variants), seeds=list(seeds),
                     cancel_requested=False, owner=study.owner, study_id=study.id, claim=claim)
    session.add(exp)
    session.flush()
    return exp


def get_study(session: Session, *, study_id: str, owner: str | None = None) -> Study | None:
    """The study, or None; with `owner`, None too when someone else owns it."""
    study = session.get(Study, study_id)
    return study if study is not None and owner in (None, study.owner) else None


def find_study_by_idempotency_key(session: Session, *, idempotency_key: str,
                                  owner: str = ANONYMOUS) -> Study | None:
    """The study `owner` created with this Idempotency-Key (keys are per owner)."""
    return session.scalar(select(Study).where(
        Study.idempotency_key == idempotency_key, Study.owner == owner))


def list_studies(session: Session, *, limit: int = 50, cursor: str | None = None,
                 owner: str | None = None) -> tuple[list[Study], str | None]:
    """One page, newest first, and the next page's cursor (None on the last page); with
    `owner`, only that owner's."""
    stmt = select(Study)
    if owner is not None:
        stmt = stmt.where(Study.owner == owner)
    return newest_first(session, stmt, Study, limit=limit, cursor=cursor)


def _claim_order(study: Study) -> dict[str, int]:
    return {c: i for i, c in enumerate(study.claims or [])}


def study_experiments(session: Session, *, study_id: str) -> list[Experiment]:
    """The study's experiments in the order of its claims."""
    study = session.get(Study, study_id)
    exps = list(session.scalars(select(Experiment).where(Experiment.study_id == study_id)))
    order = _claim_order(study) if study is not None else {}
    return sorted(exps, key=lambda e: (order.get(e.claim or "", len(order)), e.id))


def experiments_of(session: Session, *, studies: list[Study]) -> dict[str, list[Experiment]]:
    """study_experiments() of several studies (a listing's page) with one query."""
    out: dict[str, list[Experiment]] = {s.id: [] for s in studies}
    if not out:
        return out
    for exp in session.scalars(select(Experiment).where(Experiment.study_id.in_(list(out)))):
        out[exp.study_id or ""].append(exp)
    for study in studies:
        order = _claim_order(study)
        out[study.id].sort(key=lambda e: (order.get(e.claim or "", len(order)), e.id))
    return out


def cancel_study(session: Session, *, study_id: str) -> int:
    """cancel_experiment on each of the study's experiments; returns the children affected."""
    session.execute(update(Study).where(Study.id == study_id)
                    .values(cancel_requested=True, updated_at=utcnow())
                    .execution_options(synchronize_session=False))
    forget(session, Study, study_id)
    return sum(cancel_experiment(session, experiment_id=e.id)
               for e in study_experiments(session, study_id=study_id))


def reset_failed_study(session: Session, *, study_id: str) -> list[str]:
    """reset_failed on each of the study's experiments; returns the job ids reset."""
    ids = [job_id for e in study_experiments(session, study_id=study_id)
           for job_id in reset_failed(session, experiment_id=e.id)]
    if ids:
        session.execute(update(Study).where(Study.id == study_id)
                        .values(cancel_requested=False, updated_at=utcnow())
                        .execution_options(synchronize_session=False))
        forget(session, Study, study_id)
    return ids


def seconds_per_epoch(session: Session, *, last: int = 200) -> tuple[float | None, int]:
    """(median of (finished_at - started_at) / epochs over the `last` most recently finished
    succeeded jobs, how many jobs that is); (None, 0) when none has finished. A stacked child's
    time is its whole stack's, so this over-counts stacked work."""
    rows = session.execute(
        select(Job.started_at, Job.finished_at, Job.epochs_done)
        .where(Job.status == JobStatus.succeeded, Job.started_at.is_not(None),
               Job.finished_at.is_not(None), Job.epochs_done > 0)
        .order_by(Job.finished_at.desc(), Job.id.desc()).limit(last)).all()
    per = [(f - s).total_seconds() / n for s, f, n in rows
           if s is not None and f is not None and n and f >= s]
    if not per:
        return None, 0
    return float(statistics.median(per)), len(per)


__all__ = ["cancel_study", "create_study", "create_study_experiment", "experiments_of",
           "find_study_by_idempotency_key", "get_study", "list_studies",
           "reset_failed_study", "seconds_per_epoch", "study_experiments"]
