"""Real services for the tests: a fresh PostgreSQL database and a private Redis db per session.

Under CI=true a missing PostgreSQL or Redis fails the run; elsewhere those tests skip.
"""

from __future__ import annotations

import random
import socket
import uuid
from collections.abc import Callable, Iterator

import pytest

from tests.support.paths import NOTEBOOK_CSV
from tests.support.services import PG_ADMIN_URL, REDIS_HOST, REDIS_PORT, unavailable


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def notebook_csv() -> bytes:
    return NOTEBOOK_CSV.read_bytes()


@pytest.fixture(scope="session")
def new_postgres_database() -> Iterator[Callable[[], str]]:
    """Factory: each call creates an empty database and returns its plain postgresql:// URL.

    Suites that count rows (pagination) and suites that run a whole service get separate
    databases, so neither sees the other's jobs. All are dropped at the end of the session.
    """
    if not _port_open("127.0.0.1", 5432):
        unavailable("PostgreSQL is not reachable at 127.0.0.1:5432")
    import psycopg

    created: list[str] = []

    def create() -> str:
        name = f"bnlab_test_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        created.append(name)
        return PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"

    yield create
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        for name in created:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def postgres_url(new_postgres_database: Callable[[], str]) -> str:
    """A plain postgresql:// URL of a database created for this test session."""
    return new_postgres_database()


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """redis:// URL of a Redis db index no other test session uses, flushed before and after."""
    if not _port_open(REDIS_HOST, REDIS_PORT):
        unavailable(f"Redis is not reachable at {REDIS_HOST}:{REDIS_PORT}")
    import redis

    # Claimed in db 0 (SET NX), so concurrent sessions (pytest-xdist's processes) never share
    # a db: each would see the other's messages.
    claims = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=0)
    token = uuid.uuid4().hex
    db = next((n for n in random.sample(range(1, 16), 15)
               if claims.set(f"bnlab-test:db:{n}", token, nx=True, ex=3 * 3600)), None)
    if db is None:
        pytest.fail("every Redis db 1-15 is claimed by another test session")
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=db)
    client.flushdb()
    yield f"redis://{REDIS_HOST}:{REDIS_PORT}/{db}"
    client.flushdb()
    claims.delete(f"bnlab-test:db:{db}")
