"""The client against the real app in-process (SQLite, filesystem broker; no worker): the
server's shapes parse, events and the polling fallback report the same epochs."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from api import sse as server_events
from bnlab import Client, DoneEvent, EpochEvent, Event, NotFound, StatusEvent, ValidationError
from bnlab import _calls as calls
from bnlab.types import job_done
from models.db import repository as repo
from tests.support.bodies import generated_body
from tests.support.epochs import store_epoch


@pytest.fixture
def bn(app_client: TestClient, monkeypatch: pytest.MonkeyPatch) -> Iterator[Client]:
    monkeypatch.setattr(server_events, "POLL_INTERVAL_S", 0.01)
    with Client(http_client=app_client) as c:
        yield c


def _train(app_client: TestClient, job_id: str, epochs: int) -> None:
    """What a worker writes, through the repository."""
    with app_client.app.state.sessions() as session:  # type: ignore[attr-defined]
        assert repo.claim_job(session, job_id=job_id, worker="w", device="cpu")
        for epoch in range(1, epochs + 1):
            store_epoch(session, job_id=job_id, epoch=epoch, metrics={
                "loss": 1.0 / epoch, "accuracy": 0.5, "val_loss": math.nan,
                "val_accuracy": 0.25 * epoch, "lr": 1e-3})
        repo.finish_job(session, job_id=job_id, status="succeeded")
        session.commit()


def test_upload_create_list_history(bn: Client, app_client: TestClient,
                                    notebook_csv: bytes) -> None:
    ds = bn.datasets.upload(notebook_csv, filename="concertriccir2.csv")
    assert ds.n_rows == 499
    assert ds.feature_columns == ["X", "Y"]
    assert bn.datasets.get(ds.id).sha256 == ds.sha256
    job = bn.jobs.create({"dataset": {"id": ds.id}, "network": {"hidden": [3]},
                          "training": {"epochs": 4}})
    assert job.status == "queued"
    assert job.epochs == 4
    assert job.dataset_id == ds.id
    second = bn.jobs.create(generated_body())
    assert [j.id for j in bn.jobs.list(page_size=1)][:2] == [second.id, job.id]  # paged
    assert [j.id for j in bn.jobs.list(limit=1)] == [second.id]
    _train(app_client, job.id, 4)
    h = job.history()
    assert h["epoch"] == [1, 2, 3, 4]
    assert h["val_loss"] == [None] * 4
    assert job.refresh().status == "succeeded"
    assert job.epoch == 4
    assert bn.jobs.history_csv(job.id).startswith("epoch,loss")
    with pytest.raises(NotFound):
        bn.jobs.get("nope")
    with pytest.raises(ValidationError) as info:
        bn.jobs.create({"dataset": {"name": "xor"}, "network": {"hidden": [2]},
                        "training": {"epochs": 0}})
    assert any("epochs" in m for m in info.value.messages)


def test_events_and_polling_report_the_same_epochs(bn: Client, app_client: TestClient) -> None:
    job = bn.jobs.create(generated_body())
    _train(app_client, job.id, 3)
    streamed = list(bn.jobs.events(job.id))
    assert [type(e) for e in streamed] == [EpochEvent] * 3 + [StatusEvent, DoneEvent]
    assert [e.epoch for e in streamed if isinstance(e, EpochEvent)] == [1, 2, 3]
    resumed = [e for e in bn.jobs.events(job.id, last_event_id="2") if isinstance(e, EpochEvent)]
    assert [e.epoch for e in resumed] == [3]
    assert resumed[0].metrics["val_accuracy"] == 0.75

    seen: list[Event] = []
    finished = bn.jobs.wait(job.id, progress=seen.append)
    assert finished.status == "succeeded"
    assert seen[-1] == streamed[-1]
    polled: list[Event] = []  # the fallback when a server has no event stream
    data = bn._poll(calls.get_job(job.id), polled.append, None, None, 0.0, job_done, job.id)
    assert data["id"] == job.id
    assert data["status"] == "succeeded"
    assert [e.epoch for e in polled if isinstance(e, EpochEvent)] == [1, 2, 3]
    assert isinstance(polled[0], StatusEvent)
    assert isinstance(polled[-1], DoneEvent)
