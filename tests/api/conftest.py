"""An app on a real, migrated SQLite file and kombu's filesystem broker, both in tmp_path."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from api.settings import ApiSettings
from models.db import upgrade


@pytest.fixture
def settings(tmp_path: Path) -> ApiSettings:
    s = ApiSettings(home=tmp_path, database_url=None, broker_url=None, max_predict_rows=100)
    upgrade(s.sqlalchemy_url)
    return s


@pytest.fixture
def client(settings: ApiSettings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture
def dataset_id(client: TestClient, notebook_csv: bytes) -> str:
    r = client.post("/v1/datasets", files={"file": ("concertriccir2.csv", notebook_csv,
                                                    "text/csv")})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def queued_messages(settings: ApiSettings, queue: str = "cpu") -> list[dict[str, Any]]:
    """Messages the API left in the filesystem broker for `queue`: headers plus decoded body."""
    out = []
    for path in sorted((settings.broker_folder / "queue").glob(f"*.{queue}.msg")):
        raw = json.loads(path.read_text())
        body = json.loads(base64.b64decode(raw["body"]))
        out.append({"task": raw["headers"]["task"], "args": body[0], "kwargs": body[1]})
    return out


def notebook_body(name: str, layers: list[dict[str, Any]], dataset_id: str) -> dict[str, Any]:
    """The issue's body, verbatim apart from the id."""
    return {"name": name, "dataset": {"id": dataset_id}, "network": {"layers": layers},
            "training": {"epochs": 200, "batch_size": 32,
                         "optimizer": {"name": "adam", "lr": 0.001},
                         "validation_split": 0.2, "split": "tail", "seed": 1}}


CIRCLES = {"name": "concentric_circles", "n_samples": 200, "noise": 0.05}


def generated_body(**training: Any) -> dict[str, Any]:
    return {"name": "gen", "dataset": CIRCLES,
            "network": {"hidden": [4], "batchnorm": "after_activation"},
            "training": {"epochs": 3, "batch_size": 32, **training}}
