from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine, text

from models.db import make_engine, normalize_url, session_factory


def test_plain_postgres_urls_get_the_psycopg_driver() -> None:
    assert normalize_url("postgresql://u@h:5432/db") == "postgresql+psycopg://u@h:5432/db"
    assert normalize_url("postgres://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalize_url("postgresql+psycopg://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalize_url("sqlite:///x.db") == "sqlite:///x.db"


def test_make_engine_accepts_a_plain_postgresql_url(postgres_url: str) -> None:
    assert postgres_url.startswith("postgresql://")
    engine = make_engine(postgres_url)
    try:
        assert engine.dialect.driver == "psycopg"
        with engine.connect() as conn:
            assert conn.scalar(text("SELECT 1")) == 1
    finally:
        engine.dispose()


def test_sqlite_creates_the_folder_and_sets_the_pragmas(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "bnlab.sqlite3"
    engine = make_engine(f"sqlite:///{path}")
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
        assert path.exists()
    finally:
        engine.dispose()


def test_sessions_keep_objects_readable_after_commit(engine: Engine) -> None:
    factory = session_factory(engine)
    assert factory.kw["expire_on_commit"] is False
    assert factory.kw["bind"] is engine
