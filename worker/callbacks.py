"""The trainer's hooks, backed by the database: one fenced transaction per epoch.

A task trains one job or a stack of experiment children; `StackWriter` is the database side of
the whole stack. Each member's epoch record is buffered until every member still training has
reported that epoch, then all are written in one transaction; stop flags are read for every
member with one query per epoch. So a stack of 64 costs about what one job costs in database
round trips, and a lone job (a stack of one) writes each epoch as soon as it ends.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

from sqlalchemy.orm import Session, sessionmaker

from models.db import repository as repo
from models.trainer import EpochRecord, TrainingCallbacks
from worker.db import is_transient, retrying

log = logging.getLogger(__name__)

Flags = tuple[bool, bool, bool]  # (cancel, release, lost)


class LeaseLost(RuntimeError):
    """This process no longer holds the job's lease: someone else runs it now."""


class StackWriter:
    """Batched, fenced epoch writes and stop-flag reads for the jobs one task trains.

    A checkpoint never lands without its epoch row (or the reverse), so a resumed job always
    finds a history that ends exactly where its checkpoint does. With `lease_owner`, each
    member's rows are written only after renewing its lease conditionally (fencing): a member
    another worker holds now gets nothing written and is marked lost.
    """

    def __init__(self, sessions: sessionmaker[Session], *, lease_owner: str | None = None,
                 retry_s: float = 120.0) -> None:
        self.sessions, self.lease_owner, self.retry_s = sessions, lease_owner, retry_s
        self.members: list[str] = []
        self.lost_events: dict[str, threading.Event] = {}
        self.expected: set[str] = set()  # members still training: an epoch is complete when
        self.pending: dict[str, EpochRecord] = {}  # ... each of them has a record here
        self.flags: dict[str, Flags] = {}
        self.generation = 0  # bumped by every flag read

    def join(self, job_id: str, lost: threading.Event) -> None:
        self.members.append(job_id)
        self.lost_events[job_id] = lost
        self.expected.add(job_id)

    def add(self, job_id: str, record: EpochRecord) -> set[str]:
        """Buffer a member's epoch; write the epoch once complete. Returns members found lost."""
        lost: set[str] = set()
        if job_id in self.pending:  # a member is an epoch ahead: the others stopped
            lost |= self.flush()
        self.pending[job_id] = record
        if self.expected <= set(self.pending):
            lost |= self.flush()
        return lost

    def flush(self) -> set[str]:
        """Write every buffered record in one transaction; returns the members found lost."""
        if not self.pending:
            return set()
        batch = dict(self.pending)

        def write() -> set[str]:
            with self.sessions.begin() as session:
                held = (repo.heartbeat_many(session, job_ids=list(batch),
                                            worker=self.lease_owner)
                        if self.lease_owner is not None else set(batch))
                mine = {j: r for j, r in batch.items() if j in held}
                repo.record_epochs(session, rows=[
                    repo.EpochRow(j, r.epoch, r.metrics, r.wall_time, r.extras)
                    for j, r in mine.items()])
                for job_id, record in mine.items():
                    for kind, blob in record.checkpoints.items():
                        repo.put_checkpoint(session, job_id=job_id, kind=kind,
                                            epoch=record.epoch, content=blob,
                                            metrics=record.metrics)
            return set(batch) - held

        epochs = sorted({r.epoch for r in batch.values()})
        lost = retrying(write, what=f"{len(batch)} job(s) epoch {epochs[-1]}",
                        deadline_s=self.retry_s)
        self.pending.clear()
        self.expected = set(batch) - lost  # who reported this epoch trains on
        for job_id in lost:
            log.warning("job %s: lease of %s lost; nothing more is written", job_id,
                        self.lease_owner)
            self.lost_events[job_id].set()
        return lost

    def flags_of(self, job_id: str, seen: int) -> tuple[Flags, int]:
        """A member's stop flags and the snapshot's generation. A member that already read the
        current snapshot (`seen`) is in a new epoch: flush and read all members afresh."""
        if seen == self.generation:
            self.flush()
            try:
                with self.sessions() as session:
                    self.flags = repo.stop_flags_many(session, job_ids=self.members,
                                                      lease_owner=self.lease_owner)
            except Exception as exc:
                if not is_transient(exc):
                    raise
                # The epoch write that follows retries through the outage; don't stop for it.
                log.warning("jobs %s: could not read their stop flags (%s)",
                            ",".join(m[:8] for m in self.members), exc)
                self.flags = {}
            self.generation += 1
        return self.flags.get(job_id, (False, False, False)), self.generation


class DbCallbacks(TrainingCallbacks):
    """One job's hooks; its writes and reads go through the stack's `StackWriter` (a private
    one for a lone job).

    `stop_reason` tells why should_stop() said yes: "cancel", "release" (the worker is
    shutting down) or "lost" (the lease is gone). A lone job's epoch write that finds the lease
    gone raises LeaseLost; in a stack only that member stops, at its next should_stop.
    """

    def __init__(self, sessions: sessionmaker[Session], job_id: str, *,
                 lease_owner: str | None = None, lost: threading.Event | None = None,
                 stopping: threading.Event | None = None, retry_s: float = 120.0,
                 stack: StackWriter | None = None) -> None:
        self.job_id = job_id
        self.lease_owner = lease_owner
        self.lost = lost or threading.Event()
        self.stopping = stopping
        self.stop_reason: str | None = None
        self.stack = stack or StackWriter(sessions, lease_owner=lease_owner, retry_s=retry_s)
        self.stack.join(job_id, self.lost)
        self._seen = 0  # == the writer's generation before its first read: read at once

    def on_epoch_end(self, record: EpochRecord) -> None:
        self.stack.add(self.job_id, record)
        if self.lost.is_set() and len(self.stack.members) == 1:
            self.stop_reason = "lost"
            raise LeaseLost(f"job {self.job_id}: lease of {self.lease_owner} lost")

    def should_stop(self) -> bool:
        """Cancel requested, worker shutting down, or lease lost; checked once per epoch."""
        if self.lost.is_set():
            self.stop_reason = "lost"
            return True
        (cancel, release, lost), self._seen = self.stack.flags_of(self.job_id, self._seen)
        if cancel:
            self.stop_reason = "cancel"
        elif lost:
            self.stop_reason = "lost"
        elif release or (self.stopping is not None and self.stopping.is_set()):
            self.stop_reason = "release"
        return self.stop_reason is not None


def stack_callbacks(sessions: sessionmaker[Session], job_ids: Sequence[str], *,
                    lease_owner: str, lost: Sequence[threading.Event],
                    stopping: threading.Event | None, retry_s: float
                    ) -> tuple[StackWriter, list[DbCallbacks]]:
    """The callbacks of a stack's members, sharing one writer (flush it after training)."""
    writer = StackWriter(sessions, lease_owner=lease_owner, retry_s=retry_s)
    return writer, [DbCallbacks(sessions, job_id, lease_owner=lease_owner, lost=event,
                                stopping=stopping, retry_s=retry_s, stack=writer)
                    for job_id, event in zip(job_ids, lost, strict=True)]
