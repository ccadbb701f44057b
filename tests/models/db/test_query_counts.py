"""No N+1: the SQL statements a read request runs do not grow with the rows it returns.

Each test asks the real app (TestClient, auth on with env keys, so authenticating runs no SQL)
for one endpoint with 3 rows behind it, then again after more rows were added (30), and
counts the statements the app's engine executed (an event listener), on SQLite and
PostgreSQL. Each test has its own API key, so its listings see only its own rows.
"""

from __future__ import annotations

import hashlib
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event
from sqlalchemy.orm import Session, sessionmaker

from api.main import create_app
from api.routes.experiments import ExperimentEvents
from api.settings import ApiSettings
from models.db import make_engine, session_factory, upgrade
from models.db import repository as repo
from models.db.epochs_repo import EpochRow
from tests.models.db.helpers import SPEC

METRICS = {"loss": 0.5, "accuracy": 0.7, "val_loss": 0.6, "val_accuracy": 0.65, "lr": 1e-3}
EXPERIMENT_SPEC: dict[str, Any] = {
    "name": "e", "base": {"dataset": {"name": "concentric_circles", "n_samples": 100},
                          "network": {"hidden": [3]}, "training": {"epochs": 5}},
    "variants": {"network.batchnorm": ["none", "after_activation"]}, "seeds": 1,
    "metrics": ["loss", "val_accuracy"], "thresholds": {}, "confidence": 0.95}


def owner_of(key: str) -> str:
    return f"env:{hashlib.sha256(key.encode()).hexdigest()[:8]}"  # api.auth.env_owner


@pytest.fixture(scope="module")
def pg_database(new_postgres_database: Callable[[], str]) -> str:
    url = new_postgres_database()
    upgrade(url)
    return url


@pytest.fixture
def database_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if backend == "postgresql":
        return str(request.getfixturevalue("pg_database"))
    path = tmp_path / "bnlab.sqlite3"
    shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
    return f"sqlite:///{path}"


class Counted:
    """The app, a key of the test's own, and the statements its engine ran per request."""

    def __init__(self, client: TestClient, key: str, sessions: sessionmaker[Session]) -> None:
        self.client = client
        self.key = key
        self.owner = owner_of(key)
        self.statements: list[str] = []
        self.sessions = sessions

    def get(self, path: str) -> tuple[Any, list[str]]:
        self.statements.clear()
        r = self.client.get(path, headers={"Authorization": f"Bearer {self.key}"})
        assert r.status_code == 200, r.text
        return r.json(), list(self.statements)

    def add_jobs(self, n: int, *, epochs: int = 0, experiment_id: str | None = None,
                 start_index: int = 0) -> list[str]:
        ids = []
        with self.sessions() as session:
            for i in range(n):
                job = repo.create_job(
                    session, spec=SPEC, name=f"j{i}", epochs_total=max(epochs, 1),
                    owner=self.owner, experiment_id=experiment_id,
                    variant=None if experiment_id is None else
                    ("none", "after_activation")[(start_index + i) % 2],
                    seed=start_index + i, child_index=start_index + i)
                ids.append(job.id)
            add_epochs(session, ids, range(1, epochs + 1))
            session.commit()
        return ids

    def add_experiments(self, n: int, children: int = 2) -> list[str]:
        ids = []
        for _ in range(n):
            with self.sessions() as session:
                exp = repo.create_experiment(session, spec=EXPERIMENT_SPEC, name="e",
                                             variants=["none", "after_activation"], seeds=[0],
                                             owner=self.owner)
                session.commit()
            self.add_jobs(children, epochs=2, experiment_id=exp.id)
            ids.append(exp.id)
        return ids


def add_epochs(session: Session, job_ids: list[str], epochs: range) -> None:
    rows = [EpochRow(job_id=j, epoch=e, metrics=METRICS, wall_time=0.01)
            for j in job_ids for e in epochs]
    if rows:
        repo.record_epochs(session, rows=rows)


@pytest.fixture
def app(database_url: str, tmp_path: Path) -> Iterator[Counted]:
    # A fresh key (owner) per test: the PostgreSQL database is shared by the module.
    key = f"bnlab_query_count_{uuid.uuid4().hex}"
    application = create_app(ApiSettings(home=tmp_path, database_url=database_url,
                                         api_keys=key))
    engine = application.state.engine
    with TestClient(application) as client:
        counted = Counted(client, key, application.state.sessions)

        def capture(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
            counted.statements.append(statement)

        event.listen(engine, "before_cursor_execute", capture)
        yield counted
        event.remove(engine, "before_cursor_execute", capture)


def test_list_jobs(app: Counted) -> None:
    app.add_jobs(3)
    body, few = app.get("/v1/jobs")
    assert len(body["items"]) == 3
    app.add_jobs(27)
    body, many = app.get("/v1/jobs")
    assert len(body["items"]) == 30
    assert len(few) == len(many) == 1, many
    _, filtered = app.get("/v1/jobs?status=queued&limit=5")
    assert len(filtered) == 1, filtered


def test_job_detail_and_history(app: Counted) -> None:
    (few_id,) = app.add_jobs(1, epochs=3)
    (many_id,) = app.add_jobs(1, epochs=30)
    _, detail_few = app.get(f"/v1/jobs/{few_id}")
    _, detail_many = app.get(f"/v1/jobs/{many_id}")
    assert len(detail_few) == len(detail_many) == 1, detail_many
    body, few = app.get(f"/v1/jobs/{few_id}/history")
    assert body["epoch"] == [1, 2, 3]
    body, many = app.get(f"/v1/jobs/{many_id}/history")
    assert body["epoch"] == list(range(1, 31))
    assert len(few) == len(many) == 2, many  # the job, its epochs


def test_list_experiments(app: Counted) -> None:
    app.add_experiments(3)
    body, few = app.get("/v1/experiments")
    assert [len(e["children"]) for e in body["items"]] == [2, 2, 2]
    app.add_experiments(27)
    body, many = app.get("/v1/experiments?limit=100")
    assert len(body["items"]) == 30
    assert all(e["counts"]["queued"] == 2 for e in body["items"])
    assert len(few) == len(many) == 2, many  # the page, every child of the page


@pytest.mark.parametrize("path", ["", "/summary?include=all"])
def test_experiment_detail_and_summary(app: Counted, path: str) -> None:
    (small,) = app.add_experiments(1, children=3)
    (large,) = app.add_experiments(1, children=30)
    body, few = app.get(f"/v1/experiments/{small}{path}")
    _, many = app.get(f"/v1/experiments/{large}{path}")
    if not path:
        assert len(body["children"]) == 3
    # detail: the experiment, its children; summary: and every child's epochs
    assert len(few) == len(many) == (2 if not path else 3), many


def test_experiment_events_poll(app: Counted) -> None:
    counts = []
    for children in (3, 30):
        (exp_id,) = app.add_experiments(1, children=children)
        events = ExperimentEvents(exp_id, [0] * children)
        with app.sessions() as session:
            app.statements.clear()
            poll = events.poll(session)
            counts.append(len(app.statements))
        assert sum(e.event == "epoch" for e in poll.events) == 2 * children
        assert events.last == [2] * children
    assert counts[0] == counts[1] == 3, counts  # experiment, children, their new epochs


def test_statement_capture_sees_a_query(database_url: str) -> None:
    # The listener the tests above rely on counts what the engine runs.
    engine = make_engine(database_url)
    seen: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda *a: seen.append(a[2]))
    try:
        with session_factory(engine)() as session:
            repo.list_jobs(session, owner="nobody")
    finally:
        engine.dispose()
    assert len(seen) == 1
    assert "FROM job" in seen[0]


def test_histories_and_children_of_group_one_query_by_id(session: Session) -> None:
    # What the batched reads above return: per id, in order, ids without rows included.
    exp = repo.create_experiment(session, spec=EXPERIMENT_SPEC, name="e",
                                 variants=["none"], seeds=[0, 1])
    a = repo.create_job(session, spec=SPEC, name="a", epochs_total=3, experiment_id=exp.id,
                        child_index=1)
    b = repo.create_job(session, spec=SPEC, name="b", epochs_total=3, experiment_id=exp.id,
                        child_index=0)
    add_epochs(session, [a.id], range(3, 0, -1))
    add_epochs(session, [b.id], range(1, 2))
    got = repo.histories(session, job_ids=[a.id, b.id, "missing"])
    assert {k: [r.epoch for r in v] for k, v in got.items()} == {
        a.id: [1, 2, 3], b.id: [1], "missing": []}
    assert got[a.id][0].loss == METRICS["loss"]
    assert got[a.id][0].job_id == a.id
    since = repo.histories(session, job_ids=[a.id, b.id], since=1)
    assert [r.epoch for r in since[a.id]] == [2, 3]
    assert since[b.id] == []
    assert repo.histories(session, job_ids=[]) == {}
    kids = repo.children_of(session, experiment_ids=[exp.id, "none"])
    assert [j.id for j in kids[exp.id]] == [b.id, a.id]
    assert kids["none"] == []
