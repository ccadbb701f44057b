"""History (JSON/CSV/since), curves PNG and the spec-only model summary, from epochs written
through the repository exactly as the worker writes them."""

from __future__ import annotations

import csv
import io
import math

from fastapi.testclient import TestClient

from models.spec import NOTEBOOK_BN_LAYERS
from tests.support.bodies import generated_body, notebook_body
from tests.support.epochs import store_epoch


def _record(client: TestClient, job_id: str, n: int) -> None:
    with client.app.state.sessions() as session:  # type: ignore[attr-defined]
        for epoch in range(1, n + 1):
            metrics = {"loss": 1.0 / epoch, "accuracy": 0.5 + epoch / 100,
                       "val_loss": math.nan if epoch == 2 else 1.1 / epoch,
                       "val_accuracy": 0.4 + epoch / 100, "lr": 1e-3}
            store_epoch(session, job_id=job_id, epoch=epoch, metrics=metrics,
                              wall_time=0.01 * epoch, extras={"notes": []})
        session.commit()


def test_history_json_csv_since(client: TestClient) -> None:
    job_id = client.post("/v1/jobs", json=generated_body()).json()["id"]
    assert client.get(f"/v1/jobs/{job_id}/history").json()["epoch"] == []
    _record(client, job_id, 3)
    h = client.get(f"/v1/jobs/{job_id}/history").json()
    assert h["epoch"] == [1, 2, 3]
    assert set(h) >= {"loss", "accuracy", "val_loss", "val_accuracy", "lr", "wall_time"}
    assert h["loss"] == [1.0, 0.5, 1.0 / 3]
    assert h["val_loss"][1] is None  # NaN -> null, and the body is strict JSON
    assert "NaN" not in client.get(f"/v1/jobs/{job_id}/history").text
    assert client.get(f"/v1/jobs/{job_id}").json()["epoch"] == 3
    assert client.get(f"/v1/jobs/{job_id}/history", params={"since": 2}).json()["epoch"] == [3]
    r = client.get(f"/v1/jobs/{job_id}/history", params={"format": "csv"})
    assert r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert [row["epoch"] for row in rows] == ["1", "2", "3"]
    assert rows[1]["val_loss"] == ""
    assert float(rows[0]["loss"]) == 1.0
    assert client.get(f"/v1/jobs/{job_id}/history", params={"since": -1}).status_code == 422


def test_curves_png_and_metric_validation(client: TestClient) -> None:
    ids = [client.post("/v1/jobs", json=generated_body()).json()["id"] for _ in range(2)]
    for job_id in ids:
        _record(client, job_id, 4)
    r = client.get(f"/v1/jobs/{ids[0]}/curves.png", params={"metrics": "val_accuracy,accuracy"})
    assert r.status_code == 200
    assert r.headers["content-type"] == "image/png"
    assert r.content.startswith(b"\x89PNG\r\n\x1a\n")
    r = client.get(f"/v1/jobs/{ids[0]}/curves.png", params={"metrics": "val_acc"})
    assert r.status_code == 422
    assert "val_accuracy" in r.json()["detail"][0]
    both = client.get("/v1/curves.png", params={"jobs": ",".join(ids),
                                                "metrics": "val_accuracy"})
    assert both.status_code == 200
    assert both.content.startswith(b"\x89PNG")
    assert client.get("/v1/curves.png", params={"jobs": "nope"}).status_code == 404


def test_model_summary_before_any_checkpoint(client: TestClient, dataset_id: str) -> None:
    job_id = client.post("/v1/jobs", json=notebook_body("bn", NOTEBOOK_BN_LAYERS,
                                                        dataset_id)).json()["id"]
    m = client.get(f"/v1/jobs/{job_id}/model").json()
    assert m["checkpoint"] is None
    assert m["batchnorm"] == []
    # the notebook's Keras summary: 40 total, 30 trainable, 10 non-trainable
    assert m["totals"] == {"total": 40, "trainable": 30, "non_trainable": 10}
    assert [la["type"] for la in m["layers"]] == [la["type"] for la in NOTEBOOK_BN_LAYERS]
    assert m["head"] == "sigmoid"
    assert m["classes"] == ["0", "1"]
    r = client.get(f"/v1/jobs/{job_id}/checkpoints/last")
    assert r.status_code == 404
    assert "no 'last' checkpoint yet" in r.json()["detail"]
    r = client.post(f"/v1/jobs/{job_id}/predict", json={"inputs": [[0.0, 0.0]]})
    assert r.status_code == 404
