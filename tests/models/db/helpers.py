"""Small builders shared by the repository tests."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from models.db import repository as repo
from models.db.tables import Job

SPEC: dict[str, Any] = {"name": "bn", "network": {"hidden": [3, 2]}, "training": {"epochs": 5}}


def make_job(session: Session, **overrides: Any) -> Job:
    kwargs: dict[str, Any] = {"spec": SPEC, "name": "bn", "epochs_total": 5, "queue": "cpu",
                              "dataset_id": None, "warnings": []}
    kwargs.update(overrides)
    return repo.create_job(session, **kwargs)


def make_dataset_kwargs(content: bytes = b"X,Y,class\n0.1,0.2,0\n0.3,0.4,1\n") -> dict[str, Any]:
    return {"content": content, "name": "circles", "filename": "c.csv", "n_rows": 2,
            "n_features": 2, "columns": ["X", "Y", "class"], "label_column": "class",
            "classes": ["0", "1"], "class_counts": {"0": 1, "1": 1}}
