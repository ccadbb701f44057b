"""The task body trains on the datasets beyond CSV: an uploaded .npz (stored with its format),
scikit-learn's digits and MNIST read from the worker's data directory."""

from __future__ import annotations

import gzip
import io
import struct
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from models.datasets import class_counts
from models.db import repository as repo
from models.image_data import parse_npz
from models.spec import Limits
from tests.support.runs import WORKER, add_job, job_state
from worker.training_run import RunContext, run_job

CONV = {"conv": [2], "hidden": [4]}


def _idx(a: np.ndarray) -> bytes:
    a = np.asarray(a, dtype=np.uint8)
    return bytes([0, 0, 0x08, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape) + a.tobytes()


def _body(dataset: dict[str, Any], network: dict[str, Any]) -> dict[str, Any]:
    return {"dataset": dataset, "network": network,
            "training": {"epochs": 2, "batch_size": 16, "validation_split": 0.25}}


def test_uploaded_npz_images_train(sessions: sessionmaker[Session]) -> None:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    np.savez_compressed(buf, x=rng.integers(0, 255, (40, 6, 6), dtype=np.uint8),
                        y=np.array(["a", "b"] * 20))
    content = buf.getvalue()
    table = parse_npz(content)
    with sessions.begin() as session:
        dataset_id = repo.create_dataset(
            session, content=content, format="npz", input_shape=table.input_shape,
            n_rows=table.n_rows, n_features=table.n_features,
            columns=[*table.feature_names, table.label_column], label_column=table.label_column,
            classes=table.classes, class_counts=class_counts(table)).id
    ctx = RunContext(sessions=sessions, worker=WORKER, limits=Limits())
    job_id = add_job(sessions, _body({"id": dataset_id}, CONV))
    assert run_job(job_id, ctx) == "succeeded", job_state(sessions, job_id)[0].error
    assert job_state(sessions, job_id)[1] == [1, 2]


def test_digits_and_mnist_from_the_data_dir_train(sessions: sessionmaker[Session],
                                                  tmp_path: Path) -> None:
    folder = tmp_path / "mnist"
    folder.mkdir()
    pixels = np.random.default_rng(1).integers(0, 256, (32, 28, 28))
    (folder / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx(pixels)))
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx(np.arange(32) % 10)))
    ctx = RunContext(sessions=sessions, worker=WORKER, limits=Limits(), data_dir=tmp_path)
    mnist = add_job(sessions, _body({"name": "mnist", "split": "test", "limit": 24}, CONV))
    digits = add_job(sessions, _body({"name": "digits", "layout": "flat"}, {"hidden": [8]}))
    for job_id in (mnist, digits):
        assert run_job(job_id, ctx) == "succeeded", job_state(sessions, job_id)[0].error
    # without the data directory the job fails with what to set
    lost = add_job(sessions, _body({"name": "mnist", "split": "test"}, CONV))
    no_dir = RunContext(sessions=sessions, worker=WORKER, limits=Limits())
    assert run_job(lost, no_dir) == "failed"
    assert "BNLAB_DATA_DIR" in job_state(sessions, lost)[0].error
