"""Authentication and ownership over HTTP: with keys configured every /v1 route needs one,
and a key sees only what it created (another key's id answers exactly like a missing id)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.routing import iter_route_contexts
from fastapi.testclient import TestClient

from api.main import create_app
from api.settings import ApiSettings
from models.db import make_engine, session_factory
from models.db import repository as repo
from models.spec import Limits
from tests.support.bodies import generated_body
from tests.support.db import migrated_sqlite
from worker.training_run import RunContext, run_job

KEY_A = "bnlab_test-key-a-0123456789abcdef0123456789"
KEY_B = "bnlab_test-key-b-0123456789abcdef0123456789"
A = {"Authorization": f"Bearer {KEY_A}"}
B = {"Authorization": f"Bearer {KEY_B}"}
MISSING = "0" * 32


@pytest.fixture
def auth_settings(tmp_path: Path) -> ApiSettings:
    s = ApiSettings(home=tmp_path, database_url=None, broker_url=None,
                    api_keys=f"{KEY_A}, {KEY_B}")
    migrated_sqlite(s.sqlalchemy_url)
    return s


@pytest.fixture
def authed(auth_settings: ApiSettings) -> Iterator[TestClient]:
    with TestClient(create_app(auth_settings)) as c:
        yield c


def v1_routes(client: TestClient) -> list[tuple[str, str]]:
    """(method, path template) of every route under /v1 (included routers flattened)."""
    out: list[tuple[str, str]] = []
    for route in iter_route_contexts(client.app.routes):  # type: ignore[attr-defined]
        path = route.path
        assert path is not None  # every route the app mounts has one
        if path.startswith("/v1"):
            out += [(m, path) for m in sorted(set(route.methods or ()) - {"HEAD"})]
    return out


def fill(path: str, value: str, only: str | None = None) -> str:
    """The path with every {param} (or just `only`) replaced by `value`, others by MISSING."""
    def sub(m: re.Match[str]) -> str:
        name = m.group(1).split(":")[0]
        if name == "which":
            return "best"
        return value if only in (None, name) else MISSING
    return re.sub(r"\{([^}]+)\}", sub, path)


def test_every_v1_route_answers_401_without_a_valid_key(authed: TestClient) -> None:
    routes = v1_routes(authed)
    assert len(routes) >= 25  # the sweep really covers the API
    bad_headers: list[dict[str, str]] = [
        {}, {"Authorization": "Bearer not-a-key"}, {"Authorization": f"Basic {KEY_A}"},
        {"Authorization": "Bearer "}]
    for method, path in routes:
        url = fill(path, MISSING)
        for headers in bad_headers:
            r = authed.request(method, url, headers=headers)
            assert r.status_code == 401, (method, url, headers, r.status_code, r.text)
            assert r.headers["WWW-Authenticate"].startswith("Bearer")
            assert r.headers["X-Request-ID"]
            body = r.json()
            assert body["error"] == "Unauthorized", body
            assert "Authorization" in body["detail"] or "unknown or revoked" in body["detail"]
    # With a key the same requests reach the routes (404s for the missing ids, not 401s).
    assert authed.get(f"/v1/jobs/{MISSING}", headers=A).status_code == 404


def test_public_paths_need_no_key(authed: TestClient) -> None:
    for path in ("/healthz", "/openapi.json", "/docs"):
        assert authed.get(path).status_code == 200, path
    assert authed.get("/").status_code != 401  # the dashboard page asks for the key itself
    # The schema says which routes need the key.
    schema = authed.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["ApiKey"]["scheme"] == "bearer"
    assert {"ApiKey": []} in schema["paths"]["/v1/jobs"]["post"]["security"]


def test_upload_without_a_key_is_refused_before_the_body_is_read(authed: TestClient) -> None:
    # Far over max_upload_bytes: a route that read it would answer 413, not 401.
    big = b"X,Y,class\n" + b"0.1,0.2,0\n" * 2_000_000
    r = authed.post("/v1/datasets", files={"file": ("big.csv", big, "text/csv")})
    assert r.status_code == 401


@pytest.fixture
def ctx(auth_settings: ApiSettings) -> RunContext:
    engine = make_engine(auth_settings.sqlalchemy_url)
    return RunContext(sessions=session_factory(engine), worker="test-worker", limits=Limits())


@pytest.fixture
def a_objects(authed: TestClient, notebook_csv: bytes, ctx: RunContext) -> dict[str, str]:
    """Key A's dataset, trained job (with checkpoints) and experiment."""
    r = authed.post("/v1/datasets", headers=A,
                    files={"file": ("c.csv", notebook_csv, "text/csv")})
    assert r.status_code == 201, r.text
    dataset_id = r.json()["id"]
    body = {"name": "a-job", "dataset": {"id": dataset_id},
            "network": {"hidden": [4], "batchnorm": "after_activation"},
            "training": {"epochs": 2, "batch_size": 64}}
    r = authed.post("/v1/jobs", json=body, headers=A)
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    assert run_job(job_id, ctx) == "succeeded"
    exp = {"name": "a-exp", "base": generated_body(), "seeds": 2,
           "variants": {"network.batchnorm": ["none", "after_activation"]}}
    r = authed.post("/v1/experiments", json=exp, headers=A)
    assert r.status_code == 202, r.text
    return {"job_id": job_id, "dataset_id": dataset_id, "experiment_id": r.json()["id"]}


def _strip(body: Any, value: str) -> Any:
    return str(body).replace(value, "<id>")


def test_key_b_cannot_reach_key_a_objects(authed: TestClient, a_objects: dict[str, str]
                                          ) -> None:
    job_id = a_objects["job_id"]
    # A reaches its own trained job: reads, downloads, predicts, streams.
    assert authed.get(f"/v1/jobs/{job_id}", headers=A).status_code == 200
    assert authed.get(f"/v1/jobs/{job_id}/checkpoints/best", headers=A).status_code == 200
    pr = authed.post(f"/v1/jobs/{job_id}/predict", json={"inputs": [[0.1, 0.2]]}, headers=A)
    assert pr.status_code == 200, pr.text
    with authed.stream("GET", f"/v1/jobs/{job_id}/events", headers=A) as s:
        assert s.status_code == 200
    # Every route with an id of A's, called by B, answers what a missing id answers.
    checked = 0
    for method, path in v1_routes(authed):
        for param, value in a_objects.items():
            if "{" + param not in path:
                continue
            kwargs: dict[str, Any] = {}
            if path.endswith("/predict"):
                kwargs["json"] = {"inputs": [[0.1, 0.2]]}
            theirs = authed.request(method, fill(path, value, param), headers=B, **kwargs)
            missing = authed.request(method, fill(path, MISSING, param), headers=B, **kwargs)
            assert theirs.status_code == missing.status_code == 404, (method, path, theirs.text)
            assert _strip(theirs.json(), value) == _strip(missing.json(), MISSING)
            checked += 1
    assert checked >= 20
    # Listings: B sees none of A's rows; A sees them.
    for listing in ("/v1/jobs", "/v1/datasets", "/v1/experiments"):
        assert authed.get(listing, headers=B).json()["items"] == [], listing
        assert authed.get(listing, headers=A).json()["items"], listing
    assert authed.get("/v1/jobs", params={"experiment_id": a_objects["experiment_id"]},
                      headers=B).json()["items"] == []
    r = authed.get("/v1/curves.png", params={"jobs": job_id}, headers=B)
    assert r.status_code == 404
    # B cannot train on A's upload: the same answer as an id that does not exist.
    body = {"dataset": {"id": a_objects["dataset_id"]}, "network": {"hidden": [2]}}
    r = authed.post("/v1/jobs", json=body, headers=B)
    assert r.status_code == 422, r.text
    assert "not found" in str(r.json()["detail"]), r.text
    exp = {"base": body, "variants": [{"name": "x"}], "seeds": 1}
    r = authed.post("/v1/experiments", json=exp, headers=B)
    assert r.status_code == 422, r.text
    assert "not found" in str(r.json()["detail"]), r.text
    # Nothing B tried changed A's objects.
    assert authed.get(f"/v1/jobs/{job_id}", headers=A).json()["status"] == "succeeded"
    exp_a = authed.get(f"/v1/experiments/{a_objects['experiment_id']}", headers=A).json()
    assert exp_a["status"] == "queued"
    assert not exp_a["cancel_requested"]


def test_rows_are_owned_by_the_key_id_and_idempotency_keys_are_per_key(
        authed: TestClient, auth_settings: ApiSettings) -> None:
    key = {"Idempotency-Key": "shared-key"}
    ra = authed.post("/v1/jobs", json=generated_body(), headers={**A, **key})
    rb = authed.post("/v1/jobs", json=generated_body(), headers={**B, **key})
    assert ra.status_code == rb.status_code == 202, (ra.text, rb.text)
    assert ra.json()["id"] != rb.json()["id"]
    again = authed.post("/v1/jobs", json=generated_body(), headers={**A, **key})
    assert again.status_code == 200
    assert again.json()["id"] == ra.json()["id"]
    engine = make_engine(auth_settings.sqlalchemy_url)
    try:
        with session_factory(engine)() as session:
            job = repo.get_job(session, job_id=ra.json()["id"])
            assert job is not None
            assert job.owner == "env:" + hashlib.sha256(KEY_A.encode()).hexdigest()[:8]
            assert KEY_A not in job.owner
    finally:
        engine.dispose()


def test_a_database_key_turns_auth_on_and_revoking_it_locks_it_out(
        client: TestClient, settings: ApiSettings) -> None:
    from api.auth import hash_key, new_key

    assert client.get("/v1/jobs").status_code == 200  # no keys anywhere: auth off
    # ... and a stray Authorization header changes nothing while it is off.
    assert client.get("/v1/jobs", headers={"Authorization": "Bearer whatever"}).status_code \
        == 200
    key = new_key()
    engine = make_engine(settings.sqlalchemy_url)
    try:
        with session_factory(engine).begin() as session:
            key_id = repo.create_api_key(session, key_hash=hash_key(key), prefix=key[:10]).id
        headers = {"Authorization": f"Bearer {key}"}
        assert client.get("/v1/jobs").status_code == 401
        r = client.post("/v1/jobs", json=generated_body(), headers=headers)
        assert r.status_code == 202, r.text
        assert client.get(f"/v1/jobs/{r.json()['id']}", headers=headers).status_code == 200
        with session_factory(engine).begin() as session:
            assert repo.get_job(session, job_id=r.json()["id"]).owner == key_id  # type: ignore[union-attr]
            assert repo.revoke_api_key(session, key_id=key_id)
        r = client.get("/v1/jobs", headers=headers)
        assert r.status_code == 401
        assert "revoked" in r.json()["detail"]
        assert client.get("/v1/jobs").status_code == 401  # still on with no active key
    finally:
        engine.dispose()


def test_keys_cli_creates_lists_and_revokes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                            ) -> None:
    from typer.testing import CliRunner

    from api.auth import hash_key
    from cli.main import app, auth_enabled
    from config.settings import BaseBnlabSettings

    for name in ("BNLAB_API_KEYS", "BNLAB_DATABASE_URL", "BNLAB_BROKER_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("BNLAB_HOME", str(tmp_path))
    runner = CliRunner()
    made = runner.invoke(app, ["keys", "create", "--name", "alice"])
    assert made.exit_code == 0, made.output
    key = made.stdout.strip().splitlines()[0]
    assert key.startswith("bnlab_")
    assert len(key) >= 40
    assert auth_enabled(BaseBnlabSettings())
    listed = runner.invoke(app, ["keys", "list"])
    key_id = listed.stdout.split()[0]
    assert "alice" in listed.stdout
    assert key[:10] in listed.stdout
    assert key not in listed.stdout
    engine = make_engine(BaseBnlabSettings().sqlalchemy_url)
    try:
        with session_factory(engine)() as session:
            assert repo.find_api_key(session, key_hash=hash_key(key)) is not None
        assert runner.invoke(app, ["keys", "revoke", key_id]).exit_code == 0
        assert runner.invoke(app, ["keys", "revoke", key_id]).exit_code == 1
        with session_factory(engine)() as session:
            assert repo.find_api_key(session, key_hash=hash_key(key)) is None
    finally:
        engine.dispose()
