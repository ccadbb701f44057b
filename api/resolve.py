"""From a JobSpec to a ResolvedJob: the dataset's shape comes from the upload's row or the
generator's parameters, so every check runs before anything is allocated."""

from __future__ import annotations

import dataclasses

from sqlalchemy.orm import Session

from api.errors import InvalidInput
from models.datasets import Table, generate, parse_csv
from models.db import repository as repo
from models.db.tables import Dataset
from models.spec import JobSpec, Limits, ResolvedJob, UploadedDataset, generated_shape, resolve_job
from models.splits import training_split_warnings

# Parsed uploads by (sha256, label column). Uploads are immutable, so a table parsed for one
# submission serves the next; a race only parses twice. Bounded: tables can be large.
_PARSED: dict[tuple[str, str | None], Table] = {}
_PARSED_MAX = 4


def uploaded_table(session: Session, row: Dataset, label_column: str | None) -> Table:
    key = (row.sha256, label_column)
    table = _PARSED.get(key)
    if table is None:
        content = repo.get_dataset_content(session, dataset_id=row.id) or b""
        table = parse_csv(content, label_column=label_column)
        while len(_PARSED) >= _PARSED_MAX:
            _PARSED.pop(next(iter(_PARSED)), None)
        _PARSED[key] = table
    return table


def dataset_shape(session: Session, spec: JobSpec) -> tuple[int, int, int, Dataset | None]:
    """(n_features, n_classes, n_rows, uploaded dataset row or None)."""
    ds = spec.dataset
    if not isinstance(ds, UploadedDataset):
        n_features, n_classes = generated_shape(ds)
        return n_features, n_classes, ds.n_samples, None
    row = repo.get_dataset(session, dataset_id=ds.id)
    if row is None:
        raise InvalidInput([f"dataset.id: dataset id '{ds.id}' not found: upload it with "
                            "POST /v1/datasets"])
    if ds.label_column is None or ds.label_column == row.label_column:
        return row.n_features, len(row.classes), row.n_rows, row
    # Another label column changes the classes and features: re-read the stored file.
    table = uploaded_table(session, row, ds.label_column)
    return table.n_features, table.n_classes, table.n_rows, row


def resolve(session: Session, spec: JobSpec, limits: Limits) -> tuple[ResolvedJob, Dataset | None]:
    """Every check, then the warnings: the split's among them, which need the labels."""
    n_features, n_classes, n_rows, row = dataset_shape(session, spec)
    resolved = resolve_job(spec, n_features=n_features, n_classes=n_classes, n_rows=n_rows,
                           limits=limits)
    ds = spec.dataset
    if isinstance(ds, UploadedDataset):
        assert row is not None
        table = uploaded_table(session, row, ds.label_column)
    else:
        table = generate(ds)  # pure and cheap next to training; bounded by max_rows
    split_warnings = training_split_warnings(table.y, spec.training, table.classes)
    return dataclasses.replace(resolved, warnings=resolved.warnings + split_warnings), row
