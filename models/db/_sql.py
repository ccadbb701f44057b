"""Small helpers shared by the repository modules."""

from __future__ import annotations

from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session


def dialect_insert(session: Session, table: type[Any]) -> Any:
    """INSERT into mapped class `table` with `on_conflict_*`, for SQLite or PostgreSQL."""
    name = session.get_bind().dialect.name
    if name == "postgresql":
        return postgresql.insert(table)
    if name == "sqlite":
        return sqlite.insert(table)
    raise NotImplementedError(f"database '{name}' is not supported: use PostgreSQL or SQLite")


def forget(session: Session, cls: type, key: Any) -> None:
    """Expire the identity-map copy that a Core UPDATE/INSERT just made stale, if any."""
    obj = session.identity_map.get(session.identity_key(cls, key))
    if obj is not None:
        session.expire(obj)
