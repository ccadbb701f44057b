"""Checkpoints: safetensors round trip, metadata, and bitwise resume in a fresh process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load

from models.checkpoint import CheckpointError, decode, read_checkpoint_meta
from models.datasets import Table, parse_csv
from models.network import build_network
from models.resolution import ResolvedJob, resolve_job
from models.spec import NOTEBOOK_BN_LAYERS, JobSpec
from models.trainer import train_job
from tests.support.paths import NOTEBOOK_CSV, REPO

CPU = torch.device("cpu")

# Runs in a fresh interpreter: resume from a checkpoint file, write history and final weights.
RESUME = """
import json, sys
import torch
from safetensors.torch import save
torch.set_num_threads(int(sys.argv[6]))  # the parent's: reductions split by thread count
from models.checkpoint import decode, read_checkpoint_meta
from models.datasets import parse_csv
from models.spec import JobSpec
from models.resolution import resolve_job
from models.trainer import train_job
blob = open(sys.argv[1], "rb").read()
table = parse_csv(open(sys.argv[2], "rb").read())
spec = JobSpec.model_validate(read_checkpoint_meta(blob)["spec"])
spec.training.epochs = int(sys.argv[3])
job = resolve_job(spec, n_features=table.n_features, n_classes=table.n_classes,
                  n_rows=table.n_rows)
result = train_job(job, table, device=torch.device("cpu"), resume_from=blob)
json.dump({"history": result.history, "start": result.start_epoch,
           "epochs_run": result.epochs_run}, open(sys.argv[4], "w"))
open(sys.argv[5], "wb").write(result.checkpoints["last"])
"""


def _job(table: Table, epochs: int, **training: object) -> ResolvedJob:
    spec = JobSpec.model_validate({"dataset": {"id": "t"},
                                   "network": {"layers": NOTEBOOK_BN_LAYERS},
                                   "training": {"epochs": epochs, "seed": 5, **training}})
    return resolve_job(spec, n_features=table.n_features, n_classes=table.n_classes,
                       n_rows=table.n_rows)


@pytest.fixture(scope="module")
def notebook(notebook_csv: bytes) -> Table:
    return parse_csv(notebook_csv)


def test_round_trip_through_safetensors(notebook: Table) -> None:
    result = train_job(_job(notebook, 2), notebook, device=CPU)
    blob = result.checkpoints["last"]
    raw = load(blob)  # plain safetensors, readable by any safetensors reader
    assert "model.2.running_mean" in raw
    assert "rng.data" in raw
    assert raw["rng.data"].dtype == torch.uint8
    assert any(k.startswith("optim.0.weight.") for k in raw)
    meta = read_checkpoint_meta(blob)
    assert meta["kind"] == "last"
    assert meta["epoch"] == 2
    assert meta["seed"] == 5
    assert meta["classes"] == ["0", "1"]
    assert meta["metrics"]["val_accuracy"] == result.history["val_accuracy"][-1]
    assert JobSpec.model_validate(meta["spec"]).training.seed == 5
    cp = decode(blob)
    model = build_network(cp.network)
    model.load_state_dict(cp.model)  # strict: an ordinary state dict
    best = decode(result.checkpoints["best"])
    assert best.meta["kind"] == "best"
    assert best.optim == {}
    assert best.rng == {}
    assert best.meta["epoch"] == result.best_epoch


def test_garbage_is_refused() -> None:
    with pytest.raises(CheckpointError):
        read_checkpoint_meta(b"\x00" * 4)
    with pytest.raises(CheckpointError):
        read_checkpoint_meta((10**12).to_bytes(8, "little") + b"{}")
    from safetensors.torch import save
    foreign = save({"w": torch.zeros(2)})
    with pytest.raises(CheckpointError, match="not a bnlab checkpoint"):
        decode(foreign)


def test_resume_in_a_fresh_process_is_bitwise(notebook: Table, tmp_path: Path) -> None:
    n, k = 4, 2
    straight = train_job(_job(notebook, n), notebook, device=CPU)
    first = train_job(_job(notebook, k), notebook, device=CPU)
    assert first.history["loss"] == straight.history["loss"][:k]
    (tmp_path / "k.safetensors").write_bytes(first.checkpoints["last"])
    csv = NOTEBOOK_CSV
    subprocess.run([sys.executable, "-c", RESUME, str(tmp_path / "k.safetensors"), str(csv),
                    str(n), str(tmp_path / "h.json"), str(tmp_path / "end.safetensors"),
                    str(torch.get_num_threads())],
                   check=True, cwd=REPO, timeout=120)
    resumed = json.loads((tmp_path / "h.json").read_text())
    assert resumed["start"] == k + 1
    assert resumed["epochs_run"] == n
    for key, values in straight.history.items():
        assert resumed["history"][key] == values[k:], key
    end = decode((tmp_path / "end.safetensors").read_bytes())
    ref = decode(straight.checkpoints["last"])
    for key, t in ref.model.items():
        assert torch.equal(end.model[key], t), key
    for key, t in ref.optim.items():
        assert torch.equal(end.optim[key], t), key
    assert end.meta["trainer"] == ref.meta["trainer"]


def test_resume_refuses_a_best_checkpoint(notebook: Table) -> None:
    result = train_job(_job(notebook, 1), notebook, device=CPU)
    with pytest.raises(CheckpointError, match="'last' checkpoint"):
        train_job(_job(notebook, 2), notebook, device=CPU, resume_from=result.checkpoints["best"])
