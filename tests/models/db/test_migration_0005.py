"""0005: datasets uploaded before it read back as CSV uploads of shape [n_features]."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from alembic import command
from sqlalchemy import text
from sqlalchemy.orm import Session

from models.db import make_engine, upgrade
from models.db import repository as repo
from models.db.migrate import alembic_config


def test_existing_rows_become_csv_of_their_width(fresh_url: str) -> None:
    command.upgrade(alembic_config(fresh_url), "0004")
    engine = make_engine(fresh_url)
    try:
        with engine.begin() as conn:
            conn.execute(text(
                "INSERT INTO dataset (id, name, filename, content, size, sha256, n_rows, "
                "n_features, columns, label_column, classes, class_counts, owner, created_at) "
                "VALUES (:id, 'old', 'old.csv', :content, 3, :sha, 2, 3, :columns, 'c', "
                ":classes, :counts, 'anonymous', :at)"),
                {"id": "a" * 32, "content": b"abc", "sha": "0" * 64,
                 "columns": json.dumps(["p", "q", "r", "c"]), "classes": json.dumps(["0", "1"]),
                 "counts": json.dumps({"0": 1, "1": 1}), "at": datetime.now(UTC)})
        upgrade(fresh_url)
        with Session(engine) as session:
            row = repo.get_dataset(session, dataset_id="a" * 32)
            assert row is not None
            assert (row.format, row.input_shape) == ("csv", [3])
            new = repo.create_dataset(
                session, content=b"PK", n_rows=2, n_features=12, format="npz",
                input_shape=[3, 2, 2], columns=["c"], label_column="y", classes=["a", "b"],
                class_counts={"a": 1, "b": 1})
            session.commit()
            session.expire_all()
            again = repo.get_dataset(session, dataset_id=new.id)
            assert again is not None
            assert (again.format, again.input_shape) == ("npz", [3, 2, 2])
        command.downgrade(alembic_config(fresh_url), "0004")
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM dataset")).scalar() == 2
    finally:
        engine.dispose()


def test_create_dataset_checks_format_and_shape(session: Session) -> None:
    common: dict[str, Any] = {"content": b"x", "n_rows": 2, "columns": ["c"],
                                 "label_column": "y", "classes": ["a", "b"],
                                 "class_counts": {"a": 1, "b": 1}}
    assert repo.create_dataset(session, n_features=4, **common).input_shape == [4]
    with pytest.raises(ValueError, match="format must be one of"):
        repo.create_dataset(session, n_features=4, format="parquet", **common)
    with pytest.raises(ValueError, match=r"input_shape \[1, 2, 2\] does not hold n_features=5"):
        repo.create_dataset(session, n_features=5, input_shape=[1, 2, 2], **common)
