"""One engine per worker process (pool children must not share the parent's connections)."""

from __future__ import annotations

import os

from sqlalchemy.orm import Session, sessionmaker

from models.db.engine import make_engine, session_factory

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
