"""The API's in-process settings: a migrated SQLite file and kombu's filesystem broker."""

from __future__ import annotations

from pathlib import Path

from api.settings import ApiSettings
from tests.support.db import migrated_sqlite


def migrated_settings(home: Path) -> ApiSettings:
    """Settings whose database (under `home`) is migrated; no broker or database URL given."""
    s = ApiSettings(home=home, database_url=None, broker_url=None, max_predict_rows=100)
    migrated_sqlite(s.sqlalchemy_url)
    return s
