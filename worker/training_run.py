"""What `worker.train_job` does, free of Celery so tests can call it directly.

The message carries only the job id: everything else comes from the database, which is the
source of truth. The job is claimed with a conditional update first, so a second delivery of
the same message does nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from sqlalchemy.orm import Session, sessionmaker

from models.datasets import DatasetError, load_table
from models.db import repository as repo
from models.devices import DeviceError, select_device
from models.spec import JobSpec, Limits, SpecError, UploadedDataset, resolve_job
from models.trainer import TrainingDiverged, train_job
from worker.callbacks import DbCallbacks

log = logging.getLogger(__name__)

# Failures whose message is already written for the user.
_READABLE = (SpecError, DatasetError, DeviceError, TrainingDiverged)


@dataclass(frozen=True)
class RunContext:
    sessions: sessionmaker[Session]
    worker: str
    limits: Limits
    checkpoint_every: int = 1


def failure_reason(exc: BaseException) -> str:
    """A message a person can act on; never a traceback."""
    text = str(exc).strip()
    first_line = text.splitlines()[0] if text else ""
    if isinstance(exc, _READABLE):
        return text or type(exc).__name__
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return ("out of GPU memory: use a smaller batch_size or network, or device 'cpu' "
                f"({first_line or 'CUDA out of memory'})")
    return f"{type(exc).__name__}: {first_line}" if first_line else type(exc).__name__


def run_job(job_id: str, ctx: RunContext) -> str | None:
    """Claim, train and finish one job; returns its final status, or None if not claimed.

    Once claimed, the job never stays `running` past an exception seen here.
    """
    with ctx.sessions() as session:
        job = repo.get_job(session, job_id=job_id)
        if job is None:
            log.warning("job %s does not exist; dropping the message", job_id)
            return None
        stored_spec = job.spec
    # The device is chosen (CUDA first touched) inside the task, before the claim, so the
    # claim records it; a bad device request still claims the job and then fails it.
    device: torch.device | None = None
    early_error: Exception | None = None
    device_name = "unknown"
    try:
        spec = JobSpec.model_validate(stored_spec)
        device_name = spec.device
        device = select_device(spec.device)
        device_name = str(device)
    except Exception as exc:
        early_error = exc
    with ctx.sessions.begin() as session:
        claimed = repo.claim_job(session, job_id=job_id, worker=ctx.worker, device=device_name)
    if not claimed:
        log.info("job %s already claimed or not queued; nothing to do", job_id)
        return None
    log.info("job %s claimed by %s on %s", job_id, ctx.worker, device_name)
    try:
        if early_error is not None:
            raise early_error
        assert device is not None
        status = _train(job_id, spec, device, ctx)
    except Exception as exc:
        reason = failure_reason(exc)
        log.warning("job %s failed: %s", job_id, reason,
                    exc_info=not isinstance(exc, _READABLE))
        with ctx.sessions.begin() as session:
            repo.finish_job(session, job_id=job_id, status="failed", error=reason,
                            worker=ctx.worker)
        return "failed"
    except BaseException as exc:
        # The worker is being stopped (cold shutdown, interrupt): not the job's fault, so it
        # goes back to the queue (or fails once its attempts are spent), and the process ends.
        with ctx.sessions.begin() as session:
            new_status = repo.release_job(session, job_id=job_id, worker=ctx.worker,
                                          error=f"worker stopped ({type(exc).__name__})")
        log.warning("job %s released (%s) after %s", job_id, new_status, type(exc).__name__)
        raise
    log.info("job %s %s", job_id, status)
    return status


def _train(job_id: str, spec: JobSpec, device: torch.device, ctx: RunContext) -> str:
    content: bytes | None = None
    if isinstance(spec.dataset, UploadedDataset):
        with ctx.sessions() as session:
            content = repo.get_dataset_content(session, dataset_id=spec.dataset.id)
        if content is None:
            raise DatasetError(f"dataset {spec.dataset.id} no longer exists: upload it again "
                               "and submit a new job")
    table = load_table(spec.dataset, csv_content=content)
    resolved = resolve_job(spec, n_features=table.n_features, n_classes=table.n_classes,
                           n_rows=table.n_rows, limits=ctx.limits)
    result = train_job(resolved, table, device=device,
                       callbacks=DbCallbacks(ctx.sessions, job_id),
                       checkpoint_every=ctx.checkpoint_every)
    status = "cancelled" if result.cancelled else "succeeded"
    with ctx.sessions.begin() as session:
        finished = repo.finish_job(session, job_id=job_id, status=status, worker=ctx.worker,
                                   final_metrics=result.final_metrics,
                                   best_metrics=result.best_metrics, best_epoch=result.best_epoch)
    if not finished:
        log.warning("job %s was no longer running under %s; result not recorded",
                    job_id, ctx.worker)
    return status
