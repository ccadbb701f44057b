"""Alembic, driven from code: no alembic.ini is needed at run time.

The URL travels in `Config.attributes`, so migrations/env.py never reads the environment.
"""

from __future__ import annotations

import threading
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from models.db.engine import make_engine, normalize_url

# Alembic's `context` is process-global, so one migration at a time per process; between
# processes, env.py serialises with a database lock.
_LOCK = threading.Lock()


def migrations_dir() -> Path:
    """The packaged migrations/ folder (works for a wheel, an editable install and a checkout)."""
    import migrations

    # __path__, not __file__: an editable install made before migrations/ had an __init__.py
    # maps it as a namespace package, which has no __file__.
    for entry in migrations.__path__:
        if (Path(entry) / "env.py").is_file():
            return Path(entry)
    raise RuntimeError("the migrations package has no env.py: reinstall bnlab")


def alembic_config(url: str) -> Config:
    """An Alembic Config for the packaged migrations/ folder and database `url`."""
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.attributes["url"] = normalize_url(url)
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    """Apply migrations up to `revision` (default head); a no-op when already there."""
    with _LOCK:
        command.upgrade(alembic_config(url), revision)


def head_revision() -> str | None:
    """The newest revision shipped in migrations/versions."""
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def current_revision(url: str) -> str | None:
    """The revision the database at `url` is at (None: never migrated)."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def is_up_to_date(url: str) -> bool:
    """True when the database at `url` is at the newest shipped revision."""
    return current_revision(url) == head_revision()
