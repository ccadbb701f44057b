"""Export: how long each format takes to build from a checkpoint, what a cached download costs,
and how the exported ONNX model runs in onnxruntime next to the torch predictor.

    .venv/bin/python -m bench.export [--quick]

The checkpoint is the notebook's BN network (a few epochs). Builds are timed cold (each
format's first build in this process also pays its imports and tracing warm-up, so the best of
a few runs is reported beside the first). The route caches each (checkpoint, format, fold), so
a second GET is a cache hit; that is timed through the route's code in-process.
"""

from __future__ import annotations

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

GROUP = "export"
BIG = 100_000


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def run(quick: bool) -> list[Row]:
    import onnxruntime as ort

    from bench.inference import _Service
    from models.export import to_onnx, to_safetensors_zip, to_torch_export
    from models.inference import load_predictor
    from models.network import apply_head

    torch.set_num_threads(1)
    rows: list[Row] = []
    repeats = 0 if quick else 3
    with tempfile.TemporaryDirectory(prefix="bnlab-bench-export-") as tmp:
        svc = _Service(Path(tmp), epochs=5)
        blob = svc.blob
        builds: dict[str, Callable[[], bytes]] = {
            "onnx (BN kept)": lambda: to_onnx(blob, fold_bn=False),
            "onnx (BN folded)": lambda: to_onnx(blob, fold_bn=True),
            "torch_export .pt2": lambda: to_torch_export(blob, fold_bn=False),
            "safetensors zip + sidecar": lambda: to_safetensors_zip(blob, fold_bn=False),
        }
        for name, build in builds.items():
            first, content = _timed(build)
            best = min([first] + [_timed(build)[0] for _ in range(repeats)])
            rows.append(Row(GROUP, f"build {name}", best * 1000, "ms",
                            note=f"first {first * 1000:.0f} ms, {len(content):,} bytes"))

        # A cached download through the route's code (no HTTP): the cache hit.
        from fastapi.testclient import TestClient

        with TestClient(svc.app) as client:
            url = f"/v1/jobs/{svc.job_id}/export"
            cold, r = _timed(lambda: client.get(url, params={"format": "onnx"}))
            r.raise_for_status()
            hits = [_timed(lambda: client.get(url, params={"format": "onnx"}))[0] * 1000
                    for _ in range(20 if quick else 100)]
        hit = statistics.median(hits)
        rows.append(Row(GROUP, "GET /export?format=onnx, cached (TestClient)", hit, "ms",
                        ratio=cold * 1000 / hit, ratio_of="faster than the first GET",
                        note=f"first GET {cold * 1000:.0f} ms"))

        # onnxruntime vs the torch predictor's model (forward + head), one thread each.
        onnx_folded = to_onnx(blob, fold_bn=True)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        session = ort.InferenceSession(onnx_folded, opts, providers=["CPUExecutionProvider"])
        model = load_predictor(blob).model
        x1 = np.array([[0.25, -0.75]], dtype=np.float32)
        xb = (np.random.default_rng(0).normal(size=(BIG, 2)) * 2).astype(np.float32)

        def torch_call(x: np.ndarray) -> Callable[[], Any]:
            t = torch.from_numpy(x)

            def call() -> Any:
                with torch.inference_mode():
                    return apply_head(model(t)).numpy()
            return call

        def ort_call(x: np.ndarray) -> Callable[[], Any]:
            return lambda: session.run(None, {"input": x})[0]

        diff = float(np.abs(ort_call(xb)() - torch_call(xb)()).max())
        n = 300 if quick else 3000
        t1 = statistics.median(_timed(torch_call(x1))[0] for _ in range(n)) * 1e6
        o1 = statistics.median(_timed(ort_call(x1))[0] for _ in range(n)) * 1e6
        rows.append(Row(GROUP, "onnxruntime 1 row (BN folded)", o1, "us",
                        ratio=t1 / o1, ratio_of="speed-up vs torch predictor model",
                        note=f"torch {t1:.1f} us"))
        tb = min(_timed(torch_call(xb))[0] for _ in range(3 if quick else 10))
        ob = min(_timed(ort_call(xb))[0] for _ in range(3 if quick else 10))
        rows.append(Row(GROUP, "onnxruntime 100k rows (BN folded)", BIG / ob, "rows/s",
                        ratio=tb / ob, ratio_of="speed-up vs torch predictor model",
                        note=f"torch {BIG / tb:,.0f} rows/s"))
        rows.append(Row(GROUP, "onnxruntime vs torch max abs diff (100k rows)", diff, "",
                        target="< 1e-5", ok=diff < 1e-5))
    return rows


def main() -> None:
    print_table(run("--quick" in sys.argv[1:]))


if __name__ == "__main__":
    main()
