"""Uploaded datasets."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from models.db.tables import ANONYMOUS, DATASET_FORMATS, Dataset


def create_dataset(
    session: Session, *, content: bytes, n_rows: int, n_features: int, columns: list[str],
    label_column: str, classes: list[str], class_counts: dict[str, int],
    name: str | None = None, filename: str | None = None, sha256: str | None = None,
    owner: str = ANONYMOUS, format: str = "csv", input_shape: Sequence[int] | None = None,
) -> Dataset:
    """Add a dataset row (size and sha256 computed from `content`; a given sha256 must match).

    `format` is how `content` is read back ("csv" or "npz"); `input_shape` is one row's shape
    ([n_features] when not given) and must hold n_features values."""
    digest = hashlib.sha256(content).hexdigest()
    if sha256 is not None and sha256 != digest:
        raise ValueError("sha256 does not match the content")
    if format not in DATASET_FORMATS:
        raise ValueError(f"format must be one of {list(DATASET_FORMATS)}, not {format!r}")
    shape = [int(d) for d in input_shape] if input_shape is not None else [n_features]
    if math.prod(shape) != n_features:
        raise ValueError(f"input_shape {shape} does not hold n_features={n_features} values")
    row = Dataset(name=name, filename=filename, content=content, size=len(content), sha256=digest,
                  n_rows=n_rows, n_features=n_features, columns=list(columns),
                  label_column=label_column, classes=list(classes),
                  class_counts=dict(class_counts), owner=owner, format=format,
                  input_shape=shape)
    session.add(row)
    session.flush()
    return row


def get_dataset(session: Session, *, dataset_id: str, owner: str | None = None
                ) -> Dataset | None:
    """The dataset's metadata (content stays deferred), or None; with `owner`, None too
    when someone else owns it."""
    row = session.get(Dataset, dataset_id)
    return row if row is not None and owner in (None, row.owner) else None


def list_datasets(session: Session, *, limit: int = 100, owner: str | None = None
                  ) -> list[Dataset]:
    """Newest first, metadata only; with `owner`, only that owner's."""
    stmt = select(Dataset)
    if owner is not None:
        stmt = stmt.where(Dataset.owner == owner)
    stmt = stmt.order_by(Dataset.created_at.desc(), Dataset.id.desc()).limit(limit)
    return list(session.scalars(stmt))


def get_dataset_content(session: Session, *, dataset_id: str) -> bytes | None:
    """The uploaded file's bytes, or None when the dataset does not exist."""
    content: Any = session.scalar(select(Dataset.content).where(Dataset.id == dataset_id))
    return bytes(content) if content is not None else None


def delete_dataset(session: Session, *, dataset_id: str) -> bool:
    """Delete a dataset; jobs keep running from their spec but lose the link. True if found."""
    row = session.get(Dataset, dataset_id)
    if row is None:
        return False
    session.delete(row)
    session.flush()
    return True
