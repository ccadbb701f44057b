"""From a JobSpec to a ResolvedJob: the dataset's shape comes from the upload's row or the
built-in dataset's parameters (data-directory datasets: their files' headers), so every check
runs before anything is allocated."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from sqlalchemy.orm import Session

from api.errors import InvalidInput
from models.datasets import Table
from models.db import repository as repo
from models.db.tables import Dataset
from models.image_data import builtin_labels, builtin_shape, parse_upload
from models.resolution import ResolvedJob, resolve_job
from models.spec import JobSpec, Limits, UploadedDataset
from models.splits import training_split_warnings

# Parsed uploads by (sha256, format, label column). Uploads are immutable, so a table parsed for
# one submission serves the next; a race only parses twice. Bounded: tables can be large.
_PARSED: dict[tuple[str, str, str | None], Table] = {}
_PARSED_MAX = 4


def uploaded_table(session: Session, row: Dataset, label_column: str | None) -> Table:
    key = (row.sha256, row.format, label_column)
    table = _PARSED.get(key)
    if table is None:
        content = repo.get_dataset_content(session, dataset_id=row.id) or b""
        table = parse_upload(content, fmt=row.format, label_column=label_column)
        while len(_PARSED) >= _PARSED_MAX:
            _PARSED.pop(next(iter(_PARSED)), None)
        _PARSED[key] = table
    return table


def dataset_shape(session: Session, spec: JobSpec, *, data_dir: Path | None = None
                  ) -> tuple[tuple[int, ...], int, int, Dataset | None]:
    """(input_shape, n_classes, n_rows, uploaded dataset row or None); input_shape is one row's
    shape, (F,) for a table, (C, H, W) for images."""
    ds = spec.dataset
    if not isinstance(ds, UploadedDataset):
        input_shape, n_classes, n_rows = builtin_shape(ds, data_dir)
        return input_shape, n_classes, n_rows, None
    row = repo.get_dataset(session, dataset_id=ds.id)
    if row is None:
        raise InvalidInput([f"dataset.id: dataset id '{ds.id}' not found: upload it with "
                            "POST /v1/datasets"])
    if ds.label_column is None or ds.label_column == row.label_column:
        return tuple(row.input_shape), len(row.classes), row.n_rows, row
    # Another label column changes the classes and features: re-read the stored file.
    table = uploaded_table(session, row, ds.label_column)
    return table.input_shape, table.n_classes, table.n_rows, row


def resolve(session: Session, spec: JobSpec, limits: Limits, *, data_dir: Path | None = None
            ) -> tuple[ResolvedJob, Dataset | None]:
    """Every check, then the warnings: the split's among them, which need the labels."""
    input_shape, n_classes, n_rows, row = dataset_shape(session, spec, data_dir=data_dir)
    resolved = resolve_job(spec, input_shape=input_shape, n_classes=n_classes, n_rows=n_rows,
                           limits=limits)
    ds = spec.dataset
    if isinstance(ds, UploadedDataset):
        assert row is not None
        table = uploaded_table(session, row, ds.label_column)
        y, classes = table.y, table.classes
    else:
        # generated: pure and cheap next to training, bounded by max_rows; data-directory
        # datasets: their labels only
        y, classes = builtin_labels(ds, data_dir)
    split_warnings = training_split_warnings(y, spec.training, classes)
    return dataclasses.replace(resolved, warnings=resolved.warnings + split_warnings), row
