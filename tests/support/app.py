"""The API's in-process settings: a migrated SQLite file and kombu's filesystem broker."""

from __future__ import annotations

from pathlib import Path

from api.settings import ApiSettings
from models.db import upgrade


def migrated_settings(home: Path) -> ApiSettings:
    """Settings whose database (under `home`) is migrated; no broker or database URL given."""
    s = ApiSettings(home=home, database_url=None, broker_url=None, max_predict_rows=100)
    upgrade(s.sqlalchemy_url)
    return s
