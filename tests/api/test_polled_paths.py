"""What pollers hit most (status, history, the event stream) answers from caches and shared
polls without serving anything stale."""

from __future__ import annotations

import math
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api import sse as events
from models.db import repository as repo
from tests.support.bodies import generated_body
from tests.support.epochs import store_epoch


def _submit(client: TestClient) -> str:
    return str(client.post("/v1/jobs", json=generated_body()).json()["id"])


def _epochs(client: TestClient, job_id: str, epochs: range, *,
            extras: dict[str, Any] | None = None) -> None:
    with client.app.state.sessions() as session:  # type: ignore[attr-defined]
        repo.claim_job(session, job_id=job_id, worker="w", device="cpu")
        for epoch in epochs:
            store_epoch(session, job_id=job_id, epoch=epoch,
                              metrics={"loss": 1.0 / epoch, "accuracy": 0.5},
                              wall_time=0.01, extras=extras)
        session.commit()


def test_history_is_served_again_from_cache_until_an_epoch_lands(client: TestClient) -> None:
    job_id = _submit(client)
    _epochs(client, job_id, range(1, 4))
    first = client.get(f"/v1/jobs/{job_id}/history")
    again = client.get(f"/v1/jobs/{job_id}/history")
    assert first.status_code == again.status_code == 200
    assert again.content == first.content
    assert again.headers["etag"] == first.headers["etag"]
    assert first.json()["epoch"] == [1, 2, 3]
    assert len(client.app.state.history_cache._items) == 1  # type: ignore[attr-defined]

    _epochs(client, job_id, range(4, 5))
    fresh = client.get(f"/v1/jobs/{job_id}/history")
    assert fresh.json()["epoch"] == [1, 2, 3, 4]  # a new tag: never the cached body
    assert fresh.headers["etag"] != first.headers["etag"]
    assert client.get(f"/v1/jobs/{job_id}/history", params={"since": 2}).json()["epoch"] == \
        [3, 4]


def test_history_reads_train_mode_series_out_of_extras(client: TestClient) -> None:
    job_id = _submit(client)
    _epochs(client, job_id, range(1, 3), extras={
        "train_mode_val_loss": math.nan, "train_mode_val_accuracy": 0.25,
        "bn": [{"running_mean": [0.1, 0.2]}]})
    h = client.get(f"/v1/jobs/{job_id}/history").json()
    assert h["train_mode_val_loss"] == [None, None]  # NaN is null
    assert h["train_mode_val_accuracy"] == [0.25, 0.25]
    assert "bn" not in h
    plain = _submit(client)
    _epochs(client, plain, range(1, 3))
    assert "train_mode_val_loss" not in client.get(f"/v1/jobs/{plain}/history").json()


def test_status_body_is_the_job_schema(client: TestClient) -> None:
    job_id = _submit(client)
    r = client.get(f"/v1/jobs/{job_id}")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert body["id"] == job_id
    assert body["status"] == "queued"
    assert body["epochs"] == 3
    assert body["spec"]["training"]["epochs"] == 3
    assert isinstance(body["warnings"], list)
    assert client.get("/v1/jobs/nope").status_code == 404


def test_streams_of_one_job_share_one_database_poll(client: TestClient,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(events, "POLL_INTERVAL_S", 60.0)
    job_id = _submit(client)
    _epochs(client, job_id, range(1, 4))
    reads: list[str] = []
    real_get_job = repo.get_job

    def counting_get_job(*args: Any, **kwargs: Any) -> Any:
        reads.append(kwargs["job_id"])
        return real_get_job(*args, **kwargs)

    monkeypatch.setattr(repo, "get_job", counting_get_job)
    sessions = client.app.state.sessions  # type: ignore[attr-defined]
    with events.shared_feed(sessions, job_id) as feed, \
            events.shared_feed(sessions, job_id) as same:
        assert feed is same
        streams = [events.JobEvents(job_id, feed=feed), events.JobEvents(job_id, last_epoch=2,
                                                                           feed=feed)]
        with sessions() as session:
            polls = [s.poll(session) for s in streams]
    assert reads == [job_id]  # one poll for both streams
    assert [[e.id for e in p.events if e.event == "epoch"] for p in polls] == \
        [["1", "2", "3"], ["3"]]
    with events.shared_feed(sessions, job_id) as later:
        assert later is not feed  # the last stream closed: the feed went with it


def test_a_feed_sees_epochs_rewritten_after_a_resume(client: TestClient,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(events, "POLL_INTERVAL_S", 0.0)
    job_id = _submit(client)
    _epochs(client, job_id, range(1, 5))
    feed = events.JobFeed(job_id)
    sessions = client.app.state.sessions  # type: ignore[attr-defined]
    with sessions() as session:
        _, first = feed.read(session, 0)
        repo.truncate_after(session, job_id=job_id, epoch=2)  # a lost attempt's epochs go
        session.commit()
        store_epoch(session, job_id=job_id, epoch=3, metrics={"loss": 9.0})
        session.commit()
        _, after = feed.read(session, 0)
    assert [e.id for e in first] == ["1", "2", "3", "4"]
    assert [e.id for e in after] == ["1", "2", "3"]
    assert '"loss":9.0' in (after[2].raw_data or "")
