"""Inference: what `POST /v1/jobs/{id}/predict` costs, in-process and over in-process HTTP.

    .venv/bin/python -m bench.inference [--quick]

A real app (migrated SQLite file in a temporary folder, filesystem broker, no worker) holds the
notebook's BN network trained for a few epochs, its checkpoints stored as the worker stores
them. Measured, with the predictor cache warm:

- **1 row, in-process**: the route's own code (`get_job_or_404` + `checkpoints.predict`, the
  request body validated into `PredictRequest`, a DB session per call), no HTTP. Target: p50
  < 5 ms.
- **1 row over HTTP**: the same through the ASGI app (middleware, routing, JSON both ways) via
  httpx's ASGITransport, no sockets.
- **100k rows in one request**: rows/s in-process and over in-process HTTP (the bench raises
  `max_predict_rows` and `max_body_bytes` for it; the defaults, 10,000 rows and 2 MiB, refuse
  such a request with 413).
- **BN folded vs not**: the eval-mode model's forward + head alone, the serving (folded)
  model vs the checkpoint's layers as trained, for 1 row and 100k rows.
"""

from __future__ import annotations

import asyncio
import gc
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.report import Row, print_table

GROUP = "inference"
BIG = 100_000


def _percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return statistics.median(ordered), p99


def _time_each(fn: Callable[[], Any], n: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000.0)
    return out


def _best_of(fn: Callable[[], Any], repeats: int) -> float:
    """Seconds of the fastest of `repeats` calls (after one warm-up call)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


class _Service:
    """The app with one trained job, and the route's code path callable without HTTP."""

    def __init__(self, home: Path, epochs: int) -> None:
        from fastapi.testclient import TestClient

        from api.main import create_app
        from api.settings import ApiSettings
        from models.datasets import notebook_csv, parse_csv
        from models.db import repository as repo
        from models.db import upgrade
        from models.resolution import resolve_job
        from models.spec import NOTEBOOK_BN_LAYERS, JobSpec
        from models.trainer import train_job

        self.settings = ApiSettings(home=home, database_url=None, broker_url=None,
                                    max_predict_rows=BIG, max_body_bytes=64 * 1024 * 1024,
                                    rate_limit_predictions="")
        upgrade(self.settings.sqlalchemy_url)
        self.app = create_app(self.settings)
        csv = notebook_csv()
        with TestClient(self.app) as client:
            r = client.post("/v1/datasets", files={"file": ("concertriccir2.csv", csv,
                                                            "text/csv")})
            r.raise_for_status()
            body = {"name": "bench-bn", "dataset": {"id": r.json()["id"]},
                    "network": {"layers": NOTEBOOK_BN_LAYERS},
                    "training": {"epochs": epochs, "batch_size": 32, "validation_split": 0.2,
                                 "split": "tail", "optimizer": {"name": "adam", "lr": 1e-3},
                                 "seed": 1}}
            r = client.post("/v1/jobs", json=body)
            r.raise_for_status()
            self.job_id: str = r.json()["id"]
        table = parse_csv(csv)
        job = resolve_job(JobSpec.model_validate(body), n_features=table.n_features,
                          n_classes=table.n_classes, n_rows=table.n_rows)
        result = train_job(job, table, device=torch.device("cpu"))
        self.blob: bytes = result.checkpoints["last"]
        with self.app.state.sessions() as session:
            for kind, blob in result.checkpoints.items():
                repo.put_checkpoint(session, job_id=self.job_id, kind=kind, epoch=epochs,
                                    content=blob)
            session.commit()

    def predict_in_process(self, inputs: list[list[float]]) -> Any:
        """What a POST /predict runs once routed: the job lookup, body validation, the route."""
        from api.auth import ANONYMOUS_PRINCIPAL
        from api.deps import get_job_or_404
        from api.routes import checkpoints
        from api.schemas import PredictRequest

        state = self.app.state
        with state.sessions() as session:
            job = get_job_or_404(self.job_id, session, ANONYMOUS_PRINCIPAL)
            body = PredictRequest.model_validate({"inputs": inputs, "checkpoint": "last"})
            return checkpoints.predict(job, body, session, state.settings, state.predictors)


async def _http_runs(app: Any, job_id: str, one: list[list[float]], big: list[list[float]],
                     n: int, warmup: int) -> tuple[list[float], float]:
    import httpx

    url = f"/v1/jobs/{job_id}/predict"
    headers = {"Content-Type": "application/json"}
    # Bodies encoded up front: the client's own json.dumps is not the server's cost.
    one_body = json.dumps({"inputs": one}).encode()
    big_body = json.dumps({"inputs": big}).encode()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://bench",
                                 timeout=120) as http:
        for _ in range(warmup):
            (await http.post(url, content=one_body, headers=headers)).raise_for_status()
        samples = []
        for _ in range(n):
            t = time.perf_counter()
            r = await http.post(url, content=one_body, headers=headers)
            samples.append((time.perf_counter() - t) * 1000.0)
            r.raise_for_status()
        t = time.perf_counter()
        r = await http.post(url, content=big_body, headers=headers)
        big_s = time.perf_counter() - t
        r.raise_for_status()
        assert len(r.json()["classes"]) == len(big)
    return samples, big_s


def run(quick: bool) -> list[Row]:
    from models.export import eval_network
    from models.inference import Predictor, load_predictor

    torch.set_num_threads(1)  # one request, one core: what a serving thread gets
    n_one, warmup = (300, 30) if quick else (2000, 100)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bnlab-bench-inference-") as tmp:
        svc = _Service(Path(tmp), epochs=5 if quick else 20)
        rng = np.random.default_rng(0)
        one = [[0.25, -0.75]]
        big = (rng.normal(size=(BIG, 2)) * 2).round(6).tolist()

        svc.predict_in_process(one)  # loads the predictor into the cache
        # As `api.main:app` does in a server process: startup's objects out of the collector's
        # sight, so a 100k-row request's garbage collections do not walk them over and over.
        gc.collect()
        gc.freeze()
        p50, p99 = _percentiles(_time_each(lambda: svc.predict_in_process(one), n_one, warmup))
        rows.append(Row(GROUP, "predict 1 row, in-process (route code, cache warm)", p50, "ms",
                        target="p50 < 5 ms", ok=p50 < 5.0, note=f"p99 {p99:.2f} ms"))

        big_s = _best_of(lambda: svc.predict_in_process(big), 1 if quick else 3)
        rows.append(Row(GROUP, "predict 100k rows in one request, in-process", BIG / big_s,
                        "rows/s", note=f"{big_s * 1000:.0f} ms per request"))

        http_samples, http_big_s = asyncio.run(_http_runs(
            svc.app, svc.job_id, one, big, n_one // 2, warmup))
        h50, h99 = _percentiles(http_samples)
        rows.append(Row(GROUP, "predict 1 row over HTTP (ASGI in-process)", h50, "ms",
                        ratio=h50 / p50, ratio_of="vs in-process",
                        note=f"p99 {h99:.2f} ms"))
        rows.append(Row(GROUP, "predict 100k rows over HTTP (ASGI in-process)", BIG / http_big_s,
                        "rows/s", ratio=http_big_s / big_s, ratio_of="time vs in-process",
                        note=f"{http_big_s * 1000:.0f} ms; JSON both ways; needs "
                             "max_predict_rows and max_body_bytes raised"))

        # The model alone: folded (what /predict serves) vs the layers as trained.
        folded = load_predictor(svc.blob)
        unfolded_model, meta = eval_network(svc.blob, fold_bn=False)
        unfolded = Predictor(unfolded_model, folded.classes, folded.input_shape,
                             torch.device("cpu"), meta)
        x1 = torch.tensor(one, dtype=torch.float32)
        xb = torch.tensor(big, dtype=torch.float32)
        from models.network import apply_head

        def forward(model: torch.nn.Module, x: torch.Tensor) -> Callable[[], Any]:
            def call() -> Any:
                with torch.inference_mode():
                    return apply_head(model(x))
            return call

        f1 = statistics.median(_time_each(forward(folded.model, x1), n_one * 2, warmup)) * 1000
        u1 = statistics.median(_time_each(forward(unfolded.model, x1), n_one * 2, warmup)) * 1000
        rows.append(Row(GROUP, "model forward 1 row, BN folded", f1, "us",
                        ratio=u1 / f1, ratio_of="speed-up vs unfolded",
                        note=f"unfolded {u1:.1f} us"))
        repeats = 3 if quick else 10
        fb = _best_of(forward(folded.model, xb), repeats)
        ub = _best_of(forward(unfolded.model, xb), repeats)
        rows.append(Row(GROUP, "model forward 100k rows, BN folded", BIG / fb, "rows/s",
                        ratio=ub / fb, ratio_of="speed-up vs unfolded",
                        note=f"unfolded {BIG / ub:,.0f} rows/s"))
        diff = float((forward(folded.model, xb)() - forward(unfolded.model, xb)()).abs().max())
        rows.append(Row(GROUP, "folded vs unfolded max abs diff (100k rows)", diff, "",
                        target="< 1e-6", ok=diff < 1e-6))
    return rows


def main() -> None:
    rows = run("--quick" in sys.argv[1:])
    print_table(rows)


if __name__ == "__main__":
    main()
