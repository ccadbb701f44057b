"""The trainer's hooks, backed by the database: one fenced transaction per epoch."""

from __future__ import annotations

import logging
import threading

from sqlalchemy.orm import Session, sessionmaker

from models.db import repository as repo
from models.trainer import EpochRecord, TrainingCallbacks
from worker.db import is_transient, retrying

log = logging.getLogger(__name__)


class LeaseLost(RuntimeError):
    """This process no longer holds the job's lease: someone else runs it now."""


class DbCallbacks(TrainingCallbacks):
    """Writes each epoch's row, its checkpoints and the job's progress atomically.

    A checkpoint never lands without its epoch row (or the reverse), so a resumed job always
    finds a history that ends exactly where its checkpoint does. With `lease_owner`, each
    epoch's transaction first renews the lease conditionally (fencing): if another worker
    holds the job now, nothing is written and LeaseLost stops the training.

    `stop_reason` tells why should_stop() said yes: "cancel", "release" (the worker is
    shutting down) or "lost" (the lease is gone).
    """

    def __init__(self, sessions: sessionmaker[Session], job_id: str, *,
                 lease_owner: str | None = None, lost: threading.Event | None = None,
                 stopping: threading.Event | None = None, retry_s: float = 120.0) -> None:
        self.sessions = sessions
        self.job_id = job_id
        self.lease_owner = lease_owner
        self.lost = lost or threading.Event()
        self.stopping = stopping
        self.retry_s = retry_s
        self.stop_reason: str | None = None

    def on_epoch_end(self, record: EpochRecord) -> None:
        def write() -> None:
            with self.sessions.begin() as session:
                if self.lease_owner is not None and not repo.heartbeat(
                        session, job_id=self.job_id, worker=self.lease_owner):
                    raise LeaseLost(f"job {self.job_id}: lease of {self.lease_owner} lost")
                repo.record_epoch(session, job_id=self.job_id, epoch=record.epoch,
                                  metrics=record.metrics, wall_time=record.wall_time,
                                  extras=record.extras)
                for kind, blob in record.checkpoints.items():
                    repo.put_checkpoint(session, job_id=self.job_id, kind=kind,
                                        epoch=record.epoch, content=blob,
                                        metrics=record.metrics)
                repo.update_progress(session, job_id=self.job_id, epochs_done=record.epoch)

        try:
            retrying(write, what=f"job {self.job_id} epoch {record.epoch}",
                     deadline_s=self.retry_s)
        except LeaseLost:
            self.lost.set()
            self.stop_reason = "lost"
            raise

    def should_stop(self) -> bool:
        """Cancel requested, worker shutting down, or lease lost; checked once per epoch."""
        if self.lost.is_set():
            self.stop_reason = "lost"
            return True
        try:
            with self.sessions() as session:
                cancel, release, lost = repo.stop_flags(session, job_id=self.job_id,
                                                        lease_owner=self.lease_owner)
        except Exception as exc:
            if not is_transient(exc):
                raise
            # The epoch write that follows retries through the outage; don't stop for it.
            log.warning("job %s: could not read its stop flags (%s)", self.job_id, exc)
            cancel = release = lost = False
        if cancel:
            self.stop_reason = "cancel"
        elif lost:
            self.stop_reason = "lost"
        elif release or (self.stopping is not None and self.stopping.is_set()):
            self.stop_reason = "release"
        return self.stop_reason is not None
