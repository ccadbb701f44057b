"""Alembic environment: the URL comes from `config.attributes["url"]` (set by
models/db/migrate.py), never from the environment; SQLite runs in batch mode."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, text
from sqlalchemy.engine import make_url

from models.db.engine import make_engine
from models.db.tables import Base

config = context.config
target_metadata = Base.metadata
# Any constant: serialises concurrent `upgrade` calls on one PostgreSQL database.
PG_LOCK_KEY = 0x626E6C6162


def _configure(connection: Connection | None = None, url: str | None = None) -> None:
    dialect = connection.dialect.name if connection is not None \
        else make_url(str(url)).get_backend_name()
    sqlite = dialect.startswith("sqlite")
    context.configure(
        connection=connection, url=url, target_metadata=target_metadata,
        render_as_batch=sqlite, compare_type=True, literal_binds=connection is None,
        # Alembic assumes SQLite DDL is not transactional and commits after every revision,
        # which would release the BEGIN IMMEDIATE lock below between revisions and let a
        # concurrent upgrade apply the same revision twice. Python's sqlite3 runs DDL inside
        # the transaction, so the whole upgrade is one transaction, atomic and serialised.
        transactional_ddl=True,
    )


def run_offline() -> None:
    _configure(url=config.attributes["url"])
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = make_engine(config.attributes["url"])
    try:
        with engine.connect() as conn:
            if conn.dialect.name == "sqlite":
                # Batch mode copies tables; with foreign keys on, dropping the old copy
                # would cascade. (The pragma is a no-op inside a transaction.)
                conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
                conn.commit()
            _run(conn)
    finally:
        engine.dispose()


def _run(conn: Connection) -> None:
    _configure(connection=conn)
    with context.begin_transaction():
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": PG_LOCK_KEY})
        elif conn.dialect.name == "sqlite":
            # Take the write lock before alembic reads the version table, so two processes
            # migrating at once run one after the other (busy_timeout makes the second wait).
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        context.run_migrations()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
