from __future__ import annotations

import io
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from models.db import current_revision, is_up_to_date, make_engine, upgrade
from models.db.migrate import alembic_config, head_revision
from models.db.tables import Base

TABLES = {"dataset", "job", "epoch_metric", "checkpoint", "worker_heartbeat"}


def _diffs(url: str) -> list[object]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            return list(compare_metadata(ctx, Base.metadata))
    finally:
        engine.dispose()


def test_upgrade_gives_the_tables_of_the_metadata(fresh_url: str) -> None:
    assert current_revision(fresh_url) is None
    assert not is_up_to_date(fresh_url)
    upgrade(fresh_url)
    engine = make_engine(fresh_url)
    try:
        assert set(inspect(engine).get_table_names()) >= TABLES
    finally:
        engine.dispose()
    assert _diffs(fresh_url) == []
    assert current_revision(fresh_url) == head_revision()
    assert is_up_to_date(fresh_url)


def test_upgrade_twice_is_a_no_op(fresh_url: str) -> None:
    upgrade(fresh_url)
    first = current_revision(fresh_url)
    upgrade(fresh_url)
    assert current_revision(fresh_url) == first == head_revision()
    assert _diffs(fresh_url) == []


def test_concurrent_upgrades_from_two_processes_both_succeed(
    fresh_url: str, tmp_path: Path,
) -> None:
    # What happens when `bnlab serve` and a worker (or two compose services) start together;
    # run outside the checkout, as an installed `bnlab` would.
    code = "import sys; from models.db import upgrade; upgrade(sys.argv[1])"
    procs = [subprocess.Popen([sys.executable, "-c", code, fresh_url], cwd=tmp_path,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    assert is_up_to_date(fresh_url)
    assert _diffs(fresh_url) == []


def test_upgrade_from_two_threads_is_serialised(fresh_url: str) -> None:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            upgrade(fresh_url)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert is_up_to_date(fresh_url)


def test_downgrade_to_base_and_back(fresh_url: str) -> None:
    upgrade(fresh_url)
    command.downgrade(alembic_config(fresh_url), "base")
    engine = make_engine(fresh_url)
    try:
        assert not TABLES & set(inspect(engine).get_table_names())
    finally:
        engine.dispose()
    upgrade(fresh_url)
    assert _diffs(fresh_url) == []


def test_env_reads_the_url_from_the_config_not_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BNLAB_DATABASE_URL", "postgresql://nobody@127.0.0.1:1/nothing")
    url = f"sqlite:///{tmp_path / 'x.sqlite3'}"
    upgrade(url)
    assert is_up_to_date(url)


@pytest.mark.parametrize("url", ["postgresql://someone@db.invalid/bnlab", "sqlite:///unused.db"])
def test_offline_sql_can_be_rendered_without_a_database(url: str) -> None:
    cfg = alembic_config(url)
    cfg.output_buffer = io.StringIO()
    command.upgrade(cfg, "head", sql=True)
    sql = cfg.output_buffer.getvalue()
    for table in TABLES:
        assert f"CREATE TABLE {table}" in sql
