"""GET /metrics, scraped after real requests and a real job run (the worker's own run_job, in
this process, on the app's database), parsed with prometheus_client's own parser."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

import api.metrics
from api.main import create_app
from api.settings import ApiSettings
from tests.support.bodies import generated_body
from tests.support.db import migrated_sqlite
from worker.training_run import RunContext, run_job

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture(autouse=True)
def fresh_snapshots(monkeypatch: pytest.MonkeyPatch) -> None:
    # Database and broker numbers are shared by scrapes within a second; these tests scrape
    # again right after changing them.
    monkeypatch.setattr(api.metrics, "SNAPSHOT_TTL_S", 0.0)


def scrape(client: TestClient) -> Samples:
    r = client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(r.text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def requests(samples: Samples, route: str, status: str, method: str = "GET") -> float:
    return value(samples, "bnlab_http_requests_total", method=method, route=route,
                 status=status)


def test_requests_are_counted_and_timed_by_route_template(client: TestClient) -> None:
    for _ in range(3):
        assert client.get("/v1/jobs").status_code == 200
    missing = "0123456789abcdef0123456789abcdef"
    assert client.get(f"/v1/jobs/{missing}").status_code == 404
    assert client.get(f"/v1/jobs/{missing}/history").status_code == 404
    assert client.get("/no/such/path").status_code == 404

    samples = scrape(client)
    assert requests(samples, "/v1/jobs", "2xx") == 3
    assert requests(samples, "/v1/jobs/{job_id}", "4xx") == 1
    assert requests(samples, "/v1/jobs/{job_id}/history", "4xx") == 1
    assert requests(samples, "unmatched", "4xx") == 1
    # Raw paths never become labels: an id cannot grow the series.
    assert not [key for key in samples if any(missing in v for _, v in key[1])]
    labels = {"method": "GET", "route": "/v1/jobs", "status": "2xx"}
    name = "bnlab_http_request_duration_seconds"
    assert value(samples, f"{name}_count", **labels) == 3
    assert value(samples, f"{name}_bucket", le="+Inf", **labels) == 3
    assert 0 < value(samples, f"{name}_sum", **labels) < 30
    # Buckets are cumulative, and the ones around the latency targets exist.
    buckets = [value(samples, f"{name}_bucket", le=le, **labels)
               for le in ("0.005", "0.05", "0.1", "10.0")]
    assert buckets == sorted(buckets)


def test_a_server_error_counts_as_5xx(tmp_path: Path) -> None:
    settings = ApiSettings(home=tmp_path, database_url=None, broker_url=None)
    migrated_sqlite(settings.sqlalchemy_url)
    app = create_app(settings)

    def boom() -> None:
        raise RuntimeError("boom")

    app.add_api_route("/boom", boom)
    with TestClient(app, raise_server_exceptions=False) as client:
        assert client.get("/boom").status_code == 500
        assert requests(scrape(client), "/boom", "5xx") == 1


def test_jobs_queue_and_epochs_follow_a_real_job(client: TestClient, ctx: RunContext) -> None:
    before = scrape(client)
    assert value(before, "bnlab_jobs", status="queued") == 0
    assert value(before, "bnlab_queue_depth", queue="cpu") == 0
    assert value(before, "bnlab_epochs_per_second") == 0
    assert value(before, "bnlab_metrics_source_up", source="database") == 1
    assert value(before, "bnlab_metrics_source_up", source="broker") == 1

    r = client.post("/v1/jobs", json=generated_body(epochs=6))
    assert r.status_code == 202, r.text
    queued = scrape(client)
    assert value(queued, "bnlab_jobs", status="queued") == 1
    assert value(queued, "bnlab_queue_depth", queue="cpu") == 1  # the message file waits
    assert value(queued, "bnlab_queue_depth", queue="gpu") == 0

    assert run_job(r.json()["id"], ctx) == "succeeded"
    done = scrape(client)
    assert value(done, "bnlab_jobs", status="queued") == 0
    assert value(done, "bnlab_jobs", status="succeeded") == 1
    # Six epoch rows written within the window.
    assert value(done, "bnlab_epochs_per_second") == pytest.approx(
        6 / api.metrics.EPOCH_RATE_WINDOW_S)

    # An event stream (of a finished job: it ends) is counted once, when it opens.
    stream = client.get(f"/v1/jobs/{r.json()['id']}/events")
    assert stream.headers["content-type"].startswith("text/event-stream")
    assert requests(scrape(client), "/v1/jobs/{job_id}/events", "2xx") == 1


def test_metrics_need_no_key_and_are_not_rate_limited(tmp_path: Path) -> None:
    settings = ApiSettings(home=tmp_path, database_url=None, broker_url=None, api_keys="k-1",
                           rate_limit_submissions="1/hour", rate_limit_predictions="1/hour")
    migrated_sqlite(settings.sqlalchemy_url)
    with TestClient(create_app(settings)) as client:
        assert client.get("/v1/jobs").status_code == 401
        for _ in range(5):
            samples = scrape(client)
        # The 401 was answered before routing and is still counted under its route.
        assert requests(samples, "/v1/jobs", "4xx") == 1
        assert requests(samples, "/metrics", "2xx") == 4


def test_queue_depth_reads_redis(tmp_path: Path, redis_url: str) -> None:
    settings = ApiSettings(home=tmp_path, database_url=None, broker_url=redis_url)
    migrated_sqlite(settings.sqlalchemy_url)
    with TestClient(create_app(settings)) as client:
        before = value(scrape(client), "bnlab_queue_depth", queue="cpu")
        for _ in range(2):
            assert client.post("/v1/jobs", json=generated_body()).status_code == 202
        samples = scrape(client)
    assert value(samples, "bnlab_queue_depth", queue="cpu") - before == 2
    assert value(samples, "bnlab_metrics_source_up", source="broker") == 1


def test_an_unreachable_broker_is_reported_not_fatal(tmp_path: Path) -> None:
    settings = ApiSettings(home=tmp_path, database_url=None,
                           broker_url="redis://127.0.0.1:1/0")  # nothing listens on port 1
    migrated_sqlite(settings.sqlalchemy_url)
    with TestClient(create_app(settings)) as client:
        samples = scrape(client)
    assert value(samples, "bnlab_metrics_source_up", source="broker") == 0
    assert value(samples, "bnlab_metrics_source_up", source="database") == 1
    assert ("bnlab_jobs", frozenset({("status", "queued")})) in samples
    assert not [key for key in samples if key[0] == "bnlab_queue_depth"]


def test_metrics_are_documented(client: TestClient) -> None:
    doc: dict[str, Any] = client.get("/openapi.json").json()["paths"]["/metrics"]["get"]
    assert "text/plain" in doc["responses"]["200"]["content"]
