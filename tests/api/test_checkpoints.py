"""Checkpoints and predict, from checkpoints made by actually training the notebook's BN network
(a few epochs) with the training core and stored through the repository, as the worker does."""

from __future__ import annotations

import io
from typing import Any

from fastapi.testclient import TestClient
from safetensors.torch import load

from models.db import repository as repo


def test_list_and_download(client: TestClient, trained: dict[str, Any]) -> None:
    job_id = trained["id"]
    listed = client.get(f"/v1/jobs/{job_id}/checkpoints").json()
    assert {c["kind"] for c in listed} == {"best", "last"}
    last = next(c for c in listed if c["kind"] == "last")
    assert last["epoch"] == 3
    assert last["url"] == f"/v1/jobs/{job_id}/checkpoints/last"
    r = client.get(last["url"])
    assert r.headers["content-type"] == "application/octet-stream"
    assert ".safetensors" in r.headers["content-disposition"]
    assert len(r.content) == last["size"]
    tensors = load(r.content)  # loads with safetensors, no pickle anywhere
    assert sum(k.startswith("model.") and k.endswith("running_mean") for k in tensors) == 2
    by_epoch = client.get(f"/v1/jobs/{job_id}/checkpoints/3")
    # best may hold epoch 3 too (same weights): either blob of that epoch is right
    assert by_epoch.status_code == 200
    assert by_epoch.headers["x-checkpoint-epoch"] == "3"
    assert by_epoch.content in {client.get(c["url"]).content for c in listed if c["epoch"] == 3}
    assert client.get(f"/v1/jobs/{job_id}/checkpoints/99").status_code == 404
    assert client.get(f"/v1/jobs/{job_id}/checkpoints/newest").status_code == 422


def test_model_report_from_checkpoint(client: TestClient, trained: dict[str, Any]) -> None:
    m = client.get(f"/v1/jobs/{trained['id']}/model").json()
    assert m["checkpoint"]["kind"] in ("best", "last")
    assert m["totals"] == {"total": 40, "trainable": 30, "non_trainable": 10}
    assert len(m["batchnorm"]) == 2
    assert len(m["batchnorm"][0]["running_mean"]) == 3  # BN after Dense(3)
    assert m["batchnorm"][0]["running_var"] != [1.0, 1.0, 1.0]  # it trained


def test_predict_eval_mode_and_cache(client: TestClient, trained: dict[str, Any]) -> None:
    job_id, rows = trained["id"], trained["rows"]
    url = f"/v1/jobs/{job_id}/predict"
    batch = client.post(url, json={"inputs": rows}).json()
    assert batch["class_names"] == ["0", "1"]
    assert len(batch["probabilities"]) == 5
    assert all(abs(sum(p) - 1.0) < 1e-6 for p in batch["probabilities"])
    assert batch["checkpoint"]["kind"] == "last"
    assert batch["checkpoint"]["epoch"] == 3
    alone = client.post(url, json={"inputs": rows[:1], "checkpoint": "last"}).json()
    assert alone["probabilities"][0] == batch["probabilities"][0]  # eval mode: no batch stats
    best = client.post(url, json={"inputs": rows[:1], "checkpoint": "best"})
    assert best.status_code == 200
    assert best.json()["checkpoint"]["kind"] == "best"

    # a newer checkpoint (different bytes) is picked up, not served from the cache
    with client.app.state.sessions() as session:  # type: ignore[attr-defined]
        older = repo.get_checkpoint(session, job_id=job_id, which="best")
        assert older is not None
        blob, epoch = bytes(older.content), older.epoch
        current = repo.get_checkpoint(session, job_id=job_id, which="last")
        assert current is not None
        assert current.sha256 != older.sha256
        repo.put_checkpoint(session, job_id=job_id, kind="last", epoch=epoch, content=blob)
        session.commit()
    again = client.post(url, json={"inputs": rows[:1]}).json()
    assert again["checkpoint"]["sha256"] == best.json()["checkpoint"]["sha256"]
    assert again["probabilities"] == best.json()["probabilities"]


def test_predict_refuses_bad_inputs(client: TestClient, trained: dict[str, Any]) -> None:
    url = f"/v1/jobs/{trained['id']}/predict"
    r = client.post(url, json={"inputs": [[1.0, 2.0, 3.0]]})
    assert r.status_code == 422
    assert "2 features" in r.json()["detail"][0]
    r = client.post(url, json={"inputs": [[0.0, 0.0]] * 101})  # max_predict_rows=100 in tests
    assert r.status_code == 413
    assert "max_predict_rows" in r.json()["detail"]
    r = client.post(url, json={"inputs": []})
    assert r.status_code == 422
    r = client.post(url, content=io.BytesIO(b'{"inputs": [[NaN, 1.0]]}').read(),
                    headers={"content-type": "application/json"})
    assert r.status_code == 422
    assert "Traceback" not in r.text
