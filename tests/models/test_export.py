"""Exports of trained checkpoints, run by something other than bnlab's predictor: onnxruntime
for ONNX, `torch.export.load` for .pt2, and the sidecar's torch-only recipe for safetensors;
each must give `/predict`'s probabilities for random rows at several batch sizes."""

from __future__ import annotations

import io
import json
import zipfile
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from models.datasets import Table
from models.export import (
    EXPORT_FORMAT,
    Source,
    export,
    read_safetensors_zip,
    rebuild,
    to_onnx,
    to_safetensors_zip,
    to_torch_export,
)
from models.inference import load_predictor
from models.resolution import resolve_job
from models.spec import NOTEBOOK_BN_LAYERS, JobSpec
from models.trainer import train_job

BATCHES = (1, 3, 257)
# torch.export's own deprecation noise (its pytree internals), not something bnlab calls.
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning")]


def _table(n_classes: int, d: int = 2, n: int = 120) -> Table:
    rng = np.random.default_rng(n_classes)
    y = rng.integers(0, n_classes, n).astype(np.int64)
    X = (rng.normal(size=(n, d)) * 2 + y[:, None]).astype(np.float32)
    return Table(X, y, [f"x{i}" for i in range(d)], [f"c{c}" for c in range(n_classes)], "y")


def _train(network: dict[str, Any], n_classes: int = 2, d: int = 2) -> bytes:
    table = _table(n_classes, d)
    spec = JobSpec.model_validate({"dataset": {"id": "t"}, "network": network,
                                   "training": {"epochs": 3, "batch_size": 16, "seed": 3,
                                                "optimizer": {"name": "adam", "lr": 0.05}}})
    job = resolve_job(spec, n_features=d, n_classes=n_classes, n_rows=table.n_rows)
    return train_job(job, table, device=torch.device("cpu")).checkpoints["last"]


# name -> (network, classes, features): the three BN placements, the notebook's explicit
# layers, a 3-class softmax and a network with the other layer types.
NETWORKS: dict[str, tuple[dict[str, Any], int, int]] = {
    "none": ({"hidden": [5, 3], "batchnorm": "none"}, 2, 2),
    "before_activation": ({"hidden": [5, 3], "batchnorm": "before_activation"}, 2, 2),
    "after_activation": ({"hidden": [5, 3], "batchnorm": "after_activation"}, 2, 2),
    "notebook": ({"layers": NOTEBOOK_BN_LAYERS}, 2, 2),
    "multiclass": ({"hidden": [6], "batchnorm": "before_activation"}, 3, 4),
    "other_layers": ({"layers": [
        {"type": "dense", "units": 6}, {"type": "batchnorm", "affine": False},
        {"type": "activation", "activation": "leaky_relu", "negative_slope": 0.2},
        {"type": "dropout", "rate": 0.3}, {"type": "dense", "units": 4, "activation": "gelu"},
        {"type": "layernorm"}, {"type": "dense", "units": 4, "activation": "tanh"},
        {"type": "dense", "units": 3, "activation": "softmax"}]}, 3, 3),
}


@pytest.fixture(scope="module")
def blobs() -> dict[str, bytes]:
    return {name: _train(net, k, d) for name, (net, k, d) in NETWORKS.items()}


def _rows(d: int, n: int, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed + n).normal(size=(n, d)) * 3).astype(np.float32)


def _expected(blob: bytes, x: np.ndarray) -> np.ndarray:
    return np.array(load_predictor(blob).predict(x.tolist()).probabilities)


CASES = [(name, fold) for name in NETWORKS for fold in (False, True)
         if not (name == "none" and fold)]  # nothing to fold without BN


@pytest.mark.parametrize(("name", "fold_bn"), CASES)
def test_onnx_matches_the_predictor(blobs: dict[str, bytes], name: str, fold_bn: bool) -> None:
    blob, (_, k, d) = blobs[name], NETWORKS[name]
    content = to_onnx(blob, fold_bn=fold_bn, source=Source("job-1", "last", 3, "ab"))
    model = onnx.load_from_string(content)
    onnx.checker.check_model(model)
    ops = {node.op_type for node in model.graph.node}
    # Unfolded keeps every BN node as trained; folded has none (affine=False BN folds too).
    assert ("BatchNormalization" in ops) == (not fold_bn and name != "none")
    if name == "other_layers":
        assert "LayerNormalization" in ops
    props = {p.key: p.value for p in model.metadata_props}
    assert props["bnlab.format"] == EXPORT_FORMAT
    assert props["bnlab.job_id"] == "job-1"
    assert json.loads(props["bnlab.classes"]) == [f"c{c}" for c in range(k)]
    assert json.loads(props["bnlab.fold_bn"]) is fold_bn
    session = ort.InferenceSession(content, providers=["CPUExecutionProvider"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, out.name) == ("input", "probabilities")
    assert isinstance(inp.shape[0], str)
    assert inp.shape[1] == d
    for n in BATCHES:
        x = _rows(d, n)
        (got,) = session.run(None, {"input": x})
        assert got.shape == (n, k)
        assert np.abs(got - _expected(blob, x)).max() < 1e-5


def test_bn_layers_really_differ_from_identity(blobs: dict[str, bytes]) -> None:
    # The comparisons above would be vacuous if BN held its initial statistics.
    from models.checkpoint import decode

    for name in ("before_activation", "after_activation", "notebook", "multiclass"):
        model = decode(blobs[name]).model
        means = [v for k, v in model.items() if k.endswith("running_mean")]
        variances = [v for k, v in model.items() if k.endswith("running_var")]
        assert means
        assert all(v.abs().max() > 1e-3 for v in means)
        assert all((v - 1).abs().max() > 1e-3 for v in variances)


def test_batchnorm_without_running_stats_uses_the_batch() -> None:
    # track_running_stats=False normalizes with the batch's own statistics even in eval mode:
    # nothing to fold, and the exported graph must do the same as the predictor does.
    blob = _train({"layers": [{"type": "dense", "units": 4, "activation": "relu"},
                              {"type": "batchnorm", "track_running_stats": False},
                              {"type": "dense", "units": 1, "activation": "sigmoid"}]})
    for fold_bn in (False, True):
        session = ort.InferenceSession(to_onnx(blob, fold_bn=fold_bn))
        x = _rows(2, 9)
        (got,) = session.run(None, {"input": x})
        assert np.abs(got - _expected(blob, x)).max() < 1e-5


@pytest.mark.parametrize("name", ["notebook", "multiclass", "other_layers"])
def test_torch_export_program_matches(blobs: dict[str, bytes], name: str) -> None:
    blob, (_, k, d) = blobs[name], NETWORKS[name]
    for fold_bn in (False, True):
        program = torch.export.load(io.BytesIO(to_torch_export(blob, fold_bn=fold_bn)))
        module = program.module()
        for n in BATCHES:
            x = _rows(d, n, seed=1)
            got = module(torch.from_numpy(x)).detach().numpy()
            assert got.shape == (n, k)
            assert np.abs(got - _expected(blob, x)).max() < 1e-5


@pytest.mark.parametrize("name", ["notebook", "multiclass", "other_layers", "none"])
@pytest.mark.parametrize("fold_bn", [False, True])
def test_safetensors_zip_rebuilds_with_torch_alone(blobs: dict[str, bytes], name: str,
                                                   fold_bn: bool) -> None:
    blob, (_, k, d) = blobs[name], NETWORKS[name]
    content = to_safetensors_zip(blob, fold_bn=fold_bn, classes=None,
                                 source=Source("job-2", "best", 3, "cd"))
    with zipfile.ZipFile(io.BytesIO(content)) as z:
        assert sorted(z.namelist()) == ["README.txt", "model.json", "model.safetensors"]
    weights, side = read_safetensors_zip(content)
    assert side["format"] == EXPORT_FORMAT
    assert side["fold_bn"] is fold_bn
    assert side["classes"] == [f"c{c}" for c in range(k)]
    assert side["output"] == ("sigmoid" if k == 2 else "softmax")
    assert side["input"] == {"n_features": d, "shape": [d], "dtype": "float32", "mean": None,
                             "std": None}
    assert side["checkpoint"] == {"kind": "best", "epoch": 3, "sha256": "cd"}
    assert side["spec"]["network"] == NETWORKS[name][0] | side["spec"]["network"]
    types = [m["type"] for m in side["modules"]]
    assert ("BatchNorm1d" in types) == (not fold_bn and name != "none")
    # The weights file alone carries the same sidecar in its header.
    header = json.loads(weights[8:8 + int.from_bytes(weights[:8], "little")])
    assert json.loads(header["__metadata__"]["bnlab_export"]) == side
    # The README's recipe, literally: torch.nn classes by name, then the state dict.
    model = rebuild(weights, side)
    for n in BATCHES:
        x = _rows(d, n, seed=2)
        got = model(torch.from_numpy(x)).detach().numpy()
        assert np.abs(got - _expected(blob, x)).max() < 1e-5


def test_class_names_override_and_dispatch(blobs: dict[str, bytes]) -> None:
    blob = blobs["notebook"]
    art = export(blob, "safetensors", fold_bn=False, classes=["outer", "inner"])
    assert art.media_type == "application/zip"
    assert art.extension == ".zip"
    assert read_safetensors_zip(art.content)[1]["classes"] == ["outer", "inner"]
    assert export(blob, "torch_export", fold_bn=True).extension == ".pt2"
    with pytest.raises(ValueError, match="unknown export format"):
        export(blob, "pickle", fold_bn=False)  # type: ignore[arg-type]
