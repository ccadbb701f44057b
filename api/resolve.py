"""From a JobSpec to a ResolvedJob: the dataset's shape comes from the upload's row or the
generator's parameters, so every check runs before anything is allocated."""

from __future__ import annotations

from sqlalchemy.orm import Session

from api.errors import InvalidInput
from models.datasets import parse_csv
from models.db import repository as repo
from models.db.tables import Dataset
from models.spec import JobSpec, Limits, ResolvedJob, UploadedDataset, generated_shape, resolve_job


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
    content = repo.get_dataset_content(session, dataset_id=row.id) or b""
    table = parse_csv(content, label_column=ds.label_column)
    return table.n_features, table.n_classes, table.n_rows, row


def resolve(session: Session, spec: JobSpec, limits: Limits) -> tuple[ResolvedJob, Dataset | None]:
    n_features, n_classes, n_rows, row = dataset_shape(session, spec)
    return resolve_job(spec, n_features=n_features, n_classes=n_classes, n_rows=n_rows,
                       limits=limits), row
