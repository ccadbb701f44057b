"""Running jobs' leases: who may write into them, renewed by a thread beside the training."""

from __future__ import annotations

import logging
import os
import secrets
import threading
from collections.abc import Sequence

from sqlalchemy.orm import Session, sessionmaker

from models.db import repository as repo
from models.db.errors import driver_message, is_transient

log = logging.getLogger(__name__)


def lease_owner_id(node: str) -> str:
    """Unique per process and attempt: two processes of one node never renew each other's
    lease, and a retried task in the same process gets a fresh one."""
    return f"{node}/{os.getpid()}/{secrets.token_hex(4)}"


class LeaseKeeper(threading.Thread):
    """Renews the heartbeat of the jobs one task trains (one, or a stack) every `interval` s.

    A renewal that matches no row means that job's lease is gone (the reaper gave it to
    someone else, or it is no longer running): its `lost(job_id)` event is set and its training
    stops at the epoch end. Database errors are logged and retried at the next tick; a long
    outage lets the leases lapse, which is what should happen.
    """

    def __init__(self, sessions: sessionmaker[Session], job_ids: Sequence[str], owner: str,
                 interval: float) -> None:
        super().__init__(name=f"bnlab-lease-{job_ids[0][:8]}", daemon=True)
        self.sessions, self.owner, self.interval = sessions, owner, interval
        self._lost = {job_id: threading.Event() for job_id in job_ids}
        self._stopped = threading.Event()

    def lost(self, job_id: str) -> threading.Event:
        return self._lost[job_id]

    def run(self) -> None:
        while not self._stopped.wait(self.interval):
            live = [j for j, event in self._lost.items() if not event.is_set()]
            if not live:
                return
            try:
                with self.sessions.begin() as session:
                    renewed = repo.heartbeat_many(session, job_ids=live, worker=self.owner)
            except Exception as exc:
                log.warning("jobs %s: lease renewal failed (%s); retrying in %.1fs",
                            ",".join(j[:8] for j in live), driver_message(exc), self.interval,
                            exc_info=not is_transient(exc))
                continue
            for job_id in live:
                if job_id not in renewed and not self._stopped.is_set():
                    log.warning("job %s: lease of %s lost; stopping at the end of this epoch",
                                job_id, self.owner)
                    self._lost[job_id].set()

    def stop(self) -> None:
        self._stopped.set()
