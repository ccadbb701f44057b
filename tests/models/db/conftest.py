"""Every test here runs on SQLite (a file under tmp_path) and on PostgreSQL.

SQLite: one migrated template file per session, copied for each test. PostgreSQL: the
session's database is migrated once; each test's session runs inside a transaction that is
rolled back at teardown (repository functions never commit, so nothing leaks). Tests that
must commit (concurrency) use `engine` and clean up after themselves.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from models.db import make_engine, session_factory, upgrade
from tests.support import db as support_db

# The PostgreSQL runs need a server: integration, so `make check` leaves them out.
BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)]


@pytest.fixture(scope="session")
def sqlite_template() -> Path:
    return support_db.sqlite_template()


@pytest.fixture
def fresh_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """The URL of an empty database (never migrated) on `backend`."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'sub' / 'fresh.sqlite3'}"
        return
    import psycopg

    server = request.getfixturevalue("postgres_url").rsplit("/", 1)[0]
    name = f"bnlab_mig_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield f"{server}/{name}"
    with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def pg_engine(postgres_url: str) -> Iterator[Engine]:
    upgrade(postgres_url)
    engine = make_engine(postgres_url)
    yield engine
    engine.dispose()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def engine(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """A migrated database: a fresh SQLite copy, or the session's PostgreSQL database."""
    if backend == "postgresql":
        yield request.getfixturevalue("pg_engine")
        return
    path = tmp_path / "bnlab.sqlite3"
    shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
    eng = make_engine(f"sqlite:///{path}")
    yield eng
    eng.dispose()


@pytest.fixture
def sessions(engine: Engine) -> sessionmaker[Session]:
    """Real sessions that commit; tests using it on PostgreSQL delete what they create."""
    return session_factory(engine)


@pytest.fixture
def session(engine: Engine, backend: str) -> Iterator[Session]:
    """A session whose work is thrown away at teardown."""
    if backend == "sqlite":
        with Session(engine, expire_on_commit=False) as s:
            yield s
        return
    with engine.connect() as conn:
        outer = conn.begin()
        s = Session(bind=conn, expire_on_commit=False,
                    join_transaction_mode="create_savepoint")
        try:
            yield s
        finally:
            s.close()
            outer.rollback()
