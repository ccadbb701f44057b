"""Decision boundary and BN series over HTTP (TestClient on a migrated SQLite file); jobs are
trained by the worker's own run_job, in this process, on the same database."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from models.spec import NOTEBOOK_BN_LAYERS
from tests.support.bodies import notebook_body
from worker.training_run import RunContext, run_job

CIRCLES = {"name": "concentric_circles", "n_samples": 300, "noise": 0.05, "factor": 0.4}


def submit(client: TestClient, body: dict[str, Any]) -> str:
    r = client.post("/v1/jobs", json=body)
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


def trained(client: TestClient, ctx: RunContext, body: dict[str, Any]) -> str:
    job_id = submit(client, body)
    assert run_job(job_id, ctx) == "succeeded"
    return job_id


def job_body(dataset: dict[str, Any], epochs: int, batchnorm: str = "after_activation",
             hidden: list[int] | None = None, **training: Any) -> dict[str, Any]:
    return {"name": "vis", "dataset": dataset,
            "network": {"hidden": hidden or [16, 16], "batchnorm": batchnorm},
            "training": {"epochs": epochs, "batch_size": 32, "validation_split": 0.2,
                         "split": "random", "seed": 3,
                         "optimizer": {"name": "adam", "lr": 0.01}, **training}}


@pytest.fixture
def circles_job(client: TestClient, ctx: RunContext) -> str:
    return trained(client, ctx, job_body(CIRCLES, epochs=30))


def test_boundary_of_a_trained_circles_job(client: TestClient, circles_job: str) -> None:
    job = client.get(f"/v1/jobs/{circles_job}").json()
    assert job["final_metrics"]["val_accuracy"] >= 0.9  # the premise of "it separates"
    r = client.get(f"/v1/jobs/{circles_job}/boundary", params={"resolution": 21})
    assert r.status_code == 200, r.text
    b = r.json()
    assert b["checkpoint"]["kind"] == "last"
    assert b["checkpoint"]["epoch"] == 30
    assert b["features"] == ["x", "y"]
    assert b["classes"] == ["0", "1"]
    xs, ys = np.array(b["x"]), np.array(b["y"])
    assert len(xs) == len(ys) == 21
    assert np.all(np.diff(xs) > 0)
    assert np.all(np.diff(ys) > 0)
    p = np.array(b["probabilities"], dtype=float)
    assert p.shape == (21, 21)
    assert p.min() >= 0.0
    assert p.max() <= 1.0
    assert np.array(b["predicted"]).shape == (21, 21)
    conf = np.array(b["confidence"], dtype=float)
    assert np.allclose(conf, np.maximum(p, 1 - p), atol=1e-4)
    assert np.array_equal(np.array(b["predicted"]), (p > 0.5).astype(int))

    # The box is the data's (+10%): every point lies inside it, and the padding is there.
    pts = b["points"]
    px, py = np.array(pts["x"]), np.array(pts["y"])
    assert len(px) == len(py) == len(pts["label"]) == len(pts["split"]) == 300
    assert pts["split"].count("val") == 60
    assert set(pts["split"]) == {"train", "val"}
    assert xs[0] < px.min() < px.max() < xs[-1]
    assert ys[0] < py.min() < py.max() < ys[-1]
    assert np.isclose(px.min() - xs[0], 0.1 * (px.max() - px.min()))

    # It separates: inner circle (class 1) at the centre, outer class in the corners, and the
    # grid cell nearest each point mostly predicts the point's label.
    assert b["predicted"][10][10] == 1
    assert {b["predicted"][i][j] for i in (0, 20) for j in (0, 20)} == {0}
    col = np.abs(px[:, None] - xs[None, :]).argmin(1)
    row = np.abs(py[:, None] - ys[None, :]).argmin(1)
    cell = np.array(b["predicted"])[row, col]
    assert (cell == np.array(pts["label"])).mean() >= 0.85

    # The grid agrees with /predict on the same coordinates (rows are y, columns are x).
    cells = [(i, j) for i in range(0, 21, 3) for j in range(0, 21, 2)][:100]
    inputs = [[b["x"][j], b["y"][i]] for i, j in cells]
    pr = client.post(f"/v1/jobs/{circles_job}/predict", json={"inputs": inputs})
    assert pr.status_code == 200, pr.text
    served = np.array(pr.json()["probabilities"])[:, 1]
    assert np.allclose(served, [p[i, j] for i, j in cells], atol=1e-4)


def test_boundary_checkpoint_etag_and_parameters(client: TestClient, circles_job: str) -> None:
    url = f"/v1/jobs/{circles_job}/boundary"
    best = client.get(url, params={"checkpoint": "best", "resolution": 10})
    assert best.status_code == 200
    assert best.json()["checkpoint"]["kind"] == "best"
    assert len(best.json()["x"]) == 10
    listed = {c["kind"]: c for c in client.get(f"/v1/jobs/{circles_job}/checkpoints").json()}
    assert best.json()["checkpoint"]["sha256"] == listed["best"]["sha256"]
    etag = best.headers["ETag"]
    again = client.get(url, params={"checkpoint": "best", "resolution": 10},
                       headers={"If-None-Match": etag})
    assert again.status_code == 304
    assert again.headers["ETag"] == etag
    other = client.get(url, params={"checkpoint": "best", "resolution": 11},
                       headers={"If-None-Match": etag})
    assert other.status_code == 200
    assert other.headers["ETag"] != etag
    for bad in ({"resolution": 9}, {"resolution": 201}, {"checkpoint": "first"}):
        assert client.get(url, params=bad).status_code == 422, bad


def test_boundary_multiclass_and_subsampled_points(client: TestClient, ctx: RunContext) -> None:
    blobs = {"name": "blobs", "n_samples": 2500, "n_classes": 3, "n_features": 2}
    job_id = trained(client, ctx, job_body(blobs, epochs=2, batchnorm="none", hidden=[4]))
    url = f"/v1/jobs/{job_id}/boundary"
    b = client.get(url, params={"resolution": 12}).json()
    assert "probabilities" not in b
    assert b["classes"] == ["0", "1", "2"]
    predicted, conf = np.array(b["predicted"]), np.array(b["confidence"], dtype=float)
    assert predicted.shape == conf.shape == (12, 12)
    assert set(np.unique(predicted)) <= {0, 1, 2}
    assert conf.min() >= 1 / 3 - 1e-4
    assert conf.max() <= 1.0
    pts = b["points"]
    assert len(pts["x"]) == len(pts["label"]) == 2000  # capped, and the same rows each time
    assert client.get(url, params={"resolution": 12}).json()["points"] == pts
    assert set(pts["label"]) == {0, 1, 2}


def test_boundary_of_an_uploaded_dataset_uses_its_split(client: TestClient, ctx: RunContext,
                                                      dataset_id: str) -> None:
    body = notebook_body("bn", NOTEBOOK_BN_LAYERS, dataset_id)
    body["training"]["epochs"] = 2
    job_id = trained(client, ctx, body)
    b = client.get(f"/v1/jobs/{job_id}/boundary", params={"resolution": 10}).json()
    assert b["features"] == ["X", "Y"]
    assert b["points"]["split"] == ["train"] * 399 + ["val"] * 100  # Keras's tail split
    p = np.array(b["probabilities"], dtype=float)
    assert p.shape == (10, 10)
    assert p.min() >= 0.0
    assert p.max() <= 1.0


def test_boundary_refusals(client: TestClient) -> None:
    three_d = {"name": "blobs", "n_samples": 100, "n_classes": 2, "n_features": 3}
    job_id = submit(client, job_body(three_d, epochs=1))
    r = client.get(f"/v1/jobs/{job_id}/boundary")
    assert r.status_code == 422
    assert r.json()["detail"] == ["the decision boundary needs 2 features; this dataset has 3"]
    queued = submit(client, job_body(CIRCLES, epochs=1))
    r = client.get(f"/v1/jobs/{queued}/boundary")
    assert r.status_code == 404
    assert "no 'last' checkpoint yet" in r.json()["detail"]
    assert client.get("/v1/jobs/nope/boundary").status_code == 404
    assert client.get("/v1/jobs/nope/bn").status_code == 404


def test_bn_series_per_layer_and_epoch(client: TestClient, ctx: RunContext) -> None:
    job_id = trained(client, ctx, job_body(CIRCLES, epochs=4, hidden=[3, 2]))
    r = client.get(f"/v1/jobs/{job_id}/bn")
    assert r.status_code == 200
    layers = r.json()["layers"]
    assert len(layers) == 2
    assert len({la["name"] for la in layers}) == 2
    assert all(la["name"].startswith("batch") for la in layers)
    for layer in layers:
        assert layer["epochs"] == [1, 2, 3, 4]
        for stat in ("running_mean", "running_var", "gamma", "beta"):
            s = layer[stat]
            assert len(s["mean"]) == len(s["min"]) == len(s["max"]) == 4, stat
            assert all(lo <= m <= hi for lo, m, hi in zip(s["min"], s["mean"], s["max"],
                                                          strict=True))
        assert min(layer["running_var"]["min"]) >= 0.0
        assert layer["running_mean"]["mean"][0] != layer["running_mean"]["mean"][-1]
    # A different module index per layer, in network order.
    assert layers[0]["module"] < layers[1]["module"]
    etag = r.headers["ETag"]
    again = client.get(f"/v1/jobs/{job_id}/bn", headers={"If-None-Match": etag})
    assert again.status_code == 304


def test_bn_without_affine_and_without_bn(client: TestClient, ctx: RunContext) -> None:
    plain = trained(client, ctx, job_body(CIRCLES, epochs=2, batchnorm="none", hidden=[3]))
    assert client.get(f"/v1/jobs/{plain}/bn").json() == {"layers": []}
    layers = [{"type": "dense", "units": 3}, {"type": "batchnorm", "affine": False},
              {"type": "activation", "activation": "relu"}, {"type": "dense", "units": 1}]
    body = job_body(CIRCLES, epochs=2)
    body["network"] = {"layers": layers}
    no_affine = trained(client, ctx, body)
    (layer,) = client.get(f"/v1/jobs/{no_affine}/bn").json()["layers"]
    assert layer["gamma"] is None
    assert layer["beta"] is None
    assert len(layer["running_var"]["mean"]) == 2
