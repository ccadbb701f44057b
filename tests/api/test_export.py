"""GET /v1/jobs/{id}/export over HTTP: each format downloaded from a really trained job and run
by onnxruntime / torch.export.load / the sidecar's recipe, compared with /predict's answer."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from fastapi.testclient import TestClient

from api.main import create_app
from api.settings import ApiSettings
from models.export import read_safetensors_zip, rebuild
from tests.support.bodies import generated_body
from tests.support.db import migrated_sqlite

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning")]


def _rows(n: int) -> list[list[float]]:
    rows: list[list[float]] = (np.random.default_rng(n).normal(size=(n, 2)) * 2).round(6).tolist()
    return rows


def _predicted(client: TestClient, job_id: str, rows: list[list[float]],
               checkpoint: str = "last") -> np.ndarray:
    r = client.post(f"/v1/jobs/{job_id}/predict", json={"inputs": rows, "checkpoint": checkpoint})
    assert r.status_code == 200, r.text
    return np.array(r.json()["probabilities"])


def _disposition(r: Any) -> str:
    m = re.fullmatch(r'attachment; filename="([A-Za-z0-9._-]+)"', r.headers["content-disposition"])
    assert m, r.headers["content-disposition"]
    return m.group(1)


def test_onnx_export_runs_in_onnxruntime_like_predict(client: TestClient,
                                                      trained: dict[str, Any]) -> None:
    job_id = trained["id"]
    url = f"/v1/jobs/{job_id}/export"
    for fold_bn in (False, True):
        r = client.get(url, params={"format": "onnx", "checkpoint": "last",
                                    "fold_bn": str(fold_bn).lower()})
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "application/octet-stream"
        name = _disposition(r)
        assert name.endswith("-folded.onnx" if fold_bn else "-last-epoch3.onnx")
        assert job_id in name
        assert r.headers["x-checkpoint-epoch"] == "3"
        model = onnx.load_from_string(r.content)
        ops = {n.op_type for n in model.graph.node}
        assert ("BatchNormalization" in ops) is not fold_bn
        props = {p.key: p.value for p in model.metadata_props}
        assert json.loads(props["bnlab.classes"]) == ["0", "1"]  # the dataset's labels
        assert props["bnlab.job_id"] == job_id
        assert json.loads(props["bnlab.checkpoint"])["epoch"] == 3
        session = ort.InferenceSession(r.content, providers=["CPUExecutionProvider"])
        for n in (1, 4, 100):  # predict's limit in these tests is 100 rows
            rows = _rows(n)
            (got,) = session.run(None, {"input": np.array(rows, dtype=np.float32)})
            assert np.abs(got - _predicted(client, job_id, rows)).max() < 1e-5


def test_export_is_cached_and_revalidates(client: TestClient, trained: dict[str, Any]) -> None:
    url = f"/v1/jobs/{trained['id']}/export"
    first = client.get(url)  # defaults: onnx, last, unfolded
    assert first.status_code == 200
    assert first.headers["etag"]
    exports = client.app.state.exports  # type: ignore[attr-defined]
    assert exports.size_bytes >= len(first.content)
    again = client.get(url, params={"format": "onnx", "checkpoint": "last", "fold_bn": "false"})
    assert again.content == first.content
    assert again.headers["etag"] == first.headers["etag"]
    assert exports.size_bytes == len(first.content)  # served from the cache, not rebuilt
    r = client.get(url, headers={"If-None-Match": first.headers["etag"]})
    assert r.status_code == 304
    assert not r.content
    other = client.get(url, params={"fold_bn": "true"})
    assert other.headers["etag"] != first.headers["etag"]


def test_safetensors_zip_and_torch_export(client: TestClient, trained: dict[str, Any]) -> None:
    job_id = trained["id"]
    url = f"/v1/jobs/{job_id}/export"
    rows = _rows(7)
    expected = _predicted(client, job_id, rows, "best")
    for fold_bn in (False, True):
        r = client.get(url, params={"format": "safetensors", "checkpoint": "best",
                                    "fold_bn": fold_bn})
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "application/zip"
        assert _disposition(r).endswith(".zip")
        assert "-best-" in _disposition(r)
        weights, side = read_safetensors_zip(r.content)
        assert side["classes"] == ["0", "1"]
        assert side["job_id"] == job_id
        assert side["checkpoint"]["kind"] == "best"
        assert side["fold_bn"] is fold_bn
        assert side["spec"]["network"]["layers"][1]["type"] == "batchnorm"
        got = rebuild(weights, side)(torch.tensor(rows, dtype=torch.float32)).detach().numpy()
        assert np.abs(got - expected).max() < 1e-5

        r = client.get(url, params={"format": "torch_export", "checkpoint": "best",
                                    "fold_bn": fold_bn})
        assert r.status_code == 200
        assert r.headers["content-type"] == "application/octet-stream"
        assert _disposition(r).endswith(".pt2")
        module = torch.export.load(io.BytesIO(r.content)).module()
        got = module(torch.tensor(rows, dtype=torch.float32)).detach().numpy()
        assert np.abs(got - expected).max() < 1e-5


def test_bad_parameters_are_422(client: TestClient, trained: dict[str, Any]) -> None:
    url = f"/v1/jobs/{trained['id']}/export"
    for params in ({"format": "pickle"}, {"format": "torchscript"}, {"checkpoint": "7"},
                   {"checkpoint": "newest"}, {"fold_bn": "maybe"}):
        r = client.get(url, params=params)
        assert r.status_code == 422, (params, r.text)
        assert r.json()["error"] == "ValidationError"
    assert "format" in str(client.get(url, params={"format": "pickle"}).json()["detail"])


KEY_A = "bnlab_test-key-a-0123456789abcdef0123456789"
KEY_B = "bnlab_test-key-b-0123456789abcdef0123456789"


def test_no_checkpoint_is_409_and_another_keys_job_is_404(tmp_path: Path) -> None:
    settings = ApiSettings(home=tmp_path, database_url=None, broker_url=None,
                           api_keys=f"{KEY_A},{KEY_B}")
    migrated_sqlite(settings.sqlalchemy_url)
    a, b = ({"Authorization": f"Bearer {k}"} for k in (KEY_A, KEY_B))
    with TestClient(create_app(settings)) as client:
        job_id = client.post("/v1/jobs", json=generated_body(), headers=a).json()["id"]
        url = f"/v1/jobs/{job_id}/export"
        r = client.get(url, headers=a)  # queued: nothing trained yet
        assert r.status_code == 409
        assert r.json()["error"] == "Conflict"
        assert "no 'last' checkpoint" in r.json()["detail"]
        assert client.get(url, params={"checkpoint": "best"}, headers=a).status_code == 409
        theirs = client.get(url, headers=b)
        missing = client.get(f"/v1/jobs/{'0' * 32}/export", headers=b)
        assert theirs.status_code == missing.status_code == 404
        assert client.get(url).status_code == 401
        schema = client.get("/openapi.json").json()["paths"]["/v1/jobs/{job_id}/export"]["get"]
        assert {"200", "304", "404", "409", "422"} <= set(schema["responses"])


def test_client_and_cli_download_exports(client: TestClient, trained: dict[str, Any],
                                         tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    import httpx
    from typer.testing import CliRunner

    import cli.client_commands as commands
    from bnlab import AsyncClient, Client
    from cli.main import app as cli_app

    job_id = trained["id"]
    with Client(http_client=client) as bn:
        content = bn.jobs.export(job_id, format="safetensors", fold_bn=True,
                                 path=tmp_path / "m.zip")
        job_content = bn.jobs.get(job_id).export(format="safetensors", fold_bn=True)
    assert (tmp_path / "m.zip").read_bytes() == content == job_content
    assert read_safetensors_zip(content)[1]["fold_bn"] is True

    async def via_async() -> bytes:
        transport = httpx.ASGITransport(app=client.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as http, \
                AsyncClient(http_client=http) as bn:
            job = await bn.jobs.get(job_id)
            return await job.export(format="onnx", checkpoint="best")
    onnx_bytes = asyncio.run(via_async())
    assert onnx.load_from_string(onnx_bytes).graph.input[0].name == "input"

    # The CLI, on the same in-process app (its Client gets the test transport).
    monkeypatch.setattr(commands, "Client", lambda *_, **__: Client(http_client=client))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli_app, ["export", job_id, "--format", "torch_export",
                                          "--checkpoint", "best", "--fold-bn"])
    assert result.exit_code == 0, result.output
    written = tmp_path / f"{job_id}-best-folded.pt2"
    module = torch.export.load(written).module()
    rows = _rows(3)
    got = module(torch.tensor(rows, dtype=torch.float32)).detach().numpy()
    assert np.abs(got - _predicted(client, job_id, rows, "best")).max() < 1e-5
    bad = CliRunner().invoke(cli_app, ["export", job_id, "--format", "pickle"])
    assert bad.exit_code == 2


def test_export_cache_budget_staleness_and_single_build() -> None:
    import threading

    from api.predictors import ExportCache

    cache = ExportCache(max_bytes=10)
    builds: list[str] = []

    def build(content: bytes) -> Any:
        def run() -> tuple[bytes, str, str]:
            builds.append(content.decode())
            return content, "application/octet-stream", ".onnx"
        return run

    key = ("job", "last", "sha1", "onnx", False, None)
    assert cache.produce(key, build(b"aaaa"))[0] == b"aaaa"
    assert cache.produce(key, build(b"zzzz"))[0] == b"aaaa"
    assert builds == ["aaaa"]
    newer = ("job", "last", "sha2", "onnx", False, None)
    cache.produce(newer, build(b"bbbb"))
    assert cache.get(key) is None
    assert cache.size_bytes == 4
    cache.produce(("other", "last", "s", "onnx", False, None), build(b"cccc"))
    cache.produce(("third", "last", "s", "onnx", False, None), build(b"dddd"))
    assert cache.get(newer) is None
    assert cache.size_bytes == 8
    cache.produce(("huge", "last", "s", "onnx", False, None), build(b"x" * 11))
    assert cache.size_bytes == 8  # larger than the budget: served, not kept

    # Two requests for one file at once: one build, both get its bytes.
    gate = threading.Event()
    slow_builds: list[int] = []

    class Arrivals:
        """The cache's build lock, counting who reached it (missed the cache) first."""

        def __init__(self, lock: Any) -> None:
            self.lock, self.arrived = lock, threading.Semaphore(0)

        def __enter__(self) -> Any:
            self.arrived.release()
            return self.lock.__enter__()

        def __exit__(self, *exc: Any) -> Any:
            return self.lock.__exit__(*exc)

    arrivals = Arrivals(cache._build)
    cache._build = arrivals  # type: ignore[assignment]

    def slow() -> tuple[bytes, str, str]:
        slow_builds.append(1)
        assert gate.wait(120)
        return b"slow", "application/zip", ".zip"

    got: list[bytes] = []
    slow_key = ("s", "best", "h", "safetensors", True, ("a", "b"))
    threads = [threading.Thread(target=lambda: got.append(cache.produce(slow_key, slow)[0]))
               for _ in range(2)]
    for t in threads:
        t.start()
    for _ in threads:  # both missed the cache and came for the lock while nothing is built
        assert arrivals.arrived.acquire(timeout=120)
    gate.set()
    for t in threads:
        t.join(120)
    assert got == [b"slow", b"slow"]
    assert slow_builds == [1]
