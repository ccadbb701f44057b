"""The CUDA path: stacked training (dense and conv), predict and export from a GPU-trained
checkpoint (tests/worker/test_cuda_job.py runs a worker job with `device: cuda`). Skipped
where CUDA is absent; scripts/gpu_check.sh runs these on a GPU machine (`pytest -m cuda`)."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch

from models.checkpoint import decode
from models.datasets import Table
from models.devices import select_device
from models.export import to_onnx
from models.inference import load_predictor
from models.resolution import resolve_job
from models.spec import JobSpec
from models.trainer import train_many
from tests.support.conv import NORMS, images, job

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning"),
]
CPU = torch.device("cpu")


def _cuda() -> torch.device:
    return select_device("cuda")


@pytest.mark.parametrize("network", [
    {"hidden": [16, 8], "batchnorm": "before_activation"},
    {"hidden": [16], "batchnorm": "after_activation"},
])
def test_dense_stack_on_cuda_matches_cpu(network: dict[str, Any]) -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 5)).astype(np.float32)
    y = (X[:, 0] + X[:, 1] > 0).astype(np.int64)
    table = Table(X, y, [f"x{i}" for i in range(5)], ["0", "1"], "y")
    spec = JobSpec.model_validate({"dataset": {"id": "t"}, "network": network,
                                   "training": {"epochs": 3, "batch_size": 32}})
    resolved = resolve_job(spec, n_features=5, n_classes=2, n_rows=200)
    gpu = train_many(resolved, table, seeds=[1, 2, 3, 4], device=_cuda())
    cpu = train_many(resolved, table, seeds=[1, 2, 3, 4], device=CPU)
    for g, c in zip(gpu, cpu, strict=True):
        np.testing.assert_allclose(g.history["val_loss"], c.history["val_loss"], atol=1e-3)


@pytest.mark.parametrize("name", list(NORMS))
def test_conv_stack_on_cuda_matches_lone_cuda_runs_and_cpu(name: str) -> None:
    table = images()
    resolved = job(NORMS[name], table, standardize=True)
    stacked = train_many(resolved, table, seeds=[3, 4, 5, 6], device=_cuda())
    for seed, s in zip([3, 4, 5, 6], stacked, strict=True):
        alone = train_many(resolved, table, seeds=[seed], device=_cuda())[0]
        np.testing.assert_allclose(s.history["val_loss"], alone.history["val_loss"], atol=2e-3)
    cpu = train_many(resolved, table, seeds=[3], device=CPU)[0]
    np.testing.assert_allclose(stacked[0].history["val_loss"], cpu.history["val_loss"],
                               atol=5e-3)
    # a GPU-trained checkpoint is plain CPU tensors
    cp = decode(stacked[0].checkpoints["last"])
    assert all(t.device.type == "cpu" for t in cp.model.values())


def test_predict_and_onnx_from_a_cuda_checkpoint() -> None:
    table = images()
    blob = train_many(job(NORMS["batchnorm"], table, standardize=True), table, seeds=[1],
                      device=_cuda())[0].checkpoints["last"]
    on_gpu = load_predictor(blob, device=_cuda()).predict(table.X[:16].tolist())
    on_cpu = load_predictor(blob).predict(table.X[:16].tolist())
    np.testing.assert_allclose(on_gpu.probabilities, on_cpu.probabilities, rtol=1e-4,
                               atol=1e-5)
    session = ort.InferenceSession(to_onnx(blob, fold_bn=True),
                                   providers=["CPUExecutionProvider"])
    (probs,) = session.run(["probabilities"], {"input": table.X[:16]})
    np.testing.assert_allclose(probs, on_cpu.probabilities, rtol=1e-4, atol=1e-5)
