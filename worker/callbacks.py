"""The trainer's hooks, backed by the database: one transaction per epoch."""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from models.db import repository as repo
from models.trainer import EpochRecord, TrainingCallbacks


class DbCallbacks(TrainingCallbacks):
    """Writes each epoch's row, its checkpoints and the job's progress atomically.

    A checkpoint never lands without its epoch row (or the reverse), so a resumed job always
    finds a history that ends exactly where its checkpoint does.
    """

    def __init__(self, sessions: sessionmaker[Session], job_id: str) -> None:
        self.sessions = sessions
        self.job_id = job_id

    def on_epoch_end(self, record: EpochRecord) -> None:
        with self.sessions.begin() as session:
            repo.record_epoch(session, job_id=self.job_id, epoch=record.epoch,
                              metrics=record.metrics, wall_time=record.wall_time,
                              extras=record.extras)
            for kind, blob in record.checkpoints.items():
                repo.put_checkpoint(session, job_id=self.job_id, kind=kind, epoch=record.epoch,
                                    content=blob, metrics=record.metrics)
            # progress doubles as the job's lease heartbeat
            repo.update_progress(session, job_id=self.job_id, epochs_done=record.epoch)

    def should_stop(self) -> bool:
        # Cooperative cancel: POST /cancel sets the flag; the trainer checks once per epoch.
        with self.sessions() as session:
            return repo.is_cancel_requested(session, job_id=self.job_id)
