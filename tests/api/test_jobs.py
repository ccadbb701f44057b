"""POST/GET/cancel/delete jobs against a real SQLite database and the filesystem broker."""

from __future__ import annotations

import tracemalloc

from fastapi.testclient import TestClient

from api.main import create_app
from api.settings import ApiSettings
from models.db import repository as repo
from models.queueing import TRAIN_TASK
from models.spec import NOTEBOOK_BN_LAYERS, NOTEBOOK_PLAIN_LAYERS
from tests.support.bodies import generated_body, notebook_body
from tests.support.broker import queued_messages


def test_notebook_bodies_accepted_as_written_and_enqueued(
        client: TestClient, settings: ApiSettings, dataset_id: str) -> None:
    ids = {}
    for name, layers in (("plain", NOTEBOOK_PLAIN_LAYERS), ("bn", NOTEBOOK_BN_LAYERS)):
        r = client.post("/v1/jobs", json=notebook_body(name, layers, dataset_id))
        assert r.status_code == 202, r.text
        job = r.json()
        assert r.headers["location"] == f"/v1/jobs/{job['id']}"
        assert job["status"] == "queued"
        assert job["queue"] == "cpu"
        assert job["epoch"] == 0
        assert job["epochs"] == 200
        assert job["dataset_id"] == dataset_id
        # stored normalised: defaults filled in, the layers as given
        assert job["spec"]["training"]["optimizer"]["betas"] == [0.9, 0.999]
        assert [la["type"] for la in job["spec"]["network"]["layers"]] == \
            [la["type"] for la in layers]
        ids[name] = job["id"]
    plain, bn = (client.get(f"/v1/jobs/{ids[n]}").json() for n in ("plain", "bn"))
    assert plain["warnings"] == []
    assert any("directly before the output layer" in w for w in bn["warnings"])
    messages = queued_messages(settings, "cpu")
    assert [(m["task"], m["args"]) for m in messages] == [
        (TRAIN_TASK, [ids["plain"]]), (TRAIN_TASK, [ids["bn"]])]


def test_generated_dataset_and_device_routing(client: TestClient, settings: ApiSettings) -> None:
    r = client.post("/v1/jobs", json={**generated_body(), "device": "cuda:0"})
    assert r.status_code == 202, r.text
    assert r.json()["queue"] == "gpu"
    assert queued_messages(settings, "gpu")[0]["args"] == [r.json()["id"]]
    # auto with no live GPU worker goes to the CPU queue, with one to the GPU queue
    r = client.post("/v1/jobs", json=generated_body())
    assert r.json()["queue"] == "cpu"
    with client.app.state.sessions() as session:  # type: ignore[attr-defined]
        # a CPU-only worker on the gpu queue (the embedded worker) does not count
        repo.beat_worker(session, name="embedded", queues=["cpu", "gpu"], device="cpu")
        session.commit()
    assert client.post("/v1/jobs", json=generated_body()).json()["queue"] == "cpu"
    with client.app.state.sessions() as session:  # type: ignore[attr-defined]
        repo.beat_worker(session, name="gpu-worker-0", queues=["gpu"], device="cuda:0")
        session.commit()
    assert client.post("/v1/jobs", json=generated_body()).json()["queue"] == "gpu"
    assert client.post("/v1/jobs", json={**generated_body(), "device": "cpu"}).json()[
        "queue"] == "cpu"


def _detail(r) -> list[str]:  # type: ignore[no-untyped-def]
    body = r.json()
    assert set(body) == {"error", "detail"}
    assert "Traceback" not in r.text
    return body["detail"] if isinstance(body["detail"], list) else [body["detail"]]


def test_bad_specs_are_422_with_actionable_messages(client: TestClient,
                                                    settings: ApiSettings) -> None:
    body = generated_body()
    body["network"] = {"layers": [{"type": "conv2d", "filters": 4}, {"type": "dense", "units": 1,
                                                                      "activation": "sigmoid"}]}
    r = client.post("/v1/jobs", json=body)
    assert r.status_code == 422
    assert r.json()["error"] == "SpecError"
    assert any("conv2d layer 0 needs an image input" in m for m in _detail(r))

    body["network"] = {"layers": [{"type": "dense", "units": 1, "activation": "softmax"}]}
    r = client.post("/v1/jobs", json=body)
    assert r.status_code == 422
    assert any("use 'sigmoid'" in m for m in _detail(r))

    body["network"] = {"layers": [{"type": "dense", "units": 10**9, "activation": "relu"},
                                  {"type": "dense", "units": 1, "activation": "sigmoid"}]}
    tracemalloc.start()
    try:
        r = client.post("/v1/jobs", json=body)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * 2**20, peak  # refused by arithmetic: nothing sized by the layer built
    assert r.status_code == 422
    assert any("the limit is 65536 units" in m for m in _detail(r))

    # structural errors (pydantic) are 422 too, one readable line each, naming the field
    body["network"] = {"layers": [{"type": "dense", "units": 0}]}
    r = client.post("/v1/jobs", json=body)
    assert r.status_code == 422
    assert r.json()["error"] == "ValidationError"
    assert any("units" in m and "greater than or equal to 1" in m for m in _detail(r))
    assert queued_messages(settings, "cpu") == []  # nothing was enqueued


def test_unknown_dataset_and_job_ids(client: TestClient) -> None:
    body = notebook_body("plain", NOTEBOOK_PLAIN_LAYERS, "nope")
    r = client.post("/v1/jobs", json=body)
    assert r.status_code == 422
    assert "upload it with POST /v1/datasets" in _detail(r)[0]
    for path in ("/v1/jobs/nope", "/v1/jobs/nope/history", "/v1/jobs/nope/curves.png",
                 "/v1/jobs/nope/model", "/v1/jobs/nope/checkpoints", "/v1/datasets/nope",
                 "/v1/datasets/nope/scatter.png", "/v1/jobs/no.such.id!"):
        r = client.get(path)
        assert r.status_code == 404, path
        assert r.json()["error"] == "NotFound"
        assert "GET /v1/" in r.json()["detail"]  # says where to find valid ids
    assert client.post("/v1/jobs/nope/cancel").status_code == 404
    assert client.delete("/v1/jobs/nope").status_code == 404


def test_list_newest_first_with_cursor_and_status_filter(client: TestClient) -> None:
    ids = [client.post("/v1/jobs", json=generated_body()).json()["id"] for _ in range(5)]
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, str | int] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = client.get("/v1/jobs", params=params).json()
        assert len(page["items"]) <= 2
        seen += [j["id"] for j in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids[::-1]
    client.post(f"/v1/jobs/{ids[0]}/cancel")
    cancelled = client.get("/v1/jobs", params={"status": "cancelled"}).json()["items"]
    assert [j["id"] for j in cancelled] == [ids[0]]
    assert client.get("/v1/jobs", params={"status": "bogus"}).status_code == 422


def test_running_job_cancel_requested_and_delete_refused(client: TestClient) -> None:
    job_id = client.post("/v1/jobs", json=generated_body()).json()["id"]
    with client.app.state.sessions() as session:  # type: ignore[attr-defined]
        assert repo.claim_job(session, job_id=job_id, worker="w1", device="cpu")
        session.commit()
    r = client.delete(f"/v1/jobs/{job_id}")
    assert r.status_code == 409
    assert "cancel it first" in r.json()["detail"]
    r = client.post(f"/v1/jobs/{job_id}/cancel")
    assert r.json()["status"] == "running"
    assert r.json()["cancel_requested"] is True


def test_idempotency_key(client: TestClient, settings: ApiSettings) -> None:
    headers = {"Idempotency-Key": "k-1"}
    first = client.post("/v1/jobs", json=generated_body(), headers=headers)
    again = client.post("/v1/jobs", json=generated_body(), headers=headers)
    assert (first.status_code, again.status_code) == (202, 200)
    assert again.json()["id"] == first.json()["id"]
    assert len(queued_messages(settings, "cpu")) == 1  # enqueued once
    other = client.post("/v1/jobs", json=generated_body(epochs=5), headers=headers)
    assert other.status_code == 409
    assert "different body" in other.json()["detail"]


def test_cancel_then_delete(client: TestClient) -> None:
    job_id = client.post("/v1/jobs", json=generated_body()).json()["id"]
    r = client.post(f"/v1/jobs/{job_id}/cancel")
    assert r.status_code == 200
    assert r.json()["status"] == "cancelled"
    assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 409
    assert client.delete(f"/v1/jobs/{job_id}").status_code == 204
    assert client.get(f"/v1/jobs/{job_id}").status_code == 404


def test_openapi_has_the_notebook_examples(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    examples = spec["paths"]["/v1/jobs"]["post"]["requestBody"]["content"][
        "application/json"]["examples"]
    assert examples["bn"]["value"]["network"]["layers"] == NOTEBOOK_BN_LAYERS
    assert examples["plain"]["value"]["network"]["layers"] == NOTEBOOK_PLAIN_LAYERS
    assert client.get("/docs").status_code == 200


def test_broker_down_stores_nothing(settings: ApiSettings) -> None:
    down = settings.model_copy(update={"broker_url": "redis://127.0.0.1:1/0",
                                       "database_url": settings.sqlalchemy_url})
    with TestClient(create_app(down)) as client:
        r = client.post("/v1/jobs", json=generated_body())
        assert r.status_code == 503
        assert r.json()["error"] == "NotReady"
        assert client.get("/v1/jobs").json()["items"] == []


def test_tail_split_of_sorted_labels_warns_at_submission(client: TestClient) -> None:
    # Rows sorted by class: Keras's tail split validates on class 'b' alone.
    rows = [f"{i * 0.1},{(i % 7) * 0.3},{'a' if i < 40 else 'b'}" for i in range(50)]
    csv = ("x,y,label\n" + "\n".join(rows) + "\n").encode()
    r = client.post("/v1/datasets", files={"file": ("sorted.csv", csv, "text/csv")})
    assert r.status_code == 201, r.text
    body = {"dataset": {"id": r.json()["id"]}, "network": {"layers": NOTEBOOK_PLAIN_LAYERS},
            "training": {"epochs": 1, "validation_split": 0.2, "split": "tail"}}
    tail = client.post("/v1/jobs", json=body)
    assert tail.status_code == 202, tail.text
    assert any("validation rows all hold class 'b'" in w for w in tail.json()["warnings"])
    body["training"]["split"] = "stratified"
    stratified = client.post("/v1/jobs", json=body).json()
    assert not any("validation rows" in w for w in stratified["warnings"])
