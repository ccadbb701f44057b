"""The training benchmark's peers run the notebook job and its rows compare them to bnlab."""

from __future__ import annotations

import sys

import pytest
import torch

from bench.training import keras_available, keras_fit, load_table, measure, notebook_job
from tests.support.services import unavailable

pytestmark = pytest.mark.slow

CPU = torch.device("cpu")


def test_rows_compare_every_peer_with_bnlab() -> None:
    rows = measure(epochs=2, repeats=1, device=CPU, threads=1, keras=False)
    assert [r.name for r in rows] == ["bnlab trainer", "plain DataLoader loop",
                                      "hand-tuned PyTorch loop"]
    ours = rows[0].value
    assert ours > 0
    assert all(r.unit == "steps/s" for r in rows)
    for r in rows[1:]:
        assert r.value > 0
        assert r.ok is not None
        assert r.target
        # the ratio is bnlab's speed over the peer's
        assert r.ratio == pytest.approx(ours / r.value)


def test_keras_fits_the_same_job_in_a_subprocess() -> None:
    if not keras_available():  # `make` installs the bench extra: CI must run this test
        unavailable("keras is not installed (the `bench` extra)")
    table = load_table()
    job = notebook_job(table, 1)
    seconds, note = keras_fit(job, table, 1, 1, CPU)
    assert len(seconds) == 1
    assert seconds[0] > 0
    assert "torch backend" in note
    assert "keras" not in sys.modules  # its global state stayed in the child
