"""Column types that behave the same on SQLite and PostgreSQL.

- `UTCDateTime`: timezone-aware UTC in and out. PostgreSQL stores `timestamptz`; SQLite has no
  time zone, so values are stored as naive UTC and UTC is attached again on the way out.
- `MetricFloat`: a double that keeps NaN and +/-inf. PostgreSQL stores them natively; SQLite
  turns a REAL NaN into NULL, so there non-finite values are stored as the text 'NaN',
  'Infinity', '-Infinity' (a REAL column keeps text that does not look like a number).
- `MetricsJSON`: JSON whose non-finite floats survive (PostgreSQL's json rejects a bare NaN):
  they are written as the strings above and read back as floats. Only for metric-like
  columns, where those strings never mean anything else.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, TIMESTAMP, Double
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator
from typing_extensions import override

_NONFINITE_TEXT = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def _nonfinite_text(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


class UTCDateTime(TypeDecorator[datetime]):
    """TIMESTAMP WITH TIME ZONE holding UTC; naive datetimes are refused on the way in."""

    impl = TIMESTAMP(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: pass an aware datetime (e.g. datetime.now(UTC))")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    @override
    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class _PlainDouble(Double[float]):
    # SQLAlchemy's SQLite Double coerces every bound value with float(), which would turn the
    # 'NaN' text back into a float that SQLite then stores as NULL.
    @override
    def bind_processor(self, dialect: Dialect) -> None:
        return None


class MetricFloat(TypeDecorator[float]):
    """A float column where NaN and +/-inf round-trip on every backend (NULL stays NULL)."""

    impl = _PlainDouble()
    cache_ok = True

    def process_bind_param(self, value: float | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        value = float(value)
        if dialect.name == "sqlite" and not math.isfinite(value):
            return _nonfinite_text(value)
        return value

    @override
    def process_result_value(self, value: Any, dialect: Dialect) -> float | None:
        if value is None:
            return None
        if isinstance(value, str):
            return _NONFINITE_TEXT[value] if value in _NONFINITE_TEXT else float(value)
        return float(value)


def encode_nonfinite(value: Any) -> Any:
    """Replace non-finite floats anywhere inside `value` with 'NaN' / 'Infinity' / '-Infinity'."""
    if isinstance(value, float) and not math.isfinite(value):
        return _nonfinite_text(value)
    if isinstance(value, dict):
        return {k: encode_nonfinite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [encode_nonfinite(v) for v in value]
    return value


def decode_nonfinite(value: Any) -> Any:
    """Inverse of `encode_nonfinite`."""
    if isinstance(value, str) and value in _NONFINITE_TEXT:
        return _NONFINITE_TEXT[value]
    if isinstance(value, dict):
        return {k: decode_nonfinite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [decode_nonfinite(v) for v in value]
    return value


class MetricsJSON(TypeDecorator[Any]):
    """JSON for metrics and extras: NaN/inf stored as strings, read back as floats."""

    impl = JSON()
    cache_ok = True

    @override
    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        return encode_nonfinite(value)

    @override
    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        return decode_nonfinite(value)
