"""GET /v1/jobs/{id}/validation (confusion matrix, accuracy, image tiles) and /bn's per-channel
values over HTTP, for image datasets and >2-feature tables; jobs are trained by the worker's own
run_job, in this process, on the same database (as tests/api/test_visuals.py does)."""

from __future__ import annotations

import io
import struct
import zlib
from base64 import b64decode
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from api.routes.visuals import _tile
from models.datasets import generate
from models.spec import DigitsDataset, JobSpec
from models.splits import split
from worker.training_run import RunContext, run_job

DIGITS = {"name": "digits"}
BLOBS4 = {"name": "blobs", "n_samples": 300, "n_features": 4, "n_classes": 3}


def submit(client: TestClient, body: dict[str, Any]) -> str:
    r = client.post("/v1/jobs", json=body)
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


def trained(client: TestClient, ctx: RunContext, body: dict[str, Any]) -> str:
    job_id = submit(client, body)
    assert run_job(job_id, ctx) == "succeeded", client.get(f"/v1/jobs/{job_id}").json()
    return job_id


def body(dataset: dict[str, Any], network: dict[str, Any], epochs: int = 3,
         **training: Any) -> dict[str, Any]:
    return {"name": "vis-img", "dataset": dataset, "network": network,
            "training": {"epochs": epochs, "batch_size": 64, "validation_split": 0.2,
                         "split": "stratified", "seed": 1,
                         "optimizer": {"name": "adam", "lr": 0.01}, **training}}


CNN = {"conv": [4, 8], "pool": "max", "hidden": [16], "batchnorm": "before_activation"}


def png_pixels(text: str) -> tuple[int, int, int, np.ndarray]:
    """(width, height, colour type, pixels (H, W[, 3])) of an unfiltered 8-bit PNG."""
    raw = b64decode(text)
    assert raw[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, dict[bytes, bytes]()
    while pos < len(raw):
        (n,) = struct.unpack(">I", raw[pos:pos + 4])
        tag, data = raw[pos + 4:pos + 8], raw[pos + 8:pos + 8 + n]
        (crc,) = struct.unpack(">I", raw[pos + 8 + n:pos + 12 + n])
        assert crc == zlib.crc32(tag + data) & 0xFFFFFFFF, tag
        chunks[tag] = chunks.get(tag, b"") + data
        pos += 12 + n
    w, h, depth, kind = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    assert depth == 8
    assert kind in (0, 2)
    per = 3 if kind == 2 else 1
    rows = np.frombuffer(zlib.decompress(chunks[b"IDAT"]), np.uint8).reshape(h, 1 + w * per)
    assert (rows[:, 0] == 0).all()  # filter type "none" on every row
    pixels = rows[:, 1:].reshape(h, w, per) if per == 3 else rows[:, 1:]
    return w, h, kind, pixels


@pytest.fixture
def digits_job(client: TestClient, ctx: RunContext) -> str:
    return trained(client, ctx, body(DIGITS, CNN))


def test_validation_of_a_digits_cnn(client: TestClient, digits_job: str) -> None:
    job = client.get(f"/v1/jobs/{digits_job}").json()
    r = client.get(f"/v1/jobs/{digits_job}/validation")
    assert r.status_code == 200, r.text
    v = r.json()
    assert v["checkpoint"]["kind"] == "last"
    assert v["checkpoint"]["epoch"] == 3
    assert v["classes"] == [str(d) for d in range(10)]
    assert v["input_shape"] == [1, 8, 8]
    assert v["is_image"] is True

    # The trainer's split: stratified, seed 1, 20% of 1,797 rows.
    dataset = JobSpec.model_validate(job["spec"]).dataset
    assert isinstance(dataset, DigitsDataset)
    table = generate(dataset)
    _, val_idx = split(table.y, validation_split=0.2, how="stratified", seed=1)
    assert v["n_val"] == len(val_idx) == 1797 - int(1797 * 0.8)
    confusion = np.array(v["confusion"])
    assert confusion.shape == (10, 10)
    assert confusion.sum() == v["n_val"]
    assert (confusion.sum(axis=1) == np.bincount(table.y[val_idx], minlength=10)).all()
    assert v["correct"] == np.trace(confusion)
    assert v["accuracy"] == pytest.approx(v["correct"] / v["n_val"], abs=1e-12)
    assert abs(v["accuracy"] - job["final_metrics"]["val_accuracy"]) < 1e-6

    # The first 64 validation images, in row order, as 8x8 grey tiles of the 0..16 pixels.
    images = v["images"]
    assert images["shape"] == [1, 8, 8]
    assert images["layout"] == "grey"
    assert images["scale"] == [0.0, 16.0]
    items = images["items"]
    assert [it["row"] for it in items] == val_idx[:64].tolist()
    for it in items:
        assert it["label"] == int(table.y[it["row"]])
        assert 0 <= it["predicted"] < 10
        assert 0.1 <= it["confidence"] <= 1.0
        w, h, kind, pixels = png_pixels(it["png"])
        assert (w, h, kind) == (8, 8, 0)
        expected = np.rint(table.X[it["row"], 0].astype(np.float64) / 16 * 255)
        assert np.array_equal(pixels, expected.astype(np.uint8))

    # The same classes /predict gives for those images (eval mode, same checkpoint).
    rows = [table.X[it["row"]].tolist() for it in items[:20]]
    pr = client.post(f"/v1/jobs/{digits_job}/predict", json={"inputs": rows})
    assert pr.status_code == 200, pr.text
    assert pr.json()["classes"] == [v["classes"][it["predicted"]] for it in items[:20]]
    assert np.allclose([max(p) for p in pr.json()["probabilities"]],
                       [it["confidence"] for it in items[:20]], atol=1e-6)


def test_validation_parameters_best_and_etag(client: TestClient, digits_job: str) -> None:
    url = f"/v1/jobs/{digits_job}/validation"
    job = client.get(f"/v1/jobs/{digits_job}").json()
    few = client.get(url, params={"limit": 5}).json()
    assert len(few["images"]["items"]) == 5
    assert client.get(url, params={"limit": 0}).json()["images"]["items"] == []
    wrong = client.get(url, params={"only": "mistakes", "limit": 256}).json()
    assert all(it["label"] != it["predicted"] for it in wrong["images"]["items"])
    assert len(wrong["images"]["items"]) == min(256, wrong["n_val"] - wrong["correct"])

    best = client.get(url, params={"checkpoint": "best"})
    assert best.status_code == 200
    b = best.json()
    assert b["checkpoint"]["kind"] == "best"
    assert b["checkpoint"]["epoch"] == job["best_epoch"]
    assert abs(b["accuracy"] - job["best_metrics"]["val_accuracy"]) < 1e-6
    listed = {c["kind"]: c for c in client.get(f"/v1/jobs/{digits_job}/checkpoints").json()}
    assert b["checkpoint"]["sha256"] == listed["best"]["sha256"]

    etag = best.headers["ETag"]
    again = client.get(url, params={"checkpoint": "best"}, headers={"If-None-Match": etag})
    assert again.status_code == 304
    assert again.headers["ETag"] == etag
    other = client.get(url, params={"checkpoint": "best", "limit": 5},
                       headers={"If-None-Match": etag})
    assert other.status_code == 200
    assert other.headers["ETag"] != etag
    for bad in ({"limit": -1}, {"limit": 257}, {"checkpoint": "first"}, {"only": "some"}):
        assert client.get(url, params=bad).status_code == 422, bad

    # An image job has no decision boundary.
    r = client.get(f"/v1/jobs/{digits_job}/boundary")
    assert r.status_code == 422
    assert "holds images (1 x 8 x 8)" in r.json()["detail"][0]


def test_bn_values_per_channel(client: TestClient, digits_job: str) -> None:
    url = f"/v1/jobs/{digits_job}/bn"
    plain = client.get(url).json()["layers"]
    assert len(plain) == 3
    assert all(la["running_mean"]["values"] is None for la in plain)
    r = client.get(url, params={"values": "true"})
    assert r.status_code == 200
    layers = r.json()["layers"]
    assert [len(la["running_mean"]["values"][0]) for la in layers] == [4, 8, 16]
    for la in layers:
        assert la["epochs"] == [1, 2, 3]
        for stat in ("running_mean", "running_var", "gamma", "beta"):
            s = la[stat]
            assert len(s["values"]) == 3
            for vals, mean, lo, hi in zip(s["values"], s["mean"], s["min"], s["max"],
                                          strict=True):
                assert np.isclose(np.mean(vals), mean, rtol=1e-4, atol=1e-5)
                assert min(vals) == pytest.approx(lo, rel=1e-5, abs=1e-6)
                assert max(vals) == pytest.approx(hi, rel=1e-5, abs=1e-6)
    # The two shapes are tagged apart: a cached summary never answers a values request.
    assert r.headers["ETag"] != client.get(url).headers["ETag"]


def test_validation_of_a_four_feature_table(client: TestClient, ctx: RunContext) -> None:
    job_id = trained(client, ctx, body(BLOBS4, {"hidden": [8], "batchnorm": "after_activation"},
                                       epochs=4, split="random", seed=5))
    job = client.get(f"/v1/jobs/{job_id}").json()
    v = client.get(f"/v1/jobs/{job_id}/validation").json()
    assert v["is_image"] is False
    assert v["input_shape"] == [4]
    assert v["images"] is None
    assert v["classes"] == ["0", "1", "2"]
    assert v["n_val"] == 60
    confusion = np.array(v["confusion"])
    assert confusion.shape == (3, 3)
    assert confusion.sum() == 60
    assert abs(v["accuracy"] - job["final_metrics"]["val_accuracy"]) < 1e-6
    (layer,) = client.get(f"/v1/jobs/{job_id}/bn", params={"values": True}).json()["layers"]
    assert [len(x) for x in layer["running_var"]["values"]] == [8] * 4
    assert client.get(f"/v1/jobs/{job_id}/boundary").status_code == 422


def test_validation_of_an_uploaded_rgb_image_dataset(client: TestClient,
                                                    ctx: RunContext) -> None:
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 40)
    x = rng.integers(0, 120, size=(80, 3, 4, 4)).astype(np.uint8)
    x[y == 1, 0] += 100  # class 1: a redder image
    buf = io.BytesIO()
    np.savez(buf, x=x, y=y)
    up = client.post("/v1/datasets", files={"file": ("rgb.npz", buf.getvalue(),
                                                     "application/octet-stream")})
    assert up.status_code == 201, up.text
    net = {"conv": [2], "hidden": [4], "batchnorm": "before_activation"}
    job_id = trained(client, ctx, body({"id": up.json()["id"]}, net, epochs=2, batch_size=16))
    job = client.get(f"/v1/jobs/{job_id}").json()
    v = client.get(f"/v1/jobs/{job_id}/validation", params={"limit": 3}).json()
    assert v["input_shape"] == [3, 4, 4]
    assert v["n_val"] == 16
    assert np.array(v["confusion"]).sum() == 16
    assert abs(v["accuracy"] - job["final_metrics"]["val_accuracy"]) < 1e-6
    images = v["images"]
    assert images["layout"] == "rgb"
    assert images["scale"] == [float(x.min()), float(x.max())]
    _, val_idx = split(y, validation_split=0.2, how="stratified", seed=1)
    assert [it["row"] for it in images["items"]] == val_idx[:3].tolist()
    for it in images["items"]:
        w, h, kind, pixels = png_pixels(it["png"])
        assert (w, h, kind) == (4, 4, 2)
        assert pixels.shape == (4, 4, 3)
        lo, hi = images["scale"]
        want = np.rint((x[it["row"]].astype(np.float64) - lo) / (hi - lo) * 255)
        assert np.array_equal(pixels, want.transpose(1, 2, 0).astype(np.uint8))


def test_tiles_of_other_channel_counts() -> None:
    image = np.arange(2 * 3 * 5, dtype=np.float32).reshape(2, 3, 5)  # 2 channels, 3 x 5
    w, h, kind, pixels = png_pixels(_tile(image, 0.0, 29.0))
    assert (w, h, kind) == (10, 3, 0)  # side by side
    assert pixels[0, 0] == 0
    assert pixels[0, 5] == round(15 / 29 * 255)
    assert pixels[2, 9] == 255
    w, h, kind, pixels = png_pixels(_tile(np.full((1, 2, 2), 7.0), 7.0, 7.0))
    assert (w, h, kind) == (2, 2, 0)
    assert (pixels == 0).all()


def test_validation_refusals(client: TestClient, ctx: RunContext) -> None:
    queued = submit(client, body(DIGITS, CNN))
    r = client.get(f"/v1/jobs/{queued}/validation")
    assert r.status_code == 404
    assert "no 'last' checkpoint yet" in r.json()["detail"]
    r = client.get(f"/v1/jobs/{queued}/validation", params={"checkpoint": "best"})
    assert r.status_code == 404
    assert "no 'best' checkpoint yet" in r.json()["detail"]
    assert client.get("/v1/jobs/nope/validation").status_code == 404

    no_val = trained(client, ctx, body(BLOBS4, {"hidden": [4]}, epochs=1, validation_split=0.0,
                                       checkpoint_monitor="loss"))
    r = client.get(f"/v1/jobs/{no_val}/validation")
    assert r.status_code == 422, r.text
    assert "has no validation rows" in r.json()["detail"][0]
