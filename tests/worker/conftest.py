"""Shared worker-test fixtures: a migrated SQLite database per test (a copy of the template)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from models.db import make_engine, session_factory
from tests.support.db import migrated_sqlite


@pytest.fixture
def sessions(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    url = f"sqlite:///{tmp_path / 'bnlab.sqlite3'}"
    migrated_sqlite(url)
    engine = make_engine(url)
    yield session_factory(engine)
    engine.dispose()
