"""Per-key rate limits (429 + Retry-After), the active-jobs cap, and the serve guard."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from api.main import create_app
from api.ratelimit import Rate, RateLimiter, limited_kind, parse_rate
from api.settings import ApiSettings
from cli.main import is_loopback
from tests.support.bodies import generated_body
from tests.support.db import migrated_sqlite

A = {"Authorization": "Bearer key-a-for-rate-limit-tests"}
B = {"Authorization": "Bearer key-b-for-rate-limit-tests"}


def test_parse_rate() -> None:
    assert parse_rate("60/minute") == Rate(60, 60.0, "60/minute")
    assert parse_rate(" 5 / second ") == Rate(5, 1.0, "5 / second")
    assert parse_rate("") is None
    for bad in ("lots", "0/minute", "5/day", "-1/hour"):
        with pytest.raises(ValueError, match="N/minute"):
            parse_rate(bad)
    with pytest.raises(ValidationError, match="rate_limit_submissions"):
        ApiSettings(rate_limit_submissions="lots")


def test_token_bucket_allows_a_burst_then_refills_evenly() -> None:
    now = [0.0]
    limiter = RateLimiter(Rate(3, 60.0, "3/minute"), clock=lambda: now[0])
    assert [limiter.spend("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.spend("a") == pytest.approx(20.0)  # one token per 20 s
    assert limiter.spend("b") == 0.0  # buckets are per key
    now[0] = 10.0
    assert limiter.spend("a") == pytest.approx(10.0)  # half a token so far: nothing spent
    now[0] = 20.0
    assert limiter.spend("a") == 0.0
    assert limiter.spend("a") > 0
    now[0] = 10_000.0
    assert [limiter.spend("a") for _ in range(4)][:3] == [0.0] * 3  # capped at the burst


def test_which_requests_are_limited() -> None:
    assert limited_kind("POST", "/v1/jobs") == "submissions"
    assert limited_kind("POST", "/v1/experiments/") == "submissions"
    assert limited_kind("POST", "/v1/datasets") == "submissions"
    assert limited_kind("POST", "/v1/jobs/abc/predict") == "predictions"
    assert limited_kind("GET", "/v1/jobs/abc/boundary") == "predictions"
    assert limited_kind("GET", "/v1/jobs") is None
    assert limited_kind("POST", "/v1/jobs/abc/cancel") is None


@pytest.fixture
def limited(tmp_path: Path) -> Iterator[TestClient]:
    s = ApiSettings(home=tmp_path, database_url=None, broker_url=None,
                    api_keys=f"{A['Authorization'][7:]},{B['Authorization'][7:]}",
                    rate_limit_submissions="2/minute", rate_limit_predictions="1/hour",
                    max_active_jobs_per_key=3)
    migrated_sqlite(s.sqlalchemy_url)
    with TestClient(create_app(s)) as c:
        yield c


def test_submissions_over_the_rate_get_429_with_retry_after_per_key(limited: TestClient
                                                                     ) -> None:
    for _ in range(2):
        assert limited.post("/v1/jobs", json=generated_body(), headers=A).status_code == 202
    r = limited.post("/v1/jobs", json=generated_body(), headers=A)
    assert r.status_code == 429
    assert 1 <= int(r.headers["Retry-After"]) <= 30  # a token every 30 s
    body = r.json()
    assert body["error"] == "RateLimited"
    assert "2 per minute" in body["detail"]
    assert "rate_limit_submissions" in body["detail"]
    assert r.headers["X-Request-ID"]
    # The same bucket covers experiments and uploads; another key has its own.
    assert limited.post("/v1/datasets", headers=A,
                        files={"file": ("x.csv", b"a,b\n1,0\n", "text/csv")}).status_code == 429
    assert limited.post("/v1/jobs", json=generated_body(), headers=B).status_code == 202
    assert limited.get("/v1/jobs", headers=A).status_code == 200  # reads are not limited
    assert len(limited.get("/v1/jobs", headers=A).json()["items"]) == 2


def test_predictions_over_the_rate_get_429(limited: TestClient) -> None:
    first = limited.post("/v1/jobs/nope/predict", json={"inputs": [[0, 0]]}, headers=A)
    assert first.status_code == 404
    r = limited.get("/v1/jobs/nope/boundary", headers=A)
    assert r.status_code == 429
    assert "rate_limit_predictions" in r.json()["detail"]
    assert int(r.headers["Retry-After"]) > 60  # 1/hour


def test_active_jobs_per_key_are_capped(tmp_path: Path) -> None:
    s = ApiSettings(home=tmp_path, database_url=None, broker_url=None,
                    api_keys="key-a-for-rate-limit-tests", rate_limit_submissions="",
                    max_active_jobs_per_key=3)
    migrated_sqlite(s.sqlalchemy_url)
    with TestClient(create_app(s)) as c:
        ids = [c.post("/v1/jobs", json=generated_body(), headers=A).json()["id"]
               for _ in range(2)]
        exp = {"base": generated_body(), "variants": {"network.batchnorm": ["none"]},
               "seeds": 2}
        r = c.post("/v1/experiments", json=exp, headers=A)  # 2 + 2 > 3
        assert r.status_code == 429, r.text
        assert "max_active_jobs_per_key" in r.json()["detail"]
        assert "3" in r.json()["detail"]
        assert "Retry-After" in r.headers
        assert c.post("/v1/jobs", json=generated_body(), headers=A).status_code == 202
        r = c.post("/v1/jobs", json=generated_body(), headers=A)
        assert r.status_code == 429
        assert r.json()["error"] == "TooManyActiveJobs"
        assert c.post(f"/v1/jobs/{ids[0]}/cancel", headers=A).status_code == 200
        assert c.post("/v1/jobs", json=generated_body(), headers=A).status_code == 202


def test_is_loopback() -> None:
    assert all(map(is_loopback, ("127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.2")))
    assert not any(map(is_loopback, ("0.0.0.0", "::", "10.0.0.5", "example.com")))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve_refuses_a_public_address_with_auth_off(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items()
           if k not in ("BNLAB_API_KEYS", "BNLAB_DATABASE_URL", "BNLAB_BROKER_URL")}
    env["BNLAB_HOME"] = str(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "cli.main", "serve", "--host", "0.0.0.0",
         "--port", str(_free_port())], env=env, capture_output=True, text=True, timeout=120,
        cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "refusing to listen on 0.0.0.0" in proc.stderr
    assert "BNLAB_API_KEYS" in proc.stderr
    assert "bnlab keys create" in proc.stderr
    assert "--insecure" in proc.stderr
