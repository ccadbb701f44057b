"""Migrated SQLite databases without running Alembic for each test: one template per process,
migrated once, copied wherever a test needs a database. (The migrations' own tests, and the
PostgreSQL databases, run Alembic.)"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

from sqlalchemy.engine import make_url

from models.db import upgrade


@functools.cache
def sqlite_template() -> Path:
    """A SQLite file at the head revision, made on first use and removed at exit."""
    folder = Path(tempfile.mkdtemp(prefix="bnlab-db-template-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    path = folder / "template.sqlite3"
    upgrade(f"sqlite:///{path}")
    return path


def migrated_sqlite(url: str) -> None:
    """Leave at `url` (a new sqlite:/// file) what upgrade(url) would: a copy of the template."""
    database = make_url(url).database
    if not url.startswith("sqlite") or not database:
        raise ValueError(f"not a SQLite file URL: {url}")
    path = Path(database)
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(sqlite_template(), path)
