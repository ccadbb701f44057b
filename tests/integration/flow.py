"""The notebook, through the HTTP API: upload, two jobs, wait, read everything back."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from typing import Any

import httpx
from safetensors.torch import load as load_safetensors

from devtools.poll import poll_until
from models.spec import NOTEBOOK_BN_LAYERS, NOTEBOOK_PLAIN_LAYERS

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TERMINAL = {"succeeded", "failed", "cancelled"}


def notebook_job(name: str, dataset_id: str, *, epochs: int) -> dict[str, Any]:
    """The issue's two bodies exactly, with fewer epochs."""
    layers = NOTEBOOK_PLAIN_LAYERS if name == "plain" else NOTEBOOK_BN_LAYERS
    return {"name": name, "dataset": {"id": dataset_id}, "network": {"layers": layers},
            "training": {"epochs": epochs, "batch_size": 32,
                         "optimizer": {"name": "adam", "lr": 0.001},
                         "validation_split": 0.2, "split": "tail", "seed": 1}}


def upload(client: httpx.Client, content: bytes) -> str:
    r = client.post("/v1/datasets", files={"file": ("concertriccir2.csv", content, "text/csv")})
    assert r.status_code in (200, 201), r.text
    body = r.json()
    assert body["n_rows"] == 499, body
    assert body["n_features"] == 2, body
    return str(body["id"])


def submit(client: httpx.Client, body: dict[str, Any]) -> str:
    r = client.post("/v1/jobs", json=body)
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


def wait_done(client: httpx.Client, job_ids: list[str], *, timeout: float = 300.0,
              logs: Callable[[], str] = str) -> dict[str, dict[str, Any]]:
    return poll_until(
        lambda: {j: client.get(f"/v1/jobs/{j}").json() for j in job_ids},
        lambda jobs: all(job["status"] in TERMINAL for job in jobs.values()),
        what="finish of every job", timeout=timeout, interval=0.5,
        describe=lambda jobs: f"{ {j: (v['status'], v['epoch']) for j, v in jobs.items()} }\n"
                              f"{logs()}")


def check_history(client: httpx.Client, job_id: str, epochs: int) -> dict[str, list[Any]]:
    r = client.get(f"/v1/jobs/{job_id}/history")
    assert r.status_code == 200, r.text
    h = r.json()
    assert h["epoch"] == list(range(1, epochs + 1))
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert len(h[key]) == epochs, (key, h[key])
    for key in ("accuracy", "val_accuracy"):
        assert all(0.0 <= v <= 1.0 for v in h[key]), (key, h[key])
    assert all(v >= 0.0 for v in h["loss"] + h["val_loss"])
    return dict(h)


def notebook_rows(content: bytes) -> list[list[float]]:
    reader = csv.DictReader(io.StringIO(content.decode()))
    return [[float(row["X"]), float(row["Y"])] for row in reader]


def check_job_outputs(client: httpx.Client, job_id: str, *, params: tuple[int, int, int],
                      rows: list[list[float]]) -> None:
    png = client.get(f"/v1/jobs/{job_id}/curves.png", params={"metrics": "val_accuracy,accuracy"})
    assert png.status_code == 200, png.text[:200]
    assert png.content.startswith(PNG_MAGIC), png.text[:200]

    model = client.get(f"/v1/jobs/{job_id}/model").json()
    total, trainable, non_trainable = params
    assert model["totals"] == {"total": total, "trainable": trainable,
                               "non_trainable": non_trainable}, model
    assert model["checkpoint"]["kind"] == "best", model

    ckpt = client.get(f"/v1/jobs/{job_id}/checkpoints/best")
    assert ckpt.status_code == 200, ckpt.text[:200]
    tensors = load_safetensors(ckpt.content)
    assert any(name.startswith("model.") for name in tensors), sorted(tensors)

    batch = rows[:40]
    together = client.post(f"/v1/jobs/{job_id}/predict",
                           json={"inputs": batch, "checkpoint": "best"})
    assert together.status_code == 200, together.text
    probs = together.json()["probabilities"]
    assert len(probs) == len(batch)
    for i in (0, 7, 39):
        alone = client.post(f"/v1/jobs/{job_id}/predict",
                            json={"inputs": [batch[i]], "checkpoint": "best"}).json()
        # eval mode: running statistics, so the batch around a row changes nothing
        assert alone["probabilities"][0] == probs[i], (i, alone, probs[i])


def notebook_flow(client: httpx.Client, content: bytes, *, epochs: int = 5,
                  logs: Callable[[], str] = str) -> dict[str, dict[str, Any]]:
    dataset_id = upload(client, content)
    ids = {name: submit(client, notebook_job(name, dataset_id, epochs=epochs))
           for name in ("plain", "bn")}
    jobs = wait_done(client, list(ids.values()), logs=logs)
    for name, job_id in ids.items():
        job = jobs[job_id]
        assert job["status"] == "succeeded", (name, job, logs())
        assert job["epoch"] == epochs, job
        assert job["worker"], job
    rows = notebook_rows(content)
    for name, params in (("plain", (15, 15, 0)), ("bn", (40, 30, 10))):
        check_history(client, ids[name], epochs)
        check_job_outputs(client, ids[name], params=params, rows=rows)
    return {name: jobs[job_id] for name, job_id in ids.items()}


def wait_experiment(client: httpx.Client, exp_id: str, *, timeout: float = 300.0,
                    logs: Callable[[], str] = str) -> dict[str, Any]:
    body: dict[str, Any] = poll_until(
        lambda: client.get(f"/v1/experiments/{exp_id}").json(),
        lambda body: body["status"] in TERMINAL, what="finished experiment", timeout=timeout,
        interval=0.5, describe=lambda body: f"{body.get('counts')}\n{logs()}")
    return body


def experiment_flow(client: httpx.Client, content: bytes, *, seeds: int, epochs: int,
                    logs: Callable[[], str] = str) -> dict[str, Any]:
    """The notebook's question as one experiment: plain vs BN, `seeds` seeds each."""
    dataset_id = upload(client, content)
    base = notebook_job("plain", dataset_id, epochs=epochs)
    del base["network"], base["name"], base["training"]["seed"]
    body = {"name": "notebook", "base": base, "seeds": seeds,
            "variants": [{"name": "plain", "network": {"layers": NOTEBOOK_PLAIN_LAYERS}},
                         {"name": "bn", "network": {"layers": NOTEBOOK_BN_LAYERS}}]}
    r = client.post("/v1/experiments", json=body, headers={"Idempotency-Key": "flow"})
    assert r.status_code == 202, r.text
    exp = wait_experiment(client, r.json()["id"], logs=logs)
    assert exp["status"] == "succeeded", (exp, logs())
    assert exp["counts"]["succeeded"] == 2 * seeds
    for child in exp["children"]:
        check_history(client, child["job_id"], epochs)
    summary = client.get(f"/v1/experiments/{exp['id']}/summary").json()
    for variant in ("plain", "bn"):
        band = summary["per_variant"][variant]["metrics"]["val_accuracy"]
        assert band["n"] == [seeds] * epochs
        assert len(band["ci_low"]) == epochs
    (pair,) = [c for c in summary["comparisons"] if c["metric"] == "val_accuracy"]
    assert pair["n_pairs"] == seeds
    assert pair["final"]["mean_diff"] is not None
    png = client.get(f"/v1/experiments/{exp['id']}/curves.png")
    assert png.status_code == 200
    assert png.content.startswith(PNG_MAGIC)
    return exp
