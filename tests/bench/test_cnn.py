"""The CNN benchmark: every variant trains the digits job and its rows compare them to bnlab
(timings are reported, never asserted)."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys

import pytest
import torch

from bench.cnn import cnn_job, load_table, measure, user_model
from bench.report import Row
from bench.run_all import MODULES, REPO, select
from models.network import build_network

pytestmark = pytest.mark.slow

CPU = torch.device("cpu")
NAMES = ["bnlab trainer (K=1)", "plain DataLoader loop", "hand-tuned PyTorch loop",
         "2 seeds one job after another", "2 seeds stacked (train_many)"]


def _accuracies(row: Row) -> list[float]:
    """The final val_accuracy values a row's note reports (one, or a mean and a max diff)."""
    return [float(v) for v in re.findall(r"val_accuracy(?: mean)? (\S+?)(?:[,;)]|$)",
                                         row.note)]


def _check(rows: list[Row]) -> None:
    assert [r.name for r in rows] == NAMES
    assert all(r.unit == "s" and r.value > 0 and math.isfinite(r.value) for r in rows)
    ours = rows[0].value
    for r in rows[1:3]:  # the peer's seconds over bnlab's
        assert r.ratio == pytest.approx(r.value / ours)
        assert r.ratio_of == "bnlab speed-up"
        assert re.match(r"(NCHW|channels_last); ", r.note)
    plain, stacked = rows[1], rows[4]
    assert plain.target == ">= 1.5x"
    assert plain.ok is not None
    assert stacked.target == ">= 4x"
    assert stacked.ok is not None
    assert stacked.ratio == pytest.approx(rows[3].value / stacked.value)
    for r in rows:
        (acc,) = _accuracies(r)
        assert math.isfinite(acc), r
        assert 0.0 <= acc <= 1.0, r
    diff = float(re.search(r"max abs diff (\S+)$", stacked.note).group(1))  # type: ignore[union-attr]
    assert 0.0 <= diff <= 1.0


def test_rows_compare_every_variant_with_bnlab() -> None:
    threads = torch.get_num_threads()
    rows = measure(epochs=1, repeats=1, device=CPU, threads=1, stack=2)
    assert torch.get_num_threads() == threads  # the caller's setting is restored
    _check(rows)
    assert rows[0].note.startswith("cpu, 1 thread, 1 epoch x 23 steps, median of 1")


def test_the_user_network_starts_from_bnlabs_weights() -> None:
    table = load_table()
    assert table.X.shape == (1797, 1, 8, 8)
    assert table.X.dtype.name == "float32"
    assert table.X.min() >= 0.0
    assert table.X.max() <= 1.0
    assert table.n_classes == 10
    job = cnn_job(table, 1, seed=3)
    x = torch.from_numpy(table.X[:32])
    ours = build_network(job.network, seed=3).eval()
    theirs = user_model(job).eval()
    torch.testing.assert_close(theirs(x), ours(x))


def test_cnn_is_a_bench_module() -> None:
    assert "cnn" in MODULES
    assert select("cnn") == ["cnn"]


def test_the_command_prints_the_table() -> None:
    proc = subprocess.run([sys.executable, "-m", "bench.cnn", "--quick", "--epochs", "1",
                           "--repeats", "1", "--stack", "2"], cwd=REPO, capture_output=True,
                          text=True, timeout=120, check=False,
                          env={**os.environ, "COLUMNS": "250"})
    assert proc.returncode == 0, proc.stderr
    for name in NAMES:
        assert name in proc.stdout
    assert "bnlab speed-up" in proc.stdout
    assert "vs one after another" in proc.stdout


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available")
def test_cnn_bench_on_cuda() -> None:
    rows = measure(epochs=1, repeats=1, device=torch.device("cuda"), threads=1, stack=2)
    _check(rows)
    assert rows[0].note.startswith("cuda")
