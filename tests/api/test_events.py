"""The job event stream (SSE) and conditional GETs (ETag / If-None-Match), on epochs and
statuses written through the repository as the worker writes them."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api import sse as events
from models.db import repository as repo
from tests.support.bodies import generated_body
from tests.support.epochs import store_epoch


@pytest.fixture(autouse=True)
def fast_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(events, "POLL_INTERVAL_S", 0.01)


def parse_sse(text: str) -> list[dict[str, Any]]:
    """The wire format, parsed by hand (the client has its own parser; this checks the bytes)."""
    out = []
    for block in text.split("\n\n"):
        fields: dict[str, Any] = {}
        for line in block.splitlines():
            if line.startswith(":"):
                continue
            name, _, value = line.partition(": ")
            fields[name] = json.loads(value) if name == "data" else value
        if fields:
            out.append(fields)
    return out


def _submit(client: TestClient) -> str:
    return str(client.post("/v1/jobs", json=generated_body()).json()["id"])


def _run(client: TestClient, job_id: str, epochs: int, *, status: str = "succeeded") -> None:
    with client.app.state.sessions() as session:  # type: ignore[attr-defined]
        assert repo.claim_job(session, job_id=job_id, worker="w", device="cpu")
        for epoch in range(1, epochs + 1):
            metrics = {"loss": 1.0 / epoch, "accuracy": 0.5,
                       "val_loss": math.nan if epoch == 2 else 0.9, "val_accuracy": 0.6,
                       "lr": 1e-3}
            store_epoch(session, job_id=job_id, epoch=epoch, metrics=metrics,
                              wall_time=0.1 * epoch)
        repo.finish_job(session, job_id=job_id, status=status,
                        error="boom" if status == "failed" else None)
        session.commit()


def test_finished_job_streams_every_epoch_then_done(client: TestClient) -> None:
    job_id = _submit(client)
    _run(client, job_id, 3)
    r = client.get(f"/v1/jobs/{job_id}/events")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    evs = parse_sse(r.text)
    assert [e["event"] for e in evs] == ["epoch", "epoch", "epoch", "status", "done"]
    assert [e.get("id") for e in evs[:3]] == ["1", "2", "3"]
    assert evs[0]["retry"] == str(events.RETRY_MS)
    first = evs[0]["data"]
    assert first["job_id"] == job_id
    assert first["epoch"] == 1
    assert first["loss"] == 1.0
    assert evs[1]["data"]["val_loss"] is None  # NaN is null on the wire too
    assert "NaN" not in r.text
    assert evs[3]["data"]["status"] == "succeeded"
    done = evs[4]["data"]
    assert done["id"] == job_id
    assert done["status"] == "succeeded"
    assert done["epoch"] == 3


def test_resume_after_last_event_id_header_or_query(client: TestClient) -> None:
    job_id = _submit(client)
    _run(client, job_id, 5, status="failed")
    by_header = parse_sse(client.get(f"/v1/jobs/{job_id}/events",
                                     headers={"Last-Event-ID": "3"}).text)
    assert [e["data"]["epoch"] for e in by_header if e["event"] == "epoch"] == [4, 5]
    assert by_header[-1]["event"] == "done"
    assert by_header[-1]["data"]["error"] == "boom"
    by_query = parse_sse(client.get(f"/v1/jobs/{job_id}/events",
                                    params={"last_event_id": "4"},
                                    headers={"Last-Event-ID": "1"}).text)
    assert [e["data"]["epoch"] for e in by_query if e["event"] == "epoch"] == [5]
    caught_up = parse_sse(client.get(f"/v1/jobs/{job_id}/events",
                                     headers={"Last-Event-ID": "5"}).text)
    assert [e["event"] for e in caught_up] == ["status", "done"]


def test_queued_job_reports_its_status_first(client: TestClient) -> None:
    job_id = _submit(client)
    poller = events.JobEvents(job_id)
    with client.app.state.sessions() as session:  # type: ignore[attr-defined]
        first = poller.poll(session)
        again = poller.poll(session)
    assert [e.event for e in first.events] == ["status"]
    assert not first.finished
    assert first.events[0].data["status"] == "queued"
    assert again.events == []  # nothing new: nothing sent twice


def test_stream_errors_before_it_starts(client: TestClient) -> None:
    assert client.get("/v1/jobs/nope/events").status_code == 404
    job_id = _submit(client)
    r = client.get(f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": "x"})
    assert r.status_code == 422
    assert "Last-Event-ID" in r.json()["detail"][0]


def test_deleted_job_ends_the_stream_with_an_error_event(client: TestClient) -> None:
    job_id = _submit(client)
    with client.app.state.sessions() as session:  # type: ignore[attr-defined]
        repo.delete_job(session, job_id=job_id)
        session.commit()
        result = events.JobEvents(job_id).poll(session)
    assert result.finished
    assert [e.event for e in result.events] == ["error"]


def test_job_and_history_answer_304_until_they_change(client: TestClient) -> None:
    job_id = _submit(client)
    for path in (f"/v1/jobs/{job_id}", f"/v1/jobs/{job_id}/history"):
        first = client.get(path)
        etag = first.headers["etag"]
        assert etag.startswith('W/"')
        same = client.get(path, headers={"If-None-Match": etag})
        assert same.status_code == 304
        assert same.content == b""
        assert same.headers["etag"] == etag
        assert client.get(path, headers={"If-None-Match": '"other", *'}).status_code == 304
        assert client.get(path, headers={"If-None-Match": '"other"'}).status_code == 200
    history_tag = client.get(f"/v1/jobs/{job_id}/history").headers["etag"]
    csv_tag = client.get(f"/v1/jobs/{job_id}/history", params={"format": "csv"}).headers["etag"]
    assert csv_tag != history_tag  # another representation, another tag
    job_tag = client.get(f"/v1/jobs/{job_id}").headers["etag"]
    _run(client, job_id, 2)
    changed = client.get(f"/v1/jobs/{job_id}", headers={"If-None-Match": job_tag})
    assert changed.status_code == 200
    assert changed.json()["epoch"] == 2
    changed = client.get(f"/v1/jobs/{job_id}/history", headers={"If-None-Match": history_tag})
    assert changed.status_code == 200
    assert changed.json()["epoch"] == [1, 2]
