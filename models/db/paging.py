"""Keyset pagination on (created_at, id), newest first: stable while rows are added."""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from typing import Any

from sqlalchemy import Select, literal, tuple_
from sqlalchemy.orm import Session


class InvalidCursor(ValueError):
    """A `cursor` that a listing did not produce."""


def encode_cursor(created_at: datetime, row_id: str) -> str:
    """A keyset cursor, opaque to clients."""
    raw = f"{created_at.isoformat()}|{row_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        stamp, row_id = raw.split("|", 1)
        created = datetime.fromisoformat(stamp)
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise InvalidCursor("invalid cursor: pass the next_cursor of the previous page") from exc
    if created.tzinfo is None:
        raise InvalidCursor("invalid cursor: pass the next_cursor of the previous page")
    return created, row_id


def newest_first(session: Session, stmt: Select[Any], cls: Any, *, limit: int,
                 cursor: str | None) -> tuple[list[Any], str | None]:
    """One page of `stmt` (a select of mapped class `cls`, already filtered) and the next
    page's cursor (None on the last). A malformed cursor raises InvalidCursor."""
    if limit < 1:
        raise ValueError("limit must be at least 1")
    stmt = stmt.order_by(cls.created_at.desc(), cls.id.desc()).limit(limit + 1)
    if cursor:
        created, row_id = decode_cursor(cursor)
        # A row-value comparison, not `a < x OR (a = x AND id < y)`: PostgreSQL takes it as
        # an index range condition and starts at the cursor, where the OR form walked the
        # index from the newest row and filtered (10 ms instead of 0.1 ms halfway down 10,000
        # jobs). SQLite has row values since 3.15.
        # The bound values carry the columns' own types (a bare tuple_ would bind a plain
        # DateTime, skipping UTCDateTime's conversion on SQLite).
        stmt = stmt.where(tuple_(cls.created_at, cls.id) < tuple_(
            literal(created, cls.created_at.type), literal(row_id, cls.id.type)))
    rows = list(session.scalars(stmt))
    if len(rows) <= limit:
        return rows, None
    rows = rows[:limit]
    last: Any = rows[-1]
    return rows, encode_cursor(last.created_at, last.id)
