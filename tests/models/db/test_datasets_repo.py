from __future__ import annotations

import hashlib

import pytest
from sqlalchemy import inspect
from sqlalchemy.orm import Session

from models.db import repository as repo
from tests.models.db.helpers import make_dataset_kwargs, make_job


def test_create_and_read_a_dataset(session: Session) -> None:
    kwargs = make_dataset_kwargs()
    ds = repo.create_dataset(session, **kwargs)
    assert len(ds.id) == 32
    assert ds.size == len(kwargs["content"])
    assert ds.sha256 == hashlib.sha256(kwargs["content"]).hexdigest()
    session.expire_all()
    got = repo.get_dataset(session, dataset_id=ds.id)
    assert got is not None
    assert "content" in inspect(got).unloaded
    assert (got.n_rows, got.n_features, got.label_column) == (2, 2, "class")
    assert got.columns == ["X", "Y", "class"]
    assert got.classes == ["0", "1"]
    assert got.class_counts == {"0": 1, "1": 1}
    assert got.created_at.tzinfo is not None
    assert repo.get_dataset_content(session, dataset_id=ds.id) == kwargs["content"]
    assert repo.get_dataset_content(session, dataset_id="0" * 32) is None
    assert repo.get_dataset(session, dataset_id="0" * 32) is None


def test_a_wrong_sha256_is_refused(session: Session) -> None:
    with pytest.raises(ValueError, match="sha256"):
        repo.create_dataset(session, **make_dataset_kwargs(), sha256="0" * 64)


def test_list_datasets_newest_first(session: Session) -> None:
    ids = [repo.create_dataset(session, **make_dataset_kwargs(bytes([i]) * 3)).id
           for i in range(3)]
    listed = [d.id for d in repo.list_datasets(session, limit=100)]
    assert [i for i in listed if i in ids] == ids[::-1]
    assert len(repo.list_datasets(session, limit=2)) == 2


def test_deleting_a_dataset_unlinks_its_jobs(session: Session) -> None:
    ds = repo.create_dataset(session, **make_dataset_kwargs())
    job = make_job(session, dataset_id=ds.id)
    assert repo.delete_dataset(session, dataset_id=ds.id)
    session.expire_all()
    got = repo.get_job(session, job_id=job.id)
    assert got is not None
    assert got.dataset_id is None
    assert not repo.delete_dataset(session, dataset_id=ds.id)
