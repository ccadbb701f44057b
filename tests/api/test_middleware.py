"""Request ids, the generic 500, body caps while streaming, and CORS off unless configured."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from api.settings import ApiSettings
from tests.support.db import migrated_sqlite


def make_client(tmp_path: Path, **overrides: Any) -> TestClient:
    s = ApiSettings(home=tmp_path, database_url=None, broker_url=None, **overrides)
    migrated_sqlite(s.sqlalchemy_url)
    return TestClient(create_app(s), raise_server_exceptions=False)


def test_every_response_carries_a_request_id(client: TestClient) -> None:
    ids = set()
    for r in (client.get("/healthz"), client.get("/v1/jobs/nope"),
              client.post("/v1/jobs", json={"nope": 1})):
        rid = r.headers["x-request-id"]
        assert len(rid) == 32
        assert rid not in ids
        ids.add(rid)
    assert client.get("/healthz", headers={"X-Request-ID": "proxy-42.a"}).headers[
        "x-request-id"] == "proxy-42.a"
    odd = client.get("/healthz", headers={"X-Request-ID": "no spaces\tor tabs"})
    assert odd.headers["x-request-id"] != "no spaces\tor tabs"


def test_a_500_is_generic_with_the_request_id(tmp_path: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    client = make_client(tmp_path)

    def boom() -> None:
        raise RuntimeError("secret detail /etc/passwd")

    client.app.add_api_route("/boom", boom)  # type: ignore[attr-defined]
    r = client.get("/boom")
    assert r.status_code == 500
    body = r.json()
    assert body["error"] == "InternalError"
    assert "secret" not in r.text
    assert body["request_id"] == r.headers["x-request-id"]
    assert any(body["request_id"] in rec.getMessage() for rec in caplog.records)


def test_bodies_over_the_limit_are_refused_before_the_route(tmp_path: Path) -> None:
    client = make_client(tmp_path, max_body_bytes=4096, max_upload_bytes=10_000)
    big = b'{"name": "' + b"x" * 10_000 + b'"}'
    r = client.post("/v1/jobs", content=big, headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    assert "4,096 bytes" in r.json()["detail"]
    assert r.headers["x-request-id"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while streaming
        yield b'{"name": "'
        for _ in range(10):
            yield b"y" * 1000
        yield b'"}'

    r = client.post("/v1/jobs", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    csv = b"X,Y,class\n" + b"0.5,0.5,1\n" * 20_000  # 200 kB against a 10 kB upload limit
    r = client.post("/v1/datasets", files={"file": ("big.csv", csv, "text/csv")})
    assert r.status_code == 413
    assert client.get("/v1/datasets").json()["items"] == []  # nothing stored
    assert client.get("/healthz").status_code == 200  # and the server goes on


def test_cors_is_off_unless_origins_are_listed(tmp_path: Path) -> None:
    origin = {"Origin": "https://lab.example"}
    off = make_client(tmp_path / "off")
    assert "access-control-allow-origin" not in off.get("/healthz", headers=origin).headers
    on = make_client(tmp_path / "on", cors_origins="https://lab.example")
    assert on.get("/healthz", headers=origin).headers[
        "access-control-allow-origin"] == "https://lab.example"
    other = on.get("/healthz", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers
    pre = on.options("/v1/jobs", headers={**origin, "Access-Control-Request-Method": "POST",
                                          "Access-Control-Request-Headers": "authorization"})
    assert pre.status_code == 200
    assert "authorization" in pre.headers[
        "access-control-allow-headers"].lower()
