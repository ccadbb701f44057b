"""A database outage answers 503 DatabaseUnavailable with Retry-After, never a 500 with a trace.

The app points at PostgreSQL on a port nobody listens on: every connection is refused at once,
as while the server restarts. No PostgreSQL or Redis is needed (kombu's filesystem broker).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from api.main import create_app
from api.settings import ApiSettings
from devtools.procs import free_port

KEY = "bnlab_test-key-for-the-outage-tests"
AUTH = {"Authorization": f"Bearer {KEY}"}
JOB = {"name": "outage", "dataset": {"name": "concentric_circles", "n_samples": 100},
       "network": {"hidden": [4]}, "training": {"epochs": 2}}


def unreachable_settings(home: Path, **overrides: Any) -> ApiSettings:
    """PostgreSQL on a closed local port: connection refused, no wait."""
    url = f"postgresql://bnlab@127.0.0.1:{free_port()}/bnlab"
    return ApiSettings(home=home, database_url=url, broker_url=None, **overrides)


@pytest.fixture
def no_auth(tmp_path: Path) -> Iterator[TestClient]:
    """Auth off: the key lookup (are there any keys?) is the first thing to meet the outage."""
    with TestClient(create_app(unreachable_settings(tmp_path))) as client:
        yield client


@pytest.fixture
def env_key(tmp_path: Path) -> Iterator[TestClient]:
    """A BNLAB_API_KEYS key: authentication needs no database, so the route meets the outage."""
    settings = unreachable_settings(tmp_path, api_keys=KEY, rate_limit_submissions="5/minute")
    with TestClient(create_app(settings)) as client:
        yield client


def assert_unavailable(r: httpx.Response) -> None:
    assert r.status_code == 503, r.text
    body = r.json()
    assert body["error"] == "DatabaseUnavailable", body
    detail = body["detail"]
    assert detail.startswith("the database is unreachable ("), detail
    assert detail.endswith("); retry shortly"), detail
    assert "Connection refused" in detail, detail  # the driver's own words
    for leak in ("Traceback", "SELECT", "[SQL", "parameters", "\n"):
        assert leak not in r.text, r.text
    assert r.headers["Retry-After"] == "5"
    assert body["request_id"] == r.headers["X-Request-ID"], (body, r.headers)


def test_job_read_with_auth_off_is_503(no_auth: TestClient) -> None:
    # Authentication's middleware asks the database whether keys exist: outside any route.
    assert_unavailable(no_auth.get("/v1/jobs/0123456789abcdef"))


def test_job_read_in_the_route_is_503(env_key: TestClient) -> None:
    assert_unavailable(env_key.get("/v1/jobs/0123456789abcdef", headers=AUTH))
    assert_unavailable(env_key.get("/v1/jobs", headers=AUTH))


def test_unknown_key_lookup_is_503_not_401(env_key: TestClient) -> None:
    # Not an env key: the api_key table would say whether it is one; it cannot be asked.
    assert_unavailable(env_key.get("/v1/jobs/0123456789abcdef",
                                   headers={"Authorization": "Bearer bnlab_other"}))


def test_rate_limited_submission_is_503_and_spends_one_token(env_key: TestClient) -> None:
    for _ in range(5):
        assert_unavailable(env_key.post("/v1/jobs", json=JOB, headers=AUTH))
    # The rate limit still applies in front of the database: the sixth is refused as usual.
    r = env_key.post("/v1/jobs", json=JOB, headers=AUTH)
    assert r.status_code == 429, r.text


def test_readyz_names_the_database(no_auth: TestClient) -> None:
    r = no_auth.get("/readyz")
    assert r.status_code == 503, r.text
    assert r.json()["checks"]["database"] != "ok", r.text


def test_logged_as_one_warning_with_the_request_id(no_auth: TestClient,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="api.errors"):
        r = no_auth.get("/v1/jobs/0123456789abcdef", headers={"X-Request-ID": "outage-1"})
    assert_unavailable(r)
    (record,) = [rec for rec in caplog.records if rec.name == "api.errors"]
    assert record.levelno == logging.WARNING
    assert record.exc_info is None  # an outage is not a bug: no traceback
    assert getattr(record, "request_id", None) == "outage-1"
    assert "GET /v1/jobs/0123456789abcdef" in record.getMessage()


def _raising(exc: Exception) -> Any:
    def route() -> None:
        raise exc
    return route


@pytest.mark.parametrize(("exc", "status"), [
    (OperationalError("SELECT secret", {"p": "hunter2"},
                      Exception("server closed the connection unexpectedly\n\tdetails")), 503),
    (DBAPIError("SELECT secret", {"p": "hunter2"}, Exception("connection reset"),
                connection_invalidated=True), 503),
    (IntegrityError("INSERT secret", {"p": "hunter2"}, Exception("duplicate key")), 500),
])
def test_only_transient_errors_are_an_outage(tmp_path: Path, exc: Exception,
                                             status: int) -> None:
    app = create_app(unreachable_settings(tmp_path, api_keys=KEY))
    app.add_api_route("/v1/raise", _raising(exc))
    with TestClient(app, raise_server_exceptions=False) as client:
        r = client.get("/v1/raise", headers=AUTH)
    assert r.status_code == status, r.text
    assert r.json()["error"] == ("DatabaseUnavailable" if status == 503 else "InternalError")
    for leak in ("secret", "hunter2", "Traceback", "details"):
        assert leak not in r.text, r.text


def test_openapi_documents_the_503(no_auth: TestClient) -> None:
    paths = no_auth.get("/openapi.json").json()["paths"]
    assert "503" in paths["/v1/jobs/{job_id}"]["get"]["responses"]
