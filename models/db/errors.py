"""Which database errors are an outage (worth retrying, or answering 503) rather than a bug.

One definition for the worker's retries and the API's 503, which must never import each other.
"""

from __future__ import annotations

import errno
import sqlite3

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

_PG_DISK_FULL = "53100"  # SQLSTATE disk_full


def is_transient(exc: BaseException) -> bool:
    """A database error worth retrying: unreachable, restarted, locked (not a bad statement)."""
    if isinstance(exc, OperationalError | InterfaceError):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


def driver_message(exc: BaseException) -> str:
    """The driver's own first line ("connection refused ..."): no SQL, parameters or trace,
    which SQLAlchemy's str() appends on further lines."""
    orig = exc.orig if isinstance(exc, DBAPIError) else None
    lines = str(orig if orig is not None else exc).strip().splitlines()
    return lines[0].strip() if lines and lines[0].strip() else type(exc).__name__


def is_disk_full(exc: BaseException) -> bool:
    """The database (or a file beside it) has no room: SQLite's SQLITE_FULL, PostgreSQL's
    disk_full, an OSError ENOSPC. Transient too: it passes once space is freed."""
    orig = exc.orig if isinstance(exc, DBAPIError) else exc
    if isinstance(orig, sqlite3.Error) and getattr(orig, "sqlite_errorcode", None) == \
            sqlite3.SQLITE_FULL:
        return True
    if getattr(orig, "sqlstate", None) == _PG_DISK_FULL:
        return True
    return isinstance(orig, OSError) and orig.errno == errno.ENOSPC
