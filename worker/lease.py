"""A running job's lease: who may write into it, renewed by a thread beside the training."""

from __future__ import annotations

import logging
import os
import secrets
import threading

from sqlalchemy.orm import Session, sessionmaker

from models.db import repository as repo

log = logging.getLogger(__name__)


def lease_owner_id(node: str) -> str:
    """Unique per process and attempt: two processes of one node never renew each other's
    lease, and a retried task in the same process gets a fresh one."""
    return f"{node}/{os.getpid()}/{secrets.token_hex(4)}"


class LeaseKeeper(threading.Thread):
    """Renews the job's heartbeat every `interval` seconds while it trains.

    A renewal that matches no row means the lease is gone (the reaper gave the job to someone
    else, or it is no longer running): `lost` is set and the training stops at the epoch end.
    Database errors are logged and retried at the next tick; a long outage lets the lease
    lapse, which is what should happen.
    """

    def __init__(self, sessions: sessionmaker[Session], job_id: str, owner: str,
                 interval: float) -> None:
        super().__init__(name=f"bnlab-lease-{job_id[:8]}", daemon=True)
        self.sessions, self.job_id, self.owner, self.interval = sessions, job_id, owner, interval
        self.lost = threading.Event()
        self._stopped = threading.Event()

    def run(self) -> None:
        while not self._stopped.wait(self.interval):
            try:
                with self.sessions.begin() as session:
                    held = repo.heartbeat(session, job_id=self.job_id, worker=self.owner)
            except Exception:
                log.warning("job %s: lease renewal failed; retrying in %.0fs", self.job_id,
                            self.interval, exc_info=True)
                continue
            if not held and not self._stopped.is_set():
                log.warning("job %s: lease of %s lost; stopping at the end of this epoch",
                            self.job_id, self.owner)
                self.lost.set()
                return

    def stop(self) -> None:
        self._stopped.set()
