"""Jobs run in-process with the worker's run_job against the test's sessions, and a hook that
acts while one is certainly still training."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from models.db import repository as repo
from models.spec import JobSpec
from worker.training_run import RunContext, run_job

WORKER = "test@host"


def add_job(sessions: sessionmaker[Session], body: dict[str, Any]) -> str:
    spec = JobSpec.model_validate(body)
    with sessions.begin() as session:
        job = repo.create_job(session, spec=spec.model_dump(mode="json"), name=spec.name,
                              epochs_total=spec.training.epochs, device=spec.device)
        return job.id


def nb_body(dataset_id: str, *, layers: list[dict[str, Any]], epochs: int) -> dict[str, Any]:
    """The notebook's layers on `dataset_id` for `epochs` epochs (the default optimizer)."""
    return {"name": "nb", "dataset": {"id": dataset_id}, "network": {"layers": layers},
            "training": {"epochs": epochs, "batch_size": 32, "validation_split": 0.2,
                         "split": "tail", "seed": 1}}


def job_state(sessions: sessionmaker[Session], job_id: str
              ) -> tuple[Any, list[int], dict[str, int]]:
    with sessions() as session:
        job = repo.get_job(session, job_id=job_id)
        epochs = [row.epoch for row in repo.history(session, job_id=job_id)]
        ckpts = {c.kind: c.epoch for c in repo.list_checkpoints(session, job_id=job_id)}
        return job, epochs, ckpts


class AtEpoch:
    """A RunContext.on_epoch_written hook: the first time an epoch >= `epoch` of `job_id` is
    stored, `then()` runs in the training thread, which goes on only once it returns. So the
    test acts on a job that is certainly still running, whatever the machine's speed."""

    def __init__(self, job_id: str, epoch: int, then: Callable[[], None]) -> None:
        self.job_id, self.epoch, self.then = job_id, epoch, then
        self.fired_at: int | None = None

    def __call__(self, job_id: str, epoch: int) -> None:
        if job_id == self.job_id and epoch >= self.epoch and self.fired_at is None:
            self.fired_at = epoch
            self.then()


def run_at_epoch(ctx: RunContext, job_id: str, epoch: int, then: Callable[[], None],
                 *, watch: str | None = None) -> str | None:
    """run_job, calling `then()` once epoch `epoch` of `watch` (default: the job) is stored
    and before training goes on; fails if that never happened."""
    hook = AtEpoch(watch or job_id, epoch, then)
    outcome = run_job(job_id, replace(ctx, on_epoch_written=hook))
    assert hook.fired_at is not None, f"the job ended ({outcome}) before epoch {epoch}"
    return outcome
