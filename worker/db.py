"""One engine per worker process, and retries through database outages."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from models.db.engine import make_engine, session_factory
from models.db.errors import driver_message, is_disk_full, is_transient

log = logging.getLogger(__name__)
T = TypeVar("T")
_factories: dict[int, sessionmaker[Session]] = {}


def sessions(url: str) -> sessionmaker[Session]:
    pid = os.getpid()
    if pid not in _factories:
        for inherited in _factories.values():
            # Forked from a parent that had connections: drop them without closing the
            # parent's sockets (SQLAlchemy's recipe for multiprocessing).
            inherited.kw["bind"].dispose(close=False)
        _factories.clear()
        _factories[pid] = session_factory(make_engine(url))
    return _factories[pid]


def retrying(fn: Callable[[], T], *, what: str, deadline_s: float = 120.0,
             first_delay: float = 0.5, max_delay: float = 10.0) -> T:
    """Run `fn` (one whole transaction) until it succeeds, retrying transient database errors
    with exponential backoff for up to `deadline_s` seconds; then the last error is raised.

    `fn` must be safe to run again after a rollback (epoch rows are inserted ON CONFLICT DO
    NOTHING; job transitions are conditional updates).
    """
    start = time.monotonic()
    delay = first_delay
    while True:
        try:
            return fn()
        except DBAPIError as exc:
            if not is_transient(exc) or time.monotonic() - start + delay > deadline_s:
                raise
            # A full disk pauses the job's writes like an outage does, until space is freed.
            trouble = "the disk is full" if is_disk_full(exc) else "database unavailable"
            log.warning("%s: %s (%s); retrying in %.1fs", what, trouble, driver_message(exc),
                        delay)
            time.sleep(delay)
            delay = min(delay * 2, max_delay)
