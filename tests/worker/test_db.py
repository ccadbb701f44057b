"""Retries through a real database outage: a PostgreSQL backend terminated under the worker."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import psycopg
import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from models.db import make_engine, session_factory, upgrade
from models.db import repository as repo
from models.trainer import EpochRecord
from tests.support.services import PG_ADMIN_URL
from worker.callbacks import DbCallbacks
from worker.db import retrying


@pytest.fixture(scope="module")
def pg_url(new_postgres_database: Callable[[], str]) -> str:
    url = new_postgres_database()
    upgrade(url)
    return url


@pytest.fixture
def engine(pg_url: str) -> Iterator[Engine]:
    # No pre-ping: a connection killed while idle in the pool fails at its next use, which is
    # what an outage looks like in the middle of training.
    engine = make_engine(pg_url, pool_pre_ping=False, pool_size=1)
    yield engine
    engine.dispose()


def kill_pooled_connection(engine: Engine) -> None:
    with engine.connect() as conn:
        pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))


def test_epoch_write_survives_a_dropped_connection_and_is_recorded_once(
        engine: Engine, caplog: pytest.LogCaptureFixture) -> None:
    sessions: sessionmaker[Session] = session_factory(engine)
    with sessions.begin() as session:
        job_id = repo.create_job(session, spec={}, name=None, epochs_total=3).id
        repo.claim_job(session, job_id=job_id, worker="n", device="cpu", lease_owner="n/1/a")
    callbacks = DbCallbacks(sessions, job_id, lease_owner="n/1/a", retry_s=30)
    record = EpochRecord(1, {"loss": 0.5, "accuracy": 0.75}, 0.1, {}, {"last": b"blob"})
    kill_pooled_connection(engine)
    caplog.set_level(logging.WARNING)

    callbacks.on_epoch_end(record)

    assert "database unavailable" in caplog.text  # the first try really failed
    callbacks.on_epoch_end(record)  # a replay (e.g. after a lost commit reply) is harmless
    with sessions() as session:
        assert [r.epoch for r in repo.history(session, job_id=job_id)] == [1]
        last = repo.get_checkpoint(session, job_id=job_id, kind="last")
        assert last is not None
        assert last.epoch == 1
        job = repo.get_job(session, job_id=job_id)
        assert job is not None
        assert job.epochs_done == 1


def test_retrying_gives_up_after_its_deadline() -> None:
    engine = make_engine("postgresql://nobody@127.0.0.1:1/nothing", pool_pre_ping=False)
    calls: list[int] = []

    def attempt() -> None:
        calls.append(1)
        with engine.connect():
            pass

    try:
        with pytest.raises(OperationalError):
            retrying(attempt, what="test", deadline_s=0.5, first_delay=0.1)
    finally:
        engine.dispose()
    assert 2 <= len(calls) <= 5
