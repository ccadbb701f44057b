"""The trainer's hooks, backed by the database: fenced transactions of whole epochs.

A task trains one job or a stack of experiment children; `StackWriter` is the database side of
the whole stack. Each member's epoch record is buffered until every member still training has
reported that epoch, then complete epochs are written in one transaction, at once or (the
worker's default) at most every `write_interval` seconds; stop flags are read for every member
with one query, as often. So a stack of 64 costs about what one job costs in database round
trips, and a job of small, fast epochs is not slowed by writing each of them on its own.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

from sqlalchemy.orm import Session, sessionmaker

from models.db import repository as repo
from models.db.errors import is_transient
from models.trainer import EpochRecord, TrainingCallbacks
from worker.db import retrying

log = logging.getLogger(__name__)

# Hook: (job_id, epoch) for each epoch row once its transaction committed (see RunContext).
EpochWritten = Callable[[str, int], None]
# Rows per INSERT: a big stack's batch stays under every driver's bound-parameter limit.
_ROWS_PER_INSERT = 500


class Flags(NamedTuple):
    """A job's stop flags, as the database has them."""

    cancel: bool  # cancel requested (or the job is cancelled)
    release: bool  # give it back to the queue: its worker is shutting down
    lost: bool  # not running under this lease any more


NO_FLAGS = Flags(cancel=False, release=False, lost=False)


class LeaseLost(RuntimeError):
    """This process no longer holds the job's lease: someone else runs it now."""


class StackWriter:
    """Batched, fenced epoch writes and stop-flag reads for the jobs one task trains.

    A checkpoint never lands without its epoch row (or the reverse), so a resumed job always
    finds a history that ends exactly where its checkpoint does. With `lease_owner`, each
    member's rows are written only after renewing its lease conditionally (fencing): a member
    another worker holds now gets nothing written and is marked lost.

    `write_interval` > 0: complete epochs wait in memory until that many seconds passed since
    the previous write, then all go in one transaction (the first is written at once, so a
    job shows progress as soon as it has any; the caller flushes the rest at the end). A
    small network's epoch takes a few milliseconds and its write about as long, so writing
    every epoch would double the job's time. Stop flags (cancel, release) are read as often.
    0 writes and reads every epoch.

    `on_written` (a test seam, None in production): called in the training thread with
    (job_id, epoch) for every epoch row just committed, in epoch order; the training waits
    for it to return.
    """

    def __init__(self, sessions: sessionmaker[Session], *, lease_owner: str | None = None,
                 retry_s: float = 120.0, write_interval: float = 0.0,
                 on_written: EpochWritten | None = None) -> None:
        self.sessions, self.lease_owner, self.retry_s = sessions, lease_owner, retry_s
        self.write_interval = write_interval
        self.on_written = on_written
        self.members: list[str] = []
        self.lost_events: dict[str, threading.Event] = {}
        self.expected: set[str] = set()  # members still training: an epoch is complete when
        self.current: dict[str, EpochRecord] = {}  # ... each of them has a record here
        self.done: list[tuple[str, EpochRecord]] = []  # complete epochs not yet written
        self.flags: dict[str, Flags] = {}
        self.generation = 0  # bumped by every flag read
        self.last_write: float | None = None  # time.monotonic() of the last write, or None
        self.last_read: float | None = None  # ... and of the last flag read

    def join(self, job_id: str, lost: threading.Event) -> None:
        self.members.append(job_id)
        self.lost_events[job_id] = lost
        self.expected.add(job_id)

    def add(self, job_id: str, record: EpochRecord) -> set[str]:
        """Buffer a member's epoch; once the epoch is complete, write what is buffered if a
        write is due. Returns the members found lost."""
        if job_id in self.current:  # a member is an epoch ahead: the others stopped
            self._complete()
        self.current[job_id] = record
        if self.expected <= set(self.current):
            self._complete()
        return self._write() if self._due(self.last_write) else set()

    def flush(self) -> set[str]:
        """Write every buffered record (an incomplete epoch's too) in one transaction; returns
        the members found lost."""
        self._complete()
        return self._write()

    def _due(self, last: float | None) -> bool:
        return (self.write_interval <= 0 or last is None
                or time.monotonic() - last >= self.write_interval)

    def _complete(self) -> None:
        """The current epoch is over: who reported it trains on."""
        if self.current:
            self.done.extend(self.current.items())
            self.expected = {j for j in self.current if not self.lost_events[j].is_set()}
            self.current = {}

    def _write(self) -> set[str]:
        if not self.done:
            return set()
        batch = list(self.done)  # each member's records in epoch order
        members = sorted({job_id for job_id, _ in batch})

        def write() -> set[str]:
            with self.sessions.begin() as session:
                held = (repo.heartbeat_many(session, job_ids=members, worker=self.lease_owner)
                        if self.lease_owner is not None else set(members))
                mine = [(j, r) for j, r in batch if j in held]
                rows = [repo.EpochRow(j, r.epoch, r.metrics, r.wall_time, r.extras)
                        for j, r in mine]
                for start in range(0, len(rows), _ROWS_PER_INSERT):
                    repo.record_epochs(session, rows=rows[start:start + _ROWS_PER_INSERT])
                # Of several checkpoints of one kind in the batch only the newest survives
                # (each replaces the previous): write just that one.
                newest = {(j, kind): (r, blob) for j, r in mine
                          for kind, blob in r.checkpoints.items()}
                for (job_id, kind), (record, blob) in newest.items():
                    repo.put_checkpoint(session, job_id=job_id, kind=kind, epoch=record.epoch,
                                        content=blob, metrics=record.metrics)
            return set(members) - held

        last_epoch = max(r.epoch for _, r in batch)
        lost = retrying(write, what=f"{len(members)} job(s) epoch {last_epoch}",
                        deadline_s=self.retry_s)
        self.done.clear()
        self.last_write = time.monotonic()
        self.expected -= lost
        for job_id in lost:
            log.warning("job %s: lease of %s lost; nothing more is written", job_id,
                        self.lease_owner)
            self.lost_events[job_id].set()
        if self.on_written is not None:
            for job_id, record in batch:
                if job_id not in lost:
                    self.on_written(job_id, record.epoch)
        return lost

    def flags_of(self, job_id: str, seen: int) -> tuple[Flags, int]:
        """A member's stop flags and the snapshot's generation. A member that already read the
        current snapshot (`seen`) is in a new epoch: read all members afresh (when a read is
        due; with write_interval 0, after writing what is buffered, as every epoch)."""
        if seen == self.generation and self._due(self.last_read):
            if self.write_interval <= 0:
                self.flush()
            try:
                with self.sessions() as session:
                    self.flags = {job_id: Flags(*flags) for job_id, flags in
                                  repo.stop_flags_many(session, job_ids=self.members,
                                                       lease_owner=self.lease_owner).items()}
            except Exception as exc:
                if not is_transient(exc):
                    raise
                # The epoch write that follows retries through the outage; don't stop for it.
                log.warning("jobs %s: could not read their stop flags (%s)",
                            ",".join(m[:8] for m in self.members), exc)
                self.flags = {}
            self.generation += 1
            self.last_read = time.monotonic()
        return self.flags.get(job_id, NO_FLAGS), self.generation


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
                 stack: StackWriter | None = None, write_interval: float = 0.0) -> None:
        self.job_id = job_id
        self.lease_owner = lease_owner
        self.lost = lost or threading.Event()
        self.stopping = stopping
        self.stop_reason: str | None = None
        self.stack = stack or StackWriter(sessions, lease_owner=lease_owner, retry_s=retry_s,
                                          write_interval=write_interval)
        self.stack.join(job_id, self.lost)
        self._seen = 0  # == the writer's generation before its first read: read at once

    def on_epoch_end(self, record: EpochRecord) -> None:
        self.stack.add(self.job_id, record)
        if self.lost.is_set() and len(self.stack.members) == 1:
            self.stop_reason = "lost"
            raise LeaseLost(f"job {self.job_id}: lease of {self.lease_owner} lost")

    def should_stop(self) -> bool:
        """Cancel requested, worker shutting down, or lease lost; checked once per epoch
        (the database is read once per epoch, or per write_interval)."""
        if self.lost.is_set():
            self.stop_reason = "lost"
            return True
        flags, self._seen = self.stack.flags_of(self.job_id, self._seen)
        if flags.cancel:
            self.stop_reason = "cancel"
        elif flags.lost:
            self.stop_reason = "lost"
        elif flags.release or (self.stopping is not None and self.stopping.is_set()):
            self.stop_reason = "release"
        return self.stop_reason is not None


def stack_callbacks(sessions: sessionmaker[Session], job_ids: Sequence[str], *,
                    lease_owner: str, lost: Sequence[threading.Event],
                    stopping: threading.Event | None, retry_s: float,
                    write_interval: float = 0.0, on_written: EpochWritten | None = None
                    ) -> tuple[StackWriter, list[DbCallbacks]]:
    """The callbacks of a stack's members, sharing one writer (flush it after training)."""
    writer = StackWriter(sessions, lease_owner=lease_owner, retry_s=retry_s,
                         write_interval=write_interval, on_written=on_written)
    return writer, [DbCallbacks(sessions, job_id, lease_owner=lease_owner, lost=event,
                                stopping=stopping, retry_s=retry_s, stack=writer)
                    for job_id, event in zip(job_ids, lost, strict=True)]
