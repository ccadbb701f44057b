"""What `worker.train_job` does, free of Celery so tests can call it directly.

The message carries only the job id: everything else comes from the database, which is the
source of truth and the broker only a doorbell. The job is claimed with a conditional update,
so a second delivery does nothing; the claim takes a lease that a thread renews while the job
trains and that every epoch write checks (fencing), so a worker that lost the job writes
nothing more. A job that ran before resumes from its "last" checkpoint.

Experiment children that differ only by seed share a `stack_key`: the task that claims one of
them also claims its queued siblings (those that would resume from the same epoch) and trains
them together as one stacked model (`train_many`), each with its own lease, callbacks, history,
checkpoints and final status, exactly as if it had run alone. A plain job is a stack of one.
The siblings' own messages then find them claimed and do nothing.
"""

from __future__ import annotations

import gc
import logging
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from sqlalchemy.orm import Session, sessionmaker

from config.logging import add_log_context, log_context
from models.datasets import DatasetError, load_table
from models.db import repository as repo
from models.db.tables import JobStatus, utcnow
from models.devices import DeviceError, select_device
from models.image_data import builtin_shape
from models.resolution import ResolvedJob, activation_bytes, resolve_job, resolve_network
from models.spec import JobSpec, Limits, SpecError, UploadedDataset
from models.trainer import TrainingDiverged, TrainingResult, train_many
from worker.callbacks import DbCallbacks, LeaseLost, stack_callbacks
from worker.db import retrying
from worker.lease import LeaseKeeper, lease_owner_id

log = logging.getLogger(__name__)

# Failures whose message is already written for the user.
_READABLE = (SpecError, DatasetError, DeviceError)

@dataclass(frozen=True)
class RunContext:
    sessions: sessionmaker[Session]
    worker: str  # node name, shown as job.worker
    limits: Limits
    # BNLAB_DATA_DIR: where mnist, fashion_mnist and cifar10 are read from (None: refused).
    data_dir: Path | None = None
    checkpoint_every: int = 1
    checkpoint_small_params: int = 1_000_000
    checkpoint_interval: float = 60.0
    heartbeat_interval: float = 5.0
    lease_timeout: float = 60.0
    db_retry: float = 120.0
    max_stack: int = 64  # most experiment children one task trains stacked
    stack_checkpoint_interval: float = 10.0  # seconds between a stack's "last" checkpoints
    # Seconds between a lone small network's "last" checkpoints (None: every checkpoint_every
    # epochs) and between epoch writes (0: every epoch); see WorkerSettings.
    small_checkpoint_interval: float | None = None
    write_interval: float = 0.0
    # Set in this process when its worker shuts down (solo pool: the task runs right here).
    stopping: threading.Event | None = None
    # Test seam (None in production): called in the training thread with (job_id, epoch)
    # right after that epoch's row is committed; training waits for it to return, so a test
    # can act on a job that is certainly still running (see worker.hold).
    on_epoch_written: Callable[[str, int], None] | None = None
    # Test seam too: called with the job id after its message is taken, before the claim.
    before_claim: Callable[[str], None] | None = None


def failure_reason(exc: BaseException) -> str:
    """A message a person can act on; never a traceback."""
    text = str(exc).strip()
    first_line = text.splitlines()[0] if text else ""
    if isinstance(exc, _READABLE):
        return text or type(exc).__name__
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return ("out of memory on the GPU: use a smaller batch_size or network, or device "
                f"'cpu' ({first_line or 'CUDA out of memory'})")
    if isinstance(exc, MemoryError):
        return ("out of memory on the worker: use a smaller dataset, batch_size or network"
                + (f" ({first_line})" if first_line else ""))
    return f"{type(exc).__name__}: {first_line}" if first_line else type(exc).__name__


def diverged_reason(exc: TrainingDiverged, last_checkpoint: int | None) -> str:
    kept = (f"the last good checkpoint (epoch {last_checkpoint}) is kept"
            if last_checkpoint else "no checkpoint was written before it")
    loss = str(exc.loss).lower()
    return (f"training diverged: loss is {loss} at epoch {exc.epoch}; {kept}; lower the "
            "learning rate, scale the inputs or add normalisation")


def run_job(job_id: str, ctx: RunContext) -> str | None:
    """Claim, train and finish one job (with its stack siblings, if it has any); returns the
    job's final status ("queued" when released for another worker), or None if not claimed
    (or the lease was lost).

    Once claimed, no job of the stack stays `running` past an exception seen here. Every log
    line made meanwhile (in this thread) carries the job's id, and its experiment's.
    """
    with log_context(job_id=job_id):
        return _run_job(job_id, ctx)


def _run_job(job_id: str, ctx: RunContext) -> str | None:
    with ctx.sessions() as session:
        job = repo.get_job(session, job_id=job_id)
        if job is None:
            log.warning("job %s does not exist; dropping the message", job_id)
            return None
        stored_spec, stack_key = job.spec, job.stack_key
        add_log_context(experiment_id=job.experiment_id)
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
    if ctx.stopping is not None and ctx.stopping.is_set():
        # Delivered while this worker shuts down: leave it to the next worker's reaper.
        log.info("job %s delivered during shutdown; leaving it queued for another worker",
                 job_id)
        with ctx.sessions.begin() as session:
            repo.make_due(session, job_id=job_id)
        return None
    if ctx.before_claim is not None:
        ctx.before_claim(job_id)
    owner = lease_owner_id(ctx.worker)
    stack = retrying(lambda: _claim(job_id, stack_key if early_error is None else None, ctx,
                                    owner, device_name),
                     what=f"job {job_id} claim", deadline_s=ctx.db_retry)
    if not stack:
        _explain_unclaimed(job_id, ctx)
        return None
    ids = [c.job_id for c in stack]
    if len(stack) > 1:
        log.info("job %s claimed by %s on %s with %d stacked siblings", job_id, owner,
                 device_name, len(stack) - 1)
    else:
        log.info("job %s claimed by %s on %s", job_id, owner, device_name)
    keeper = LeaseKeeper(ctx.sessions, ids, owner, ctx.heartbeat_interval)
    keeper.start()
    try:
        if early_error is not None:
            raise early_error
        assert device is not None
        return _train(stack, spec, device, ctx, owner, keeper).get(job_id)
    except LeaseLost as exc:
        log.warning("%s; %s stopped without writing more", exc, owner)
        # The stack's other jobs are still ours: give them back rather than let them lapse.
        for other in ids:
            retrying(lambda other=other: _release(ctx, other, owner),  # type: ignore[misc]
                     what=f"job {other} release", deadline_s=ctx.db_retry)
        return None
    except Exception as exc:
        reason = failure_reason(exc)
        if isinstance(exc, TrainingDiverged):
            reason = diverged_reason(exc, _last_checkpoint_epoch(ctx, job_id))
        log.warning("job %s failed: %s", ",".join(ids), reason,
                    exc_info=not isinstance(exc, (*_READABLE, TrainingDiverged)))
        for failed in ids:
            _finish(ctx, failed, owner, status="failed", error=reason)
        return "failed"
    except BaseException as exc:
        # The worker is being stopped hard (cold shutdown, interrupt): not the jobs' fault, so
        # they go back to the queue (or fail once their attempts are spent), and the process
        # ends. Retried like every other write here: on SQLite a WAL snapshot conflict answers
        # "database is locked" at once, without waiting for the busy timeout.
        reason = f"worker stopped ({type(exc).__name__})"
        # The interrupt may have landed mid-write: the frames it unwound still reference that
        # session's connection, whose write lock would block the release below until it gives
        # up. Dropping the frames' locals lets the connection be finalised (rolled back) now.
        traceback.clear_frames(exc.__traceback__)
        gc.collect()

        def release() -> list[JobStatus | None]:
            with ctx.sessions.begin() as session:
                out = [repo.release_job(session, job_id=j, worker=owner, error=reason)
                       for j in ids]
                for j in ids:
                    repo.make_due(session, job_id=j)
                return out
        new_status = retrying(release, what=f"job {job_id} release", deadline_s=ctx.db_retry)
        log.warning("job %s released (%s) after %s", ",".join(ids), new_status,
                    type(exc).__name__)
        raise
    finally:
        keeper.stop()


@dataclass(frozen=True)
class Claimed:
    """A job this task holds: its seed and where it resumes (epoch, "last" blob)."""

    job_id: str
    seed: int
    epoch: int
    blob: bytes | None


def _claim(job_id: str, stack_key: str | None, ctx: RunContext, owner: str, device: str
           ) -> list[Claimed]:
    """Claim the job, and its queued stack siblings that resume from the same epoch, and
    prepare their resume, in one transaction; [] if the job itself was not claimed. Epoch rows
    after a checkpoint (written by a lost attempt that checkpointed less often) are deleted,
    so each history stays exactly 1..N."""
    with ctx.sessions.begin() as session:
        lead = _claim_one(session, job_id, ctx, owner, device, want_epoch=None)
        if lead is None:
            return []
        stack = [lead]
        if stack_key is not None:
            cap = _stack_cap(session, job_id, ctx)
            for sibling in repo.queued_stack_siblings(session, stack_key=stack_key,
                                                      exclude=job_id):
                if len(stack) >= cap:
                    break
                claimed = _claim_one(session, sibling, ctx, owner, device,
                                     want_epoch=lead.epoch)
                if claimed is not None:
                    stack.append(claimed)
        return stack


def _stack_cap(session: Session, job_id: str, ctx: RunContext) -> int:
    """How many siblings one stack may hold: max_stack, and no more models than fit the
    activation-memory limit together (a stack's batch holds every model's layer outputs: K
    convnets take K times one's). 1 if the shape cannot be known here (training will say)."""
    job = repo.get_job(session, job_id=job_id)
    if job is None:
        return 1
    spec = JobSpec.model_validate(job.spec)
    try:
        if isinstance(spec.dataset, UploadedDataset):
            row = repo.get_dataset(session, dataset_id=spec.dataset.id)
            if row is None:
                return 1
            shape, n_classes = tuple(row.input_shape), len(row.classes)
        else:
            shape, n_classes, _ = builtin_shape(spec.dataset, ctx.data_dir)
        net = resolve_network(spec.network, shape, n_classes)
    except (SpecError, DatasetError, ValueError):
        return 1
    one = activation_bytes(net, spec.training.batch_size)
    return max(1, min(ctx.max_stack, ctx.limits.max_activation_bytes // max(one, 1)))


def _claim_one(session: Session, job_id: str, ctx: RunContext, owner: str, device: str,
               want_epoch: int | None) -> Claimed | None:
    last = repo.get_checkpoint(session, job_id=job_id, kind="last")
    epoch = last.epoch if last is not None else 0
    if want_epoch is not None and epoch != want_epoch:
        return None  # a stack trains in lockstep: this one waits for its own message
    if not repo.claim_job(session, job_id=job_id, worker=ctx.worker, device=device,
                          lease_owner=owner):
        return None
    dropped = repo.truncate_after(session, job_id=job_id, epoch=epoch)
    job = repo.get_job(session, job_id=job_id)
    assert job is not None
    seed = JobSpec.model_validate(job.spec).training.seed
    if last is None:
        return Claimed(job_id, seed, 0, None)
    log.info("resuming job %s from epoch %d", job_id, epoch)
    if dropped:
        log.info("job %s: dropped %d epoch rows after the checkpoint", job_id, dropped)
    return Claimed(job_id, seed, epoch, bytes(last.content))


def _explain_unclaimed(job_id: str, ctx: RunContext) -> None:
    with ctx.sessions() as session:
        job = repo.get_job(session, job_id=job_id)
        live_since = utcnow() - timedelta(seconds=ctx.lease_timeout)
        if job is not None and job.status == JobStatus.running and job.heartbeat_at is not None \
                and job.heartbeat_at >= live_since:
            log.info("job %s is running under %s (lease live); ignoring duplicate delivery",
                     job_id, job.lease_owner)
        else:
            status = job.status if job is not None else "gone"
            log.info("job %s already claimed or not queued (%s); nothing to do", job_id, status)


def _load(spec: JobSpec, ctx: RunContext) -> tuple[ResolvedJob, Any]:
    content: bytes | None = None
    fmt = "csv"
    if isinstance(spec.dataset, UploadedDataset):
        dataset_id = spec.dataset.id
        with ctx.sessions() as session:
            row = repo.get_dataset(session, dataset_id=dataset_id)
            if row is not None:
                fmt = row.format
                content = repo.get_dataset_content(session, dataset_id=dataset_id)
        if content is None:
            raise DatasetError(f"dataset {dataset_id} no longer exists (it was deleted): "
                               "upload it again and submit a new job")
    table = load_table(spec.dataset, content=content, fmt=fmt, data_dir=ctx.data_dir)
    resolved = resolve_job(spec, input_shape=table.input_shape, n_classes=table.n_classes,
                           n_rows=table.n_rows, limits=ctx.limits)
    return resolved, table


def checkpoint_interval(resolved: ResolvedJob, ctx: RunContext, k: int = 1) -> float | None:
    """Seconds between "last" checkpoints: small_checkpoint_interval (None: every
    checkpoint_every epochs) for one small network; time-bounded for large ones, and for a
    stack of k, whose k checkpoints per epoch would otherwise cost more than its training."""
    params = k * sum(row.params for row in resolved.network.summary())
    if params > ctx.checkpoint_small_params:
        return ctx.checkpoint_interval
    return ctx.stack_checkpoint_interval if k > 1 else ctx.small_checkpoint_interval


def _train(stack: list[Claimed], spec: JobSpec, device: torch.device, ctx: RunContext,
           owner: str, keeper: LeaseKeeper) -> dict[str, str | None]:
    """Train the stack (one job, or siblings that differ only by seed) and finish each job;
    returns each job's final status (None where its lease was lost)."""
    resolved, table = _load(spec, ctx)
    writer, callbacks = stack_callbacks(
        ctx.sessions, [c.job_id for c in stack], lease_owner=owner,
        lost=[keeper.lost(c.job_id) for c in stack], stopping=ctx.stopping,
        retry_s=ctx.db_retry, write_interval=ctx.write_interval,
        on_written=ctx.on_epoch_written)
    # A stack resumes in lockstep: every member has a checkpoint at one epoch, or none has.
    resume = [c.blob for c in stack if c.blob is not None]
    results = train_many(resolved, table, seeds=[c.seed for c in stack], device=device,
                         callbacks=callbacks,
                         resume_from=resume or None,
                         checkpoint_every=ctx.checkpoint_every,
                         checkpoint_interval_s=checkpoint_interval(resolved, ctx, len(stack)))
    writer.flush()  # an epoch some members never completed (they stopped) is still written
    return {c.job_id: _conclude(c.job_id, result, cb, spec, ctx, owner)
            for c, result, cb in zip(stack, results, callbacks, strict=True)}


def _conclude(job_id: str, result: TrainingResult, callbacks: DbCallbacks, spec: JobSpec,
              ctx: RunContext, owner: str) -> str | None:
    """Record how one job of the stack ended: its own stop reason, divergence or success."""
    if result.diverged is not None:
        why = diverged_reason(result.diverged, _last_checkpoint_epoch(ctx, job_id))
        log.warning("job %s failed: %s", job_id, why)
        _finish(ctx, job_id, owner, status="failed", error=why)
        return "failed"
    reason = callbacks.stop_reason if result.cancelled else None
    if reason == "lost":
        log.warning("job %s: %s lost its lease; stopped without finishing it", job_id, owner)
        return None
    done = result.epochs_run >= spec.training.epochs
    if reason == "release" and not done:
        # This process's worker is shutting down (a pool child learns it here).
        if ctx.stopping is not None:
            ctx.stopping.set()
        new_status = retrying(lambda: _release(ctx, job_id, owner),
                              what=f"job {job_id} release", deadline_s=ctx.db_retry)
        log.warning("job %s released at epoch %d for another worker (worker shutting down; "
                    "attempt not counted): %s", job_id, result.epochs_run, new_status)
        return str(new_status) if new_status is not None else None
    status = "cancelled" if reason == "cancel" else "succeeded"
    if not _finish(ctx, job_id, owner, status=status, final_metrics=result.final_metrics,
                   best_metrics=result.best_metrics, best_epoch=result.best_epoch):
        log.warning("job %s was no longer running under %s; result not recorded",
                    job_id, owner)
        return None
    log.info("job %s %s", job_id, status)
    return status


def _release(ctx: RunContext, job_id: str, owner: str) -> JobStatus | None:
    """Back to queued, attempt refunded, due for the next reaper sweep. No message is sent
    from here: this worker's consumer is still running and could take it back itself."""
    with ctx.sessions.begin() as session:
        status = repo.release_job(session, job_id=job_id, worker=owner, refund=True)
        repo.make_due(session, job_id=job_id)
        return status


def _finish(ctx: RunContext, job_id: str, owner: str, **values: Any) -> bool:
    def finish() -> bool:
        with ctx.sessions.begin() as session:
            return repo.finish_job(session, job_id=job_id, worker=owner, **values)
    return retrying(finish, what=f"job {job_id} finish", deadline_s=ctx.db_retry)


def _last_checkpoint_epoch(ctx: RunContext, job_id: str) -> int | None:
    with ctx.sessions() as session:
        rows = {c.kind: c.epoch for c in repo.list_checkpoints(session, job_id=job_id)}
    return rows.get("last")
