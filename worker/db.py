"""One engine per worker process, and retries through database outages."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from models.db.engine import make_engine, session_factory

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


def is_transient(exc: BaseException) -> bool:
    """A database error worth retrying: unreachable, restarted, locked (not a bad statement)."""
    if isinstance(exc, OperationalError | InterfaceError):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


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
            first = str(exc.orig or exc).strip().splitlines()
            log.warning("%s: database unavailable (%s); retrying in %.1fs", what,
                        first[0] if first else type(exc).__name__, delay)
            time.sleep(delay)
            delay = min(delay * 2, max_delay)
