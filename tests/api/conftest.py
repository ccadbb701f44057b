"""An app on a real, migrated SQLite file and kombu's filesystem broker, both in tmp_path."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient

from api.main import create_app
from api.settings import ApiSettings
from models.datasets import parse_csv
from models.db import make_engine, session_factory
from models.resolution import resolve_job
from models.spec import NOTEBOOK_BN_LAYERS, JobSpec, Limits
from models.trainer import EpochRecord, TrainingCallbacks, train_job
from tests.support.app import migrated_settings
from tests.support.bodies import notebook_body
from worker.callbacks import StackWriter
from worker.training_run import RunContext


@pytest.fixture
def settings(tmp_path: Path) -> ApiSettings:
    return migrated_settings(tmp_path)


@pytest.fixture
def client(settings: ApiSettings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture
def ctx(settings: ApiSettings) -> Iterator[RunContext]:
    """The worker's task body on the app's database, for tests that train queued jobs."""
    engine = make_engine(settings.sqlalchemy_url)
    yield RunContext(sessions=session_factory(engine), worker="test-worker", limits=Limits())
    engine.dispose()


@pytest.fixture
def dataset_id(client: TestClient, notebook_csv: bytes) -> str:
    r = client.post("/v1/datasets", files={"file": ("concertriccir2.csv", notebook_csv,
                                                    "text/csv")})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


class StoreEpochs(TrainingCallbacks):
    """The worker's epoch writer (StackWriter, writing every epoch) without its lease: every
    epoch's row and checkpoints go to the DB as the worker writes them."""

    def __init__(self, client: TestClient, job_id: str) -> None:
        self.job_id = job_id
        self.writer = StackWriter(client.app.state.sessions)  # type: ignore[attr-defined]
        self.writer.join(job_id, threading.Event())

    def on_epoch_end(self, record: EpochRecord) -> None:
        self.writer.add(self.job_id, record)


@pytest.fixture
def trained(client: TestClient, dataset_id: str, notebook_csv: bytes) -> dict[str, Any]:
    """The notebook's BN network trained 3 epochs, its checkpoints stored as the worker does."""
    body = notebook_body("bn", NOTEBOOK_BN_LAYERS, dataset_id)
    body["training"]["epochs"] = 3
    job_id = client.post("/v1/jobs", json=body).json()["id"]
    table = parse_csv(notebook_csv)
    spec = JobSpec.model_validate(body)
    resolved = resolve_job(spec, n_features=table.n_features, n_classes=table.n_classes,
                           n_rows=table.n_rows)
    result = train_job(resolved, table, device=torch.device("cpu"),
                       callbacks=StoreEpochs(client, job_id))
    return {"id": job_id, "result": result, "rows": table.X[:5].tolist()}
