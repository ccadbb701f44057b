"""The security tests' app: auth ON (an env-style key), a migrated SQLite file, kombu's
filesystem broker, and a tiny job trained here with the worker's own run_job."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from api.settings import ApiSettings
from models.db import make_engine, session_factory
from models.spec import Limits
from tests.support.db import migrated_sqlite
from worker.training_run import RunContext, run_job

API_KEY = "k-test-security-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
MAX_PREDICT_ROWS = 1_000

TINY_JOB: dict[str, Any] = {
    "name": "tiny", "dataset": {"name": "concentric_circles", "n_samples": 100, "noise": 0.05},
    "network": {"hidden": [4], "batchnorm": "after_activation"},
    "training": {"epochs": 2, "batch_size": 16, "validation_split": 0.2, "seed": 0}}


def make_settings(home: Path) -> ApiSettings:
    s = ApiSettings(home=home, database_url=None, broker_url=None,
                    api_keys=API_KEY, max_predict_rows=MAX_PREDICT_ROWS)
    migrated_sqlite(s.sqlalchemy_url)
    return s


def auth_is_on(settings: ApiSettings) -> bool:
    return bool(getattr(settings, "api_keys", ""))


def train(client: TestClient, settings: ApiSettings, body: dict[str, Any]) -> str:
    """Submit `body` over HTTP and train it here with the worker's own run_job."""
    r = client.post("/v1/jobs", json=body)
    assert r.status_code == 202, r.text
    job_id = str(r.json()["id"])
    ctx = RunContext(sessions=session_factory(make_engine(settings.sqlalchemy_url)),
                     worker="security-test", limits=Limits())
    assert run_job(job_id, ctx) == "succeeded"
    return job_id
