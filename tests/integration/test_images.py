"""Images and real tables through the whole service: uvicorn, a Celery worker, Redis and
PostgreSQL. A BN CNN on digits, the norm study on digits and the standardisation study on
breast_cancer as experiments, image prediction over HTTP and an .npz upload trained on."""

from __future__ import annotations

import base64
import io
import re
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from sklearn.datasets import load_digits

from devtools.poll import poll_until
from devtools.procs import (
    PYTHON,
    Proc,
    Procs,
    celery_worker_argv,
    clean_env,
    free_port,
    wait_for_log,
    wait_ready,
)
from tests.integration.flow import TERMINAL, check_history, submit, wait_done, wait_experiment

pytestmark = pytest.mark.integration

CNN = {"conv": [16, 32], "kernel_size": 3, "pool": "max", "hidden": [64],
       "batchnorm": "before_activation", "norm": "batchnorm"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory,
          new_postgres_database: Callable[[], str], redis_url: str
          ) -> Iterator[tuple[str, Proc]]:
    from models.db.migrate import upgrade

    db = new_postgres_database()
    upgrade(db)
    home = tmp_path_factory.mktemp("images")
    env = clean_env(BNLAB_BROKER_URL=redis_url, BNLAB_DATABASE_URL=db, BNLAB_HOME=str(home))
    procs = Procs(home)
    port = free_port()
    try:
        procs.start("api", [PYTHON, "-m", "uvicorn", "api.main:app", "--host", "127.0.0.1",
                            "--port", str(port)], env)
        worker = procs.start("worker", celery_worker_argv("img@%h", pool="solo"), env)
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, procs)
        wait_for_log(worker, " ready.")
        yield url, worker
    finally:
        procs.stop_all()
        print(procs.dump_logs())


@pytest.fixture(scope="module")
def client(stack: tuple[str, Proc]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack[0], timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def cnn_job(client: httpx.Client) -> dict[str, Any]:
    """The issue's bar: a BN CNN on digits, 30 epochs, through the service."""
    job_id = submit(client, {"name": "digits-cnn", "dataset": {"name": "digits"},
                             "network": CNN,
                             "training": {"epochs": 30, "batch_size": 64, "split": "stratified",
                                          "seed": 0, "optimizer": {"lr": 0.003}}})
    wait_done(client, [job_id], timeout=900)
    job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "succeeded", job
    return job


def test_a_bn_cnn_on_digits_reaches_95_percent(client: httpx.Client,
                                               cnn_job: dict[str, Any]) -> None:
    history = check_history(client, cnn_job["id"], 30)
    assert max(history["val_accuracy"]) >= 0.95, history["val_accuracy"]
    assert history["val_accuracy"][-1] >= 0.95, history["val_accuracy"]
    model = client.get(f"/v1/jobs/{cnn_job['id']}/model").json()
    shapes = [row["output_shape"] for row in model["layers"]]
    assert shapes[0] == [None, 16, 8, 8]
    assert shapes[-1] == [None, 10]
    bn = client.get(f"/v1/jobs/{cnn_job['id']}/bn").json()
    assert bn  # per-channel statistics were recorded


def test_predict_images_as_lists_and_npy(client: httpx.Client,
                                         cnn_job: dict[str, Any]) -> None:
    digits = load_digits()
    images = digits.images[:12].astype(np.float32)[:, None]
    url = f"/v1/jobs/{cnn_job['id']}/predict"
    as_lists = client.post(url, json={"inputs": images.tolist()})
    assert as_lists.status_code == 200, as_lists.text
    body = as_lists.json()
    assert body["class_names"] == [str(i) for i in range(10)]
    assert np.mean([int(c) == t for c, t in zip(body["classes"], digits.target[:12],
                                                 strict=True)]) >= 0.75
    buf = io.BytesIO()
    np.save(buf, images, allow_pickle=False)
    as_npy = client.post(url, json={"npy": base64.b64encode(buf.getvalue()).decode()})
    assert as_npy.status_code == 200
    np.testing.assert_allclose(as_npy.json()["probabilities"], body["probabilities"],
                               rtol=1e-6)
    # a row's answer does not depend on the others (eval mode)
    one = client.post(url, json={"inputs": images[5:6].tolist()}).json()
    np.testing.assert_allclose(one["probabilities"][0], body["probabilities"][5], rtol=1e-5,
                               atol=1e-6)
    # the ONNX export answers what /predict answers (BN folded into the convs)
    onnx = client.get(f"/v1/jobs/{cnn_job['id']}/export", params={"format": "onnx"})
    assert onnx.status_code == 200
    session = ort.InferenceSession(onnx.content, providers=["CPUExecutionProvider"])
    (probs,) = session.run(["probabilities"], {"input": images})
    np.testing.assert_allclose(probs, body["probabilities"], rtol=1e-4, atol=1e-5)
    wrong = client.post(url, json={"inputs": digits.images[:2, :4].tolist()})
    assert wrong.status_code == 422
    assert "each input must have shape [1, 8, 8]" in wrong.text, wrong.text
    pickled = client.post(url, json={"npy": base64.b64encode(b"not numpy").decode()})
    assert pickled.status_code == 422
    assert "npy" in pickled.text


def test_norm_study_on_digits_runs_stacked(client: httpx.Client,
                                           stack: tuple[str, Proc]) -> None:
    base = {"dataset": {"name": "digits"},
            "network": {"conv": [8, 16], "pool": "max", "batchnorm": "before_activation"},
            "training": {"epochs": 3, "batch_size": 64, "split": "stratified"}}
    r = client.post("/v1/experiments", json={
        "name": "norms", "base": base, "seeds": 10,
        "variants": {"network.norm": ["none", "batchnorm", "groupnorm", "layernorm"]}})
    assert r.status_code == 202, r.text
    exp = wait_experiment(client, r.json()["id"], timeout=900)
    assert exp["status"] == "succeeded", exp["counts"]
    assert exp["counts"]["succeeded"] == 40, exp["counts"]
    summary = client.get(f"/v1/experiments/{exp['id']}/summary").json()
    assert len(summary["per_variant"]) == 4
    for band in summary["per_variant"].values():
        assert band["metrics"]["val_accuracy"]["n"] == [10, 10, 10]
    pairs = [c for c in summary["comparisons"] if c["metric"] == "val_accuracy"]
    assert pairs
    assert all(p["n_pairs"] == 10 and p["final"]["mean_diff"] is not None
                         for p in pairs)
    assert {c["variant"] for c in exp["children"]} == {"none", "batchnorm", "groupnorm",
                                                        "layernorm"}
    # a variant's ten seeds differ only by seed: the worker claims siblings and trains them as
    # one stacked model (its claim's log line says how many)
    stacked = [int(n) for n in re.findall(r"with (\d+) stacked siblings",
                                          stack[1].log_tail(10**8))]
    assert stacked, stack[1].log_tail(3000)
    assert max(stacked) >= 1, stack[1].log_tail(3000)


def test_standardize_study_on_breast_cancer(client: httpx.Client) -> None:
    base = {"dataset": {"name": "breast_cancer"},
            "network": {"hidden": [16, 8]},
            "training": {"epochs": 5, "batch_size": 32, "split": "stratified"}}
    r = client.post("/v1/experiments", json={
        "name": "standardize", "base": base, "seeds": 10,
        "variants": {"training.standardize": [False, True],
                     "network.batchnorm": ["none", "before_activation"]}})
    assert r.status_code == 202, r.text
    exp = wait_experiment(client, r.json()["id"], timeout=900)
    assert exp["status"] == "succeeded", exp["counts"]
    assert exp["counts"]["succeeded"] == 40, exp["counts"]
    summary = client.get(f"/v1/experiments/{exp['id']}/summary").json()
    assert len(summary["per_variant"]) == 4
    finals = {name: v["metrics"]["val_accuracy"]["mean"][-1]
              for name, v in summary["per_variant"].items()}
    assert all(0.0 <= acc <= 1.0 for acc in finals.values()), finals


def test_an_npz_upload_trains_and_predicts(client: httpx.Client) -> None:
    digits = load_digits()
    buf = io.BytesIO()
    np.savez(buf, x=digits.images[:400].astype(np.uint8), y=digits.target[:400])
    r = client.post("/v1/datasets", files={"file": ("digits.npz", buf.getvalue())})
    assert r.status_code == 201, r.text
    ds = r.json()
    assert ds["input_shape"] == [1, 8, 8]
    assert ds["n_rows"] == 400
    job_id = submit(client, {"dataset": {"id": ds["id"]},
                             "network": {"conv": [8], "pool": "max",
                                         "batchnorm": "before_activation"},
                             "training": {"epochs": 2, "batch_size": 32, "standardize": True}})
    wait_done(client, [job_id])
    assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "succeeded"
    p = client.post(f"/v1/jobs/{job_id}/predict",
                    json={"inputs": digits.images[:3].tolist()})
    assert p.status_code == 200
    assert len(p.json()["classes"]) == 3


def test_a_study_on_breast_cancer(client: httpx.Client) -> None:
    """The studies machinery on a real table (standardised inputs), through Redis/PostgreSQL."""
    r = client.post("/v1/studies", json={
        "preset": "bn-claims", "claims": ["regularization", "placement", "batch_size"],
        "seeds": 3, "batch_sizes": [8, 64],
        "base": {"dataset": {"name": "breast_cancer"},
                 "network": {"hidden": [8], "batchnorm": "before_activation"},
                 "training": {"epochs": 3, "split": "stratified", "standardize": True}}})
    assert r.status_code == 202, r.text
    study = r.json()
    # regularization: bn, none and none + dropout; placement: before, after; batch: 2 x 2
    assert study["cost"]["children"] == 3 * (3 + 2 + 4)
    study_id = study["id"]
    study = poll_until(lambda: client.get(f"/v1/studies/{study_id}").json(),
                       lambda study: study["status"] in TERMINAL, what="finished study",
                       timeout=900, interval=0.5)
    assert study["status"] == "succeeded", study
    report = client.get(f"/v1/studies/{study['id']}/report").json()
    assert [c["claim"] for c in report["claims"]] == ["regularization", "placement", "batch_size"]
    assert all(c["verdict"] in ("supported", "contradicted", "inconclusive") and
               c["test"]["n"] == 3 for c in report["claims"])
    md = client.get(f"/v1/studies/{study['id']}/report.md")
    assert md.status_code == 200
    assert "| claim | verdict |" in md.text
