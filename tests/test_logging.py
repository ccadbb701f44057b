"""Structured logs: every line one JSON object, with request_id on what the API logs while
answering and job_id / experiment_id on what the worker logs while running a job."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from api.main import create_app
from api.settings import ApiSettings
from config.logging import configure_logging, log_context, resolve_format
from config.settings import BaseBnlabSettings
from models.db import make_engine, session_factory
from models.spec import Limits
from tests.support.db import migrated_sqlite
from worker.training_run import RunContext, run_job

log = logging.getLogger("tests.logging")
CIRCLES = {"name": "concentric_circles", "n_samples": 200, "noise": 0.05}


class Captured:
    def __init__(self) -> None:
        self.stream = io.StringIO()

    def records(self) -> list[dict[str, Any]]:
        lines = self.stream.getvalue().splitlines()
        assert lines, "nothing was logged"
        return [json.loads(line) for line in lines]  # every line parses on its own


@pytest.fixture
def json_logs() -> Iterator[Captured]:
    captured = Captured()
    root = logging.getLogger()
    level = root.level
    handler = configure_logging("json", "INFO", stream=captured.stream)
    yield captured
    root.removeHandler(handler)
    root.setLevel(level)


@pytest.fixture
def app_settings(tmp_path: Path) -> ApiSettings:
    s = ApiSettings(home=tmp_path, database_url=None, broker_url=None)
    migrated_sqlite(s.sqlalchemy_url)
    return s


@pytest.fixture
def client(app_settings: ApiSettings) -> Iterator[TestClient]:
    app = create_app(app_settings)

    def chatty() -> dict[str, str]:
        log.info("inside the route")  # a sync route: runs in the threadpool
        return {"ok": "yes"}

    def boom() -> None:
        raise RuntimeError("boom")

    app.add_api_route("/chatty", chatty)
    app.add_api_route("/boom", boom)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def test_api_lines_carry_the_request_id(client: TestClient, json_logs: Captured) -> None:
    jobs = client.get("/v1/jobs", headers={"X-Request-ID": "trace-42"})
    chatty = client.get("/chatty")
    boom = client.get("/boom")
    records = json_logs.records()

    access = [r for r in records if r["logger"] == "bnlab.access"]
    assert {(r["method"], r["route"], r["status"]) for r in access} >= {
        ("GET", "/v1/jobs", 200), ("GET", "/chatty", 200), ("GET", "/boom", 500)}
    first = next(r for r in access if r["path"] == "/v1/jobs")
    assert first["request_id"] == "trace-42" == jobs.headers["x-request-id"]
    assert first["level"] == "INFO"
    assert first["duration_ms"] >= 0
    assert first["time"]

    inside = next(r for r in records if r["message"] == "inside the route")
    assert inside["request_id"] == chatty.headers["x-request-id"]
    error = next(r for r in records if r["level"] == "ERROR")
    assert error["request_id"] == boom.headers["x-request-id"] == boom.json()["request_id"]
    assert "RuntimeError: boom" in error["exc_info"]
    # Ids do not leak past their request.
    log.info("after the requests")
    assert "request_id" not in json_logs.records()[-1]


def test_worker_lines_carry_the_job_and_experiment_ids(
        client: TestClient, app_settings: ApiSettings, json_logs: Captured) -> None:
    engine = make_engine(app_settings.sqlalchemy_url)
    ctx = RunContext(sessions=session_factory(engine), worker="test-worker", limits=Limits())
    job = client.post("/v1/jobs", json={
        "name": "log", "dataset": CIRCLES, "network": {"hidden": [4]},
        "training": {"epochs": 2}}).json()["id"]
    exp = client.post("/v1/experiments", json={
        "name": "log-exp", "base": {"dataset": CIRCLES, "network": {"hidden": [4]},
                                    "training": {"epochs": 2}},
        "variants": {"network.batchnorm": ["none"]}, "seeds": 2}).json()
    child = exp["children"][0]["job_id"]
    try:
        assert run_job(job, ctx) == "succeeded"
        assert run_job(child, ctx) == "succeeded"  # trains both seeds stacked
    finally:
        engine.dispose()
    records = json_logs.records()

    of_job = [r for r in records if r.get("job_id") == job]
    assert any(f"job {job} succeeded" == r["message"] for r in of_job)
    assert all("experiment_id" not in r for r in of_job)
    of_child = [r for r in records if r.get("job_id") == child]
    assert any("claimed" in r["message"] for r in of_child)
    assert {r.get("experiment_id") for r in of_child} == {exp["id"]}
    log.info("after the jobs")
    assert not {"job_id", "experiment_id"} & set(json_logs.records()[-1])


def test_text_format_appends_the_ids() -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    handler = configure_logging("text", "INFO", stream=stream)
    try:
        with log_context(job_id="j1", experiment_id=None):
            log.warning("hello")
        log.warning("bye")
    finally:
        root.removeHandler(handler)
    first, second = stream.getvalue().splitlines()
    assert first.endswith("WARNING tests.logging: hello [job_id=j1]")
    assert second.endswith("WARNING tests.logging: bye")


def test_configure_logging_replaces_only_its_own_handler() -> None:
    root = logging.getLogger()
    other = logging.NullHandler()
    root.addHandler(other)
    try:
        first = configure_logging("json", "INFO", stream=io.StringIO())
        second = configure_logging("json", "INFO", stream=io.StringIO())
        assert first not in root.handlers
        assert second in root.handlers
        assert other in root.handlers
    finally:
        root.removeHandler(other)
        root.removeHandler(second)


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_auto_is_text_on_a_terminal_and_json_elsewhere() -> None:
    assert resolve_format("auto", Tty()) == "text"
    assert resolve_format("auto", io.StringIO()) == "json"
    assert resolve_format("json", Tty()) == "json"


def test_settings_read_and_check_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BNLAB_LOG_FORMAT", "json")
    monkeypatch.setenv("BNLAB_LOG_LEVEL", "debug")
    s = BaseBnlabSettings()
    assert (s.log_format, s.log_level) == ("json", "debug")
    monkeypatch.setenv("BNLAB_LOG_FORMAT", "xml")
    with pytest.raises(ValidationError):
        BaseBnlabSettings()
    monkeypatch.setenv("BNLAB_LOG_FORMAT", "text")
    monkeypatch.setenv("BNLAB_LOG_LEVEL", "loud")
    with pytest.raises(ValidationError):
        BaseBnlabSettings()


def test_the_celery_worker_logs_through_the_same_setup(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from celery.signals import setup_logging

    from worker.celery_app import settings

    monkeypatch.setattr(settings, "log_format", "json")
    root = logging.getLogger()
    level = root.level
    try:
        # What `celery worker` sends before it would set up logging itself.
        setup_logging.send(sender=None, loglevel=logging.WARNING, logfile=None, format="",
                           colorize=False)
        with log_context(job_id="j9"):
            logging.getLogger("celery.worker").warning("from celery")
    finally:
        for h in [h for h in root.handlers if h.get_name() == "bnlab"]:
            root.removeHandler(h)
        root.setLevel(level)
    line = json.loads(capsys.readouterr().err.splitlines()[-1])
    assert (line["logger"], line["message"], line["job_id"]) == (
        "celery.worker", "from celery", "j9")


@pytest.mark.integration
def test_bnlab_serve_writes_json_lines_from_api_and_worker(tmp_path: Path) -> None:
    """The real thing: `bnlab serve` (uvicorn and its Celery worker) with BNLAB_LOG_FORMAT=json;
    a request and a job trained by the worker process, then every line of its output parsed."""
    import httpx

    from devtools.poll import poll_until
    from devtools.procs import embedded_serve

    with embedded_serve(tmp_path, BNLAB_LOG_FORMAT="json") as (base_url, procs), \
            httpx.Client(base_url=base_url, timeout=30) as http:
        r = http.post("/v1/jobs", json={"name": "log", "dataset": CIRCLES,
                                        "network": {"hidden": [4]}, "training": {"epochs": 2}},
                      headers={"X-Request-ID": "serve-trace-1"})
        assert r.status_code == 202, r.text
        job = r.json()["id"]
        # a hang guard: the worker may still be starting
        poll_until(lambda: http.get(f"/v1/jobs/{job}").json()["status"],
                   lambda status: status == "succeeded", what=f"success of job {job}",
                   timeout=300, describe=lambda status: f"{status}\n{procs.dump_logs()}")
        output = procs.procs[0].log_tail(10**8)
    records = []
    for line in output.splitlines():
        if line.startswith("{"):  # Celery's start-up banner is printed, not logged
            records.append(json.loads(line))
    access = [r for r in records if r["logger"] == "bnlab.access" and r["method"] == "POST"]
    assert [(r["route"], r["status"], r["request_id"]) for r in access] == [
        ("/v1/jobs", 202, "serve-trace-1")]
    assert any(r["logger"].startswith("uvicorn") for r in records)  # uvicorn's own, as JSON
    assert not [r for r in records if "color_message" in r]  # no terminal colour codes
    assert any(r.get("job_id") == job and r["message"] == f"job {job} succeeded"
               for r in records), output[-4000:]
    stray = [line for line in output.splitlines()
             if line.strip() and not line.startswith("{") and " ready." in line]
    assert not stray, stray  # the worker's log lines are JSON too
