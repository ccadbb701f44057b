"""Submitting work: the one idempotent create-commit-enqueue that POST /v1/jobs, /v1/experiments
and /v1/studies share, and the queue choice and re-enqueueing around it.

The order matters: an Idempotency-Key replay is answered before anything is checked (a retry
of an accepted request must not fail because the caller is now at the active-job cap), the
rows are committed before they are enqueued (the worker must find them), and a broker that
refuses takes the rows back out, so a retry starts clean.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from fastapi import Response, status
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api.errors import Conflict, NotReady
from api.queue import JobQueue
from api.ratelimit import check_active_jobs
from models.db import repository as repo
from models.db.tables import Experiment, Job, Study

log = logging.getLogger(__name__)

# What one submission stores at the top: its jobs hang off it (ON DELETE CASCADE).
Row = TypeVar("Row", Job, Experiment, Study)
Plan = TypeVar("Plan")


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


@dataclass(frozen=True)
class Kind(Generic[Row]):
    """What differs between the submitted kinds: names in messages and where they live."""

    noun: str  # "job": in the 409's message
    collection: str  # "/v1/jobs": the Location's prefix
    find: Callable[..., Row | None]  # by idempotency_key and owner
    refused: str  # what the 503 says the broker did not accept
    hint: str = ""  # appended to the 503's message


JOB = Kind[Job]("job", "/v1/jobs", repo.find_by_idempotency_key, "job",
                " (GET /readyz shows the broker's state)")
EXPERIMENT = Kind[Experiment]("experiment", "/v1/experiments",
                              repo.find_experiment_by_idempotency_key, "experiment's jobs")
STUDY = Kind[Study]("study", "/v1/studies", repo.find_study_by_idempotency_key, "study's jobs")


def submit(session: Session, queue: JobQueue, response: Response, kind: Kind[Row], *,
           stored: dict[str, Any], owner: str, idempotency_key: str | None, max_active: int,
           prepare: Callable[[], Plan], adding: Callable[[Plan], int],
           create: Callable[[Plan, str], tuple[Row, list[Job]]]) -> Row:
    """Store and enqueue one submission, or replay the earlier one with the same key.

    `stored` is the normalised body (what the replay compares); `prepare()` checks it (raises
    to refuse) and returns the plan; `adding(plan)` is how many jobs it queues against the
    caller's `max_active`; `create(plan, request_hash)` adds the rows, flushed, not committed,
    and returns the top row and the jobs to enqueue. Sets Location (and 200 on a replay).
    """
    request_hash = body_hash(stored)
    if idempotency_key is not None:
        earlier = kind.find(session, idempotency_key=idempotency_key, owner=owner)
        if earlier is not None:
            return _replayed(kind, earlier, request_hash, response)
    plan = prepare()
    check_active_jobs(session, owner=owner, adding=adding(plan), limit=max_active)
    try:
        row, jobs = create(plan, request_hash)
        session.commit()  # commit, then enqueue: the workers must find the rows
    except IntegrityError:
        # A concurrent request with the same Idempotency-Key won the race.
        session.rollback()
        earlier = kind.find(session, idempotency_key=idempotency_key or "", owner=owner)
        if earlier is None:
            raise
        return _replayed(kind, earlier, request_hash, response)
    enqueue_or_undo(session, queue, jobs, row, kind)
    response.headers["Location"] = f"{kind.collection}/{row.id}"
    return row


def _replayed(kind: Kind[Row], row: Row, request_hash: str, response: Response) -> Row:
    if row.request_hash != request_hash:
        raise Conflict(f"Idempotency-Key already used for {kind.noun} '{row.id}' with a "
                       f"different body: use a new key for a new {kind.noun}")
    response.status_code = status.HTTP_200_OK
    response.headers["Location"] = f"{kind.collection}/{row.id}"
    return row


def enqueue_or_undo(session: Session, queue: JobQueue, jobs: list[Job], row: Row,
                    kind: Kind[Row]) -> None:
    """Enqueue committed jobs; if the broker refuses, delete `row` (its jobs go with it, ON
    DELETE CASCADE) so that nothing is left stored, and answer 503."""
    try:
        for job in jobs:
            queue.enqueue(job.id, queue=job.queue)
    except Exception as exc:
        # Nothing would ever pick the rows up: remove them so a retry starts clean.
        log.exception("enqueue of %s %s failed", kind.noun, row.id)
        session.delete(row)
        session.commit()
        raise NotReady(f"the broker did not accept the {kind.refused} ({type(exc).__name__}); "
                       f"nothing was stored: retry shortly{kind.hint}") from None


def requeue(session: Session, queue: JobQueue, job_ids: list[str]) -> None:
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
