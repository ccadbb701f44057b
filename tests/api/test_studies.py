"""Studies over HTTP (TestClient on a migrated SQLite file and the filesystem broker); the
children are trained by the worker's own run_job, in this process, on the same database."""

from __future__ import annotations

import base64
import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from api.settings import ApiSettings
from models.db import repository as repo
from models.spec import NOTEBOOK_BN_LAYERS
from tests.support.bodies import CIRCLES
from tests.support.broker import queued_messages
from tests.support.db import migrated_sqlite
from tests.support.sse import sse
from worker.training_run import RunContext, run_job

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CLAIMS = ["regularization", "placement", "train_vs_inference"]
BASE = {"dataset": CIRCLES, "network": {"hidden": [4], "batchnorm": "after_activation"},
        "training": {"epochs": 2, "batch_size": 32}}


def small_study(**over: Any) -> dict[str, Any]:
    return {"name": "small", "claims": list(CLAIMS), "base": copy.deepcopy(BASE), "seeds": 3,
            **over}


def children(client: TestClient, study: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for c in study["claims"]:
        r = client.get(f"/v1/experiments/{c['experiment_id']}")
        assert r.status_code == 200, r.text
        out += r.json()["children"]
    return out


def train(ctx: RunContext, kids: list[dict[str, Any]]) -> None:
    """One run_job per child: the first of a stack trains the stack, the others are done."""
    for child in kids:
        assert run_job(child["job_id"], ctx) in ("succeeded", None)


def test_study_end_to_end(client: TestClient, settings: ApiSettings, ctx: RunContext) -> None:
    r = client.post("/v1/studies", json=small_study())
    assert r.status_code == 202, r.text
    study = r.json()
    assert r.headers["Location"] == f"/v1/studies/{study['id']}"
    assert study["status"] == "queued"
    assert study["name"] == "small"
    assert [c["claim"] for c in study["claims"]] == CLAIMS
    assert study["claims"][0]["text"] == "BatchNorm acts as a regulariser"
    # regularization: bn/none x 3, placement: before/after x 3, train_vs_inference: bn x 3
    assert study["cost"]["children"] == 18
    assert study["cost"]["epochs"] == 36
    assert study["cost"]["estimated_seconds"] is None  # nothing has finished on this server
    assert "no job has finished" in study["cost"]["note"]
    assert study["counts"]["queued"] == 18
    assert study["spec"]["seeds"] == 3
    assert study["spec"]["claims"] == CLAIMS
    kids = children(client, study)
    assert len(kids) == 18
    assert sorted(m["args"][0] for m in queued_messages(settings)) == sorted(
        c["job_id"] for c in kids)
    exp = client.get(f"/v1/experiments/{study['claims'][2]['experiment_id']}").json()
    assert exp["variants"] == ["bn"]
    assert exp["seeds"] == [0, 1, 2]

    # The first claim's experiment trains: progress shows, the report is partial.
    train(ctx, kids[:9])  # regularization: bn, none and none + dropout, 3 seeds each
    now = client.get(f"/v1/studies/{study['id']}").json()
    assert now["status"] == "running"
    assert [c["status"] for c in now["claims"]] == ["succeeded", "queued", "queued"]
    assert now["claims"][0]["counts"]["succeeded"] == 9
    assert now["claims"][0]["epochs_done"] == 18
    assert now["claims"][0]["epochs_total"] == 18
    assert now["cost"]["estimated_seconds"] is not None
    assert "upper bound" in now["cost"]["note"]
    partial = client.get(f"/v1/studies/{study['id']}/report").json()
    assert partial["partial"] is True
    assert [c["partial"] for c in partial["claims"]] == [False, True, True]
    assert all(c["verdict"] == "inconclusive" for c in partial["claims"][1:])
    assert "Partial:" in client.get(f"/v1/studies/{study['id']}/report.md").text

    train(ctx, kids[9:])
    done = client.get(f"/v1/studies/{study['id']}").json()
    assert done["status"] == "succeeded"
    assert done["counts"]["succeeded"] == 18
    report = client.get(f"/v1/studies/{study['id']}/report")
    assert report.status_code == 200, report.text
    body = report.json()
    assert body["id"] == study["id"]
    assert body["partial"] is False
    assert body["alpha"] == 0.05
    assert body["seeds"] == 3
    assert body["status"] == "succeeded"
    assert [c["claim"] for c in body["claims"]] == CLAIMS
    for c, out in zip(body["claims"], study["claims"], strict=True):
        assert c["verdict"] in ("supported", "contradicted", "inconclusive")
        assert c["experiment_id"] == out["experiment_id"]
        assert c["test"]["n"] == 3, c
        assert c["test"]["mean"] is not None
        assert c["reason"]
        assert c["measure"]
        assert c["comparison"]
        assert c["rule"]
        if c["verdict"] == "inconclusive":
            assert c["firm_up"]["text"]
    gap = body["claims"][2]["details"]["mean_gap_per_epoch"]
    assert len(gap) == 2
    assert all(g >= 0 for g in gap)

    md = client.get(f"/v1/studies/{study['id']}/report.md")
    assert md.status_code == 200
    assert md.headers["content-type"].startswith("text/markdown")
    assert "| claim | verdict | effect [95% CI] | adjusted p | n |" in md.text
    assert "Partial:" not in md.text
    for c in body["claims"]:
        assert f"(`{c['claim']}`) | {c['verdict']} |" in md.text
        assert f"## {c['text']}" in md.text
    page = client.get(f"/v1/studies/{study['id']}/report.html")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert page.text.count('<img alt="') == 3
    assert page.text.count('src="data:image/png;base64,') == 3
    assert "http://" not in page.text
    assert "https://" not in page.text
    first = page.text.split('src="data:image/png;base64,')[1].split('"')[0]
    assert base64.b64decode(first).startswith(PNG_SIGNATURE)
    # The same runs give the same bytes.
    for path in ("report", "report.md", "report.html"):
        a = client.get(f"/v1/studies/{study['id']}/{path}").content
        b = client.get(f"/v1/studies/{study['id']}/{path}").content
        assert a == b, path

    listed = client.get("/v1/studies").json()
    assert [s["id"] for s in listed["items"]] == [study["id"]]
    assert listed["items"][0]["status"] == "succeeded"


def test_sweep_claims_plot_and_report(client: TestClient, ctx: RunContext) -> None:
    body = small_study(claims=["batch_size", "faster_convergence"], seeds=2,
                       batch_sizes=[8, 32])
    r = client.post("/v1/studies", json=body)
    assert r.status_code == 202, r.text
    study = r.json()
    assert study["cost"]["children"] == 2 * 2 * 2 + 2 * 2
    train(ctx, children(client, study))
    report = client.get(f"/v1/studies/{study['id']}/report").json()
    sweep = report["claims"][0]["details"]
    assert sweep["batch_sizes"] == [8, 32]
    assert set(sweep["mean_final_val_accuracy"]) == {"bn", "none"}
    assert report["claims"][1]["details"]["threshold"] > 0
    page = client.get(f"/v1/studies/{study['id']}/report.html")
    assert page.text.count('src="data:image/png;base64,') == 2


def test_idempotency_key(client: TestClient, settings: ApiSettings) -> None:
    headers = {"Idempotency-Key": "study-once"}
    one = client.post("/v1/studies", json=small_study(), headers=headers)
    again = client.post("/v1/studies", json=small_study(), headers=headers)
    assert one.status_code == 202
    assert again.status_code == 200
    assert one.json()["id"] == again.json()["id"]
    assert len(queued_messages(settings)) == 18
    other = client.post("/v1/studies", json=small_study(seeds=2), headers=headers)
    assert other.status_code == 409


def test_bad_studies_are_422_saying_what_to_change(client: TestClient) -> None:
    # More children than max_study_children (default 2048): the count per claim.
    r = client.post("/v1/studies", json={"base": copy.deepcopy(BASE), "seeds": 100})
    assert r.status_code == 422, r.text
    detail = str(r.json()["detail"])
    assert "3400 children" in detail
    assert "max_study_children" in detail
    assert "higher_learning_rates: 800" in detail
    assert "fewer seeds" in detail

    no_bn = small_study()
    no_bn["base"]["network"] = {"hidden": [4]}
    r = client.post("/v1/studies", json=no_bn)
    assert r.status_code == 422
    assert "has no BatchNorm" in str(r.json()["detail"])

    layers = small_study(claims=["placement"])
    layers["base"]["network"] = {"layers": NOTEBOOK_BN_LAYERS}
    r = client.post("/v1/studies", json=layers)
    assert r.status_code == 422
    assert "placement needs" in str(r.json()["detail"])

    r = client.post("/v1/studies", json=small_study(seeds=1))
    assert r.status_code == 422
    assert "seeds" in str(r.json()["detail"])
    r = client.post("/v1/studies", json=small_study(claims=["bn_is_magic"]))
    assert r.status_code == 422
    assert "claims" in str(r.json()["detail"])

    for base, where in (({"network": "x"}, "base.network"),
                        ({"network": {"layers": [1]}}, "base.network.layers"),
                        ({"training": [1]}, "base.training")):
        r = client.post("/v1/studies", json=small_study(base=base))
        assert r.status_code == 422, r.text
        assert where in str(r.json()["detail"]), r.text

    missing = small_study()
    missing["base"]["dataset"] = {"id": "no-such-dataset"}
    r = client.post("/v1/studies", json=missing)
    assert r.status_code == 422, r.text
    assert any(d.startswith("claim 'regularization': variant 'bn'") and "not found" in d
               for d in r.json()["detail"])
    assert client.get("/v1/studies").json()["items"] == []  # nothing half-stored
    assert client.get("/v1/experiments").json()["items"] == []


def test_the_child_limit_is_a_setting(settings: ApiSettings) -> None:
    small = settings.model_copy(update={"max_study_children": 14})
    with TestClient(create_app(small)) as client:
        r = client.post("/v1/studies", json=small_study())
        assert r.status_code == 422
        assert ("18 children (regularization: 9, placement: 6, train_vs_inference: 3)"
                in str(r.json()["detail"]))


def test_cancel_and_retry(client: TestClient, ctx: RunContext) -> None:
    study = client.post("/v1/studies", json=small_study(seeds=2)).json()
    kids = children(client, study)
    assert client.post(f"/v1/studies/{study['id']}/retry").status_code == 409
    failed = kids[0]["job_id"]
    with ctx.sessions.begin() as session:
        assert repo.claim_job(session, job_id=failed, worker="w", device="cpu")
        assert repo.finish_job(session, job_id=failed, status="failed", error="out of memory",
                               worker="w")
    r = client.post(f"/v1/studies/{study['id']}/cancel")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["cancel_requested"] is True
    assert body["status"] == "failed"
    assert body["counts"]["cancelled"] == 11
    assert body["counts"]["failed"] == 1
    assert {c["status"] for c in body["claims"][1:]} == {"cancelled"}
    r = client.post(f"/v1/studies/{study['id']}/retry")
    assert r.status_code == 200, r.text
    assert r.json()["retried"] == [failed]
    assert r.json()["study"]["counts"]["queued"] == 1
    assert client.get("/v1/studies/nope").status_code == 404
    assert client.get("/v1/studies/nope/report").status_code == 404


def test_broker_down_stores_nothing(settings: ApiSettings) -> None:
    down = settings.model_copy(update={"broker_url": "redis://127.0.0.1:1/0",
                                       "database_url": settings.sqlalchemy_url})
    with TestClient(create_app(down)) as client:
        r = client.post("/v1/studies", json=small_study())
        assert r.status_code == 503
        assert r.json()["error"] == "NotReady"
        assert client.get("/v1/studies").json()["items"] == []
        assert client.get("/v1/experiments").json()["items"] == []
        assert client.get("/v1/jobs").json()["items"] == []


KEY_A = "bnlab_test-key-a-0123456789abcdef0123456789"
KEY_B = "bnlab_test-key-b-0123456789abcdef0123456789"
A = {"Authorization": f"Bearer {KEY_A}"}
B = {"Authorization": f"Bearer {KEY_B}"}


@pytest.fixture
def authed(tmp_path: Path) -> Iterator[TestClient]:
    s = ApiSettings(home=tmp_path / "auth", database_url=None, broker_url=None,
                    api_keys=f"{KEY_A}, {KEY_B}")
    migrated_sqlite(s.sqlalchemy_url)
    with TestClient(create_app(s)) as c:
        yield c


def test_another_key_gets_404(authed: TestClient) -> None:
    r = authed.post("/v1/studies", json=small_study(), headers=A)
    assert r.status_code == 202, r.text
    sid = r.json()["id"]
    assert authed.get(f"/v1/studies/{sid}", headers=A).status_code == 200
    for method, path in (("GET", ""), ("GET", "/report"), ("GET", "/report.md"),
                         ("GET", "/report.html"), ("POST", "/cancel"), ("POST", "/retry")):
        theirs = authed.request(method, f"/v1/studies/{sid}{path}", headers=B)
        assert theirs.status_code == 404, (path, theirs.text)
    assert authed.get("/v1/studies", headers=B).json()["items"] == []
    assert authed.get("/v1/studies", headers=A).json()["items"]
    assert authed.get(f"/v1/studies/{sid}", headers=A).json()["status"] == "queued"


def test_study_events_report_progress_then_the_verdicts(client: TestClient,
                                                        ctx: RunContext) -> None:
    study = client.post("/v1/studies", json=small_study(claims=["regularization"],
                                                       seeds=2)).json()
    train(ctx, children(client, study))
    events = sse(client.get(f"/v1/studies/{study['id']}/events").text)
    assert [e["event"] for e in events] == ["progress", "done"]
    (claim,) = events[0]["data"]["claims"]
    assert claim["claim"] == "regularization"
    assert claim["counts"]["succeeded"] == 6
    done = events[1]["data"]
    report = client.get(f"/v1/studies/{study['id']}/report").json()
    assert done["study"]["status"] == "succeeded"
    assert done["verdicts"] == [{"claim": "regularization",
                                 "verdict": report["claims"][0]["verdict"]}]
    assert client.get("/v1/studies/nope/events").status_code == 404
