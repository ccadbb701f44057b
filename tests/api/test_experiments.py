"""Experiments over HTTP (TestClient on a migrated SQLite file and the filesystem broker);
children are trained by the worker's own run_job, in this process, on the same database."""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.settings import ApiSettings
from models.db import repository as repo
from models.spec import NOTEBOOK_BN_LAYERS, NOTEBOOK_PLAIN_LAYERS
from tests.support.broker import queued_messages
from tests.support.sse import sse
from worker.training_run import RunContext, run_job

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def notebook_experiment(dataset_id: str, seeds: Any = 5, epochs: int = 3) -> dict[str, Any]:
    return {"name": "notebook",
            "base": {"dataset": {"id": dataset_id},
                     "training": {"epochs": epochs, "batch_size": 32,
                                  "optimizer": {"name": "adam", "lr": 0.001},
                                  "validation_split": 0.2, "split": "tail"}},
            "variants": [{"name": "plain", "network": {"layers": NOTEBOOK_PLAIN_LAYERS}},
                         {"name": "bn", "network": {"layers": NOTEBOOK_BN_LAYERS}}],
            "seeds": seeds}


BN_PLACEMENT: dict[str, Any] = {
    "name": "bn-placement",
    "base": {"dataset": {"name": "concentric_circles", "n_samples": 500, "noise": 0.1},
             "network": {"hidden": [3, 2], "activation": "relu"},
             "training": {"epochs": 50, "batch_size": 32,
                          "optimizer": {"name": "adam", "lr": 0.001},
                          "validation_split": 0.2, "split": "random"}},
    "variants": {"network.batchnorm": ["none", "before_activation", "after_activation"]},
    "seeds": 5}


def children_of(client: TestClient, exp_id: str) -> list[dict[str, Any]]:
    r = client.get(f"/v1/experiments/{exp_id}")
    assert r.status_code == 200, r.text
    return list(r.json()["children"])


def test_notebook_experiment_end_to_end(client: TestClient, settings: ApiSettings,
                                        dataset_id: str, ctx: RunContext) -> None:
    r = client.post("/v1/experiments", json=notebook_experiment(dataset_id))
    assert r.status_code == 202, r.text
    exp = r.json()
    assert exp["status"] == "queued"
    assert exp["variants"] == ["plain", "bn"]
    assert exp["seeds"] == [0, 1, 2, 3, 4]
    assert exp["stacks"] == 2
    kids = exp["children"]
    assert [(c["variant"], c["seed"]) for c in kids] == [
        (v, s) for v in ("plain", "bn") for s in range(5)]
    assert len({c["job_id"] for c in kids}) == 10
    # one message per child: any of them may start its stack
    assert sorted(m["args"][0] for m in queued_messages(settings)) == sorted(
        c["job_id"] for c in kids)

    # The first plain child's task trains all five plain seeds as one stack.
    assert run_job(kids[0]["job_id"], ctx) == "succeeded"
    after = {c["job_id"]: c for c in children_of(client, exp["id"])}
    assert [after[c["job_id"]]["status"] for c in kids[:5]] == ["succeeded"] * 5
    assert [after[c["job_id"]]["status"] for c in kids[5:]] == ["queued"] * 5
    assert run_job(kids[1]["job_id"], ctx) is None  # its own message: already done
    assert run_job(kids[5]["job_id"], ctx) == "succeeded"

    body = client.get(f"/v1/experiments/{exp['id']}").json()
    assert body["status"] == "succeeded"
    assert body["counts"]["succeeded"] == 10
    for c in kids:  # each child has its own complete history and checkpoints
        h = client.get(f"/v1/jobs/{c['job_id']}/history").json()
        assert h["epoch"] == [1, 2, 3]
        job = client.get(f"/v1/jobs/{c['job_id']}").json()
        assert job["experiment_id"] == exp["id"]
        assert job["seed"] == c["seed"]
        assert job["spec"]["training"]["seed"] == c["seed"]

    summary = client.get(f"/v1/experiments/{exp['id']}/summary").json()
    assert set(summary["per_variant"]) == {"plain", "bn"}
    band = summary["per_variant"]["bn"]["metrics"]["val_accuracy"]
    assert len(band["mean"]) == len(band["ci_low"]) == len(band["ci_high"]) == 3
    assert band["n"] == [5, 5, 5]
    assert all(lo <= m <= hi for lo, m, hi in zip(band["ci_low"], band["mean"],
                                                   band["ci_high"], strict=True))
    pairs = [c for c in summary["comparisons"] if c["metric"] == "val_accuracy"]
    assert pairs
    assert pairs[0]["a"] == "plain"
    assert pairs[0]["b"] == "bn"
    assert pairs[0]["n_pairs"] == 5
    assert pairs[0]["final"]["n"] == 5
    finals = {v: [after_job["final_metrics"]["val_accuracy"]
                  for after_job in children_of(client, exp["id"]) if after_job["variant"] == v]
              for v in ("plain", "bn")}
    expected = sum(b - a for a, b in zip(finals["plain"], finals["bn"], strict=True)) / 5
    assert math.isclose(pairs[0]["final"]["mean_diff"], expected, abs_tol=1e-9)

    csv = client.get(f"/v1/experiments/{exp['id']}/summary?format=csv")
    assert csv.status_code == 200
    assert csv.headers["content-type"].startswith("text/csv")
    assert len(csv.text.strip().splitlines()) > 2 * 3  # variants x epochs rows at least
    png = client.get(f"/v1/experiments/{exp['id']}/curves.png?metric=val_accuracy")
    assert png.status_code == 200
    assert png.content.startswith(PNG_SIGNATURE)
    assert client.get(f"/v1/experiments/{exp['id']}/curves.png?metric=nope").status_code == 422


def test_stacked_child_history_equals_the_same_child_trained_alone(
        client: TestClient, dataset_id: str, ctx: RunContext) -> None:
    exp = client.post("/v1/experiments", json=notebook_experiment(dataset_id, seeds=[3, 7],
                                                                  epochs=4)).json()
    bn = [c for c in exp["children"] if c["variant"] == "bn"]
    assert run_job(bn[0]["job_id"], ctx) == "succeeded"  # seeds 3 and 7 stacked
    child = client.get(f"/v1/jobs/{bn[1]['job_id']}").json()
    alone = client.post("/v1/jobs", json=child["spec"]).json()  # the same spec as a plain job
    assert run_job(alone["id"], ctx) == "succeeded"
    stacked_h = client.get(f"/v1/jobs/{bn[1]['job_id']}/history").json()
    alone_h = client.get(f"/v1/jobs/{alone['id']}/history").json()
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert stacked_h[key] == pytest.approx(alone_h[key], abs=1e-5), key


def test_expansion_is_deterministic_and_idempotent(client: TestClient,
                                                   settings: ApiSettings) -> None:
    first = client.post("/v1/experiments", json=BN_PLACEMENT)
    second = client.post("/v1/experiments", json=copy.deepcopy(BN_PLACEMENT))
    assert first.status_code == second.status_code == 202
    a, b = first.json(), second.json()
    assert a["id"] != b["id"]
    assert len(a["children"]) == 15
    assert a["variants"] == ["none", "before_activation", "after_activation"]
    specs = []
    for exp in (a, b):
        specs.append([client.get(f"/v1/jobs/{c['job_id']}").json()["spec"]
                      for c in exp["children"]])
    assert specs[0] == specs[1]
    assert [s["training"]["seed"] for s in specs[0]] == list(range(5)) * 3
    assert [s["network"]["batchnorm"] for s in specs[0][::5]] == BN_PLACEMENT["variants"][
        "network.batchnorm"]

    n_messages = len(queued_messages(settings))
    headers = {"Idempotency-Key": "exp-once"}
    one = client.post("/v1/experiments", json=BN_PLACEMENT, headers=headers)
    again = client.post("/v1/experiments", json=BN_PLACEMENT, headers=headers)
    assert one.status_code == 202
    assert again.status_code == 200
    assert one.json()["id"] == again.json()["id"]
    assert len(queued_messages(settings)) == n_messages + 15
    other = dict(BN_PLACEMENT, seeds=2)
    assert client.post("/v1/experiments", json=other, headers=headers).status_code == 409
    listed = client.get("/v1/experiments?limit=2").json()
    assert [e["id"] for e in listed["items"]] == [one.json()["id"], b["id"]]
    assert listed["next_cursor"]
    page = client.get(f"/v1/jobs?experiment_id={a['id']}&limit=200").json()["items"]
    assert {j["id"] for j in page} == {c["job_id"] for c in a["children"]}


@pytest.mark.usefixtures("dataset_id")
def test_bad_experiments_are_422_naming_the_variant(client: TestClient) -> None:
    bad_value = copy.deepcopy(BN_PLACEMENT)
    bad_value["variants"] = {"network.batchnorm": ["none", "sideways"]}
    r = client.post("/v1/experiments", json=bad_value)
    assert r.status_code == 422
    assert "sideways" in str(r.json()["detail"])

    missing = notebook_experiment("no-such-dataset")
    r = client.post("/v1/experiments", json=missing)
    assert r.status_code == 422, r.text
    assert any("variant 'plain'" in d and "not found" in d for d in r.json()["detail"])

    too_big = copy.deepcopy(BN_PLACEMENT)
    too_big["base"]["network"]["hidden"] = [100_000, 100_000]
    r = client.post("/v1/experiments", json=too_big)
    assert r.status_code == 422
    assert "variant 'none'" in str(r.json()["detail"])

    many = dict(BN_PLACEMENT, seeds=100_000)
    r = client.post("/v1/experiments", json=many)
    assert r.status_code == 422
    assert "limit" in str(r.json()["detail"])
    assert client.get("/v1/experiments").json()["items"] == []  # nothing half-stored


def test_retry_reruns_only_failed_children(client: TestClient, settings: ApiSettings,
                                           dataset_id: str, ctx: RunContext) -> None:
    exp = client.post("/v1/experiments", json=notebook_experiment(dataset_id, seeds=2,
                                                                  epochs=2)).json()
    kids = exp["children"]
    assert run_job(kids[0]["job_id"], ctx) == "succeeded"
    assert client.post(f"/v1/experiments/{exp['id']}/retry").status_code == 409
    # One child fails on a worker (claimed, then failed, e.g. out of memory) ...
    failed = kids[3]["job_id"]
    with ctx.sessions.begin() as session:
        assert repo.claim_job(session, job_id=failed, worker="w", device="cpu")
        assert repo.finish_job(session, job_id=failed, status="failed", error="out of memory",
                               worker="w")
    # ... and its sibling trains alone.
    assert run_job(kids[2]["job_id"], ctx) == "succeeded"
    assert client.get(f"/v1/experiments/{exp['id']}").json()["status"] == "failed"
    before = {c["job_id"]: c for c in children_of(client, exp["id"])}
    n_messages = len(queued_messages(settings))
    r = client.post(f"/v1/experiments/{exp['id']}/retry")
    assert r.status_code == 200, r.text
    assert r.json()["retried"] == [failed]
    assert [m["args"][0] for m in queued_messages(settings)][n_messages:] == [failed]
    assert client.get(f"/v1/jobs/{failed}/history").json()["epoch"] == []
    assert run_job(failed, ctx) == "succeeded"
    after = {c["job_id"]: c for c in children_of(client, exp["id"])}
    for job_id, child in before.items():
        if job_id != failed:  # untouched: same metrics, same status
            assert after[job_id] == child
    assert after[failed]["status"] == "succeeded"
    assert client.get(f"/v1/experiments/{exp['id']}").json()["status"] == "succeeded"


def test_cancel_cancels_queued_children(client: TestClient, dataset_id: str) -> None:
    exp = client.post("/v1/experiments", json=notebook_experiment(dataset_id, seeds=2)).json()
    r = client.post(f"/v1/experiments/{exp['id']}/cancel")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "cancelled"
    assert body["counts"]["cancelled"] == 4
    assert client.get("/v1/experiments/nope").status_code == 404


def test_experiment_events_replay_and_resume(client: TestClient, dataset_id: str,
                                             ctx: RunContext) -> None:
    exp = client.post("/v1/experiments", json=notebook_experiment(dataset_id, seeds=2,
                                                                  epochs=3)).json()
    for child in exp["children"][::2]:  # one task per stack
        assert run_job(child["job_id"], ctx) == "succeeded"
    events = sse(client.get(f"/v1/experiments/{exp['id']}/events").text)
    epochs = [e for e in events if e["event"] == "epoch"]
    assert sorted((e["data"]["job_id"], e["data"]["epoch"]) for e in epochs) == sorted(
        (c["job_id"], n) for c in exp["children"] for n in (1, 2, 3))
    assert all(e["data"]["variant"] in ("plain", "bn") for e in epochs)
    assert events[-1]["event"] == "done"
    assert events[-1]["data"]["status"] == "succeeded"

    cut = epochs[6]["id"]
    rest = sse(client.get(f"/v1/experiments/{exp['id']}/events",
                          headers={"Last-Event-ID": cut}).text)
    resumed = [(e["data"]["job_id"], e["data"]["epoch"]) for e in rest if e["event"] == "epoch"]
    assert resumed == [(e["data"]["job_id"], e["data"]["epoch"]) for e in epochs[7:]]
    bad = client.get(f"/v1/experiments/{exp['id']}/events", headers={"Last-Event-ID": "7"})
    assert bad.status_code == 422
