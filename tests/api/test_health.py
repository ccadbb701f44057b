"""Liveness and readiness against the real database and broker."""

from __future__ import annotations

import shutil
from pathlib import Path

from fastapi.testclient import TestClient

from api.main import create_app
from api.settings import ApiSettings


def test_healthz_and_readyz_embedded(client: TestClient, settings: ApiSettings) -> None:
    assert client.get("/healthz").json() == {"status": "ok", "checks": {}}
    r = client.get("/readyz")
    assert r.status_code == 200
    assert r.json()["checks"] == {"database": "ok", "broker": "ok", "disk": "ok"}
    shutil.rmtree(settings.broker_folder)
    r = client.get("/readyz")
    assert r.status_code == 503
    assert r.json()["checks"]["broker"] != "ok"


def test_readyz_with_redis(redis_url: str, settings: ApiSettings) -> None:
    up = settings.model_copy(update={"broker_url": redis_url,
                                     "database_url": settings.sqlalchemy_url})
    with TestClient(create_app(up)) as client:
        # a SQLite database: its disk is checked too
        assert client.get("/readyz").json()["checks"] == {"database": "ok", "broker": "ok",
                                                          "disk": "ok"}
    down = up.model_copy(update={"broker_url": "redis://127.0.0.1:1/0", "ready_timeout_s": 0.5})
    with TestClient(create_app(down)) as client:
        r = client.get("/readyz")
        assert r.status_code == 503
        assert r.json()["checks"]["broker"] != "ok"


def test_readyz_database_down(tmp_path: Path) -> None:
    s = ApiSettings(home=tmp_path, broker_url=None,
                    database_url="postgresql://nobody@127.0.0.1:1/none")
    with TestClient(create_app(s)) as client:
        r = client.get("/readyz")
        assert r.status_code == 503
        assert r.json()["checks"]["database"] != "ok"


def test_readyz_says_the_disk_is_full(settings: ApiSettings) -> None:
    # More free space asked for than any disk has: what a full disk looks like to the probe.
    full = settings.model_copy(update={"ready_min_free_mb": 2.0**40})
    with TestClient(create_app(full)) as client:
        r = client.get("/readyz")
        assert r.status_code == 503
        disk = r.json()["checks"]["disk"]
        assert disk.startswith("OSError: the disk is full: "), disk
        assert str(settings.home) in disk
        assert r.json()["checks"]["database"] == "ok"
