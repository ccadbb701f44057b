from __future__ import annotations

import hashlib

import pytest
from sqlalchemy import delete, func, inspect, select
from sqlalchemy.orm import Session, sessionmaker

from models.db import repository as repo
from models.db.tables import Checkpoint, EpochMetric, Job
from tests.models.db.helpers import make_job
from tests.support.epochs import store_epoch


def test_put_checkpoint_upserts_by_kind(session: Session) -> None:
    job = make_job(session)
    first = repo.put_checkpoint(session, job_id=job.id, kind="last", epoch=1, content=b"one",
                                metrics={"val_accuracy": 0.5})
    assert (first.epoch, first.size, first.sha256) == (1, 3,
                                                       hashlib.sha256(b"one").hexdigest())
    blob = bytes(range(256)) * 40
    second = repo.put_checkpoint(session, job_id=job.id, kind="last", epoch=2, content=blob,
                                 metrics={"val_accuracy": 0.6})
    assert (second.epoch, second.size) == (2, len(blob))
    assert second.sha256 == hashlib.sha256(blob).hexdigest()
    count = session.scalar(select(func.count()).select_from(Checkpoint)
                           .where(Checkpoint.job_id == job.id))
    assert count == 1
    got = repo.get_checkpoint(session, job_id=job.id, which="last")
    assert got is not None
    assert got.content == blob
    assert got.metrics == {"val_accuracy": 0.6}


def test_get_checkpoint_by_kind_or_epoch(session: Session) -> None:
    job = make_job(session)
    repo.put_checkpoint(session, job_id=job.id, kind="best", epoch=3, content=b"best")
    repo.put_checkpoint(session, job_id=job.id, kind="last", epoch=5, content=b"last")
    best = repo.get_checkpoint(session, job_id=job.id, which="best")
    assert best is not None
    assert best.content == b"best"
    last = repo.get_checkpoint(session, job_id=job.id, kind="last")  # `kind` alias
    assert last is not None
    assert last.content == b"last"
    by_epoch = repo.get_checkpoint(session, job_id=job.id, which=5)
    assert by_epoch is not None
    assert by_epoch.kind == "last"
    assert repo.get_checkpoint(session, job_id=job.id, which="3") is not None
    assert repo.get_checkpoint(session, job_id=job.id, which=4) is None
    assert repo.get_checkpoint(session, job_id=make_job(session).id, which="best") is None


def test_list_checkpoints_does_not_load_content(session: Session) -> None:
    job = make_job(session)
    repo.put_checkpoint(session, job_id=job.id, kind="last", epoch=2, content=b"x" * 1000)
    repo.put_checkpoint(session, job_id=job.id, kind="best", epoch=1, content=b"y" * 10)
    session.expire_all()
    rows = repo.list_checkpoints(session, job_id=job.id)
    assert [(c.kind, c.epoch, c.size) for c in rows] == [("best", 1, 10), ("last", 2, 1000)]
    assert all("content" in inspect(c).unloaded for c in rows)


def test_unknown_kind_is_refused(session: Session) -> None:
    job = make_job(session)
    with pytest.raises(ValueError, match="kind"):
        repo.put_checkpoint(session, job_id=job.id, kind="middle", epoch=1, content=b"")


def test_deleting_a_job_deletes_its_epochs_and_checkpoints(
    sessions: sessionmaker[Session],
) -> None:
    # Committed for real: the ORM delete and a bare SQL DELETE (the database's ON DELETE
    # CASCADE alone) must both take the epochs and checkpoints with the job.
    with sessions.begin() as s:
        orm_id, sql_id, keep_id = make_job(s).id, make_job(s).id, make_job(s).id
        for jid in (orm_id, sql_id, keep_id):
            store_epoch(s, job_id=jid, epoch=1, metrics={"loss": 1.0})
            repo.put_checkpoint(s, job_id=jid, kind="last", epoch=1, content=b"w")
    try:
        with sessions.begin() as s:
            assert repo.delete_job(s, job_id=orm_id)
            assert not repo.delete_job(s, job_id=orm_id)
            s.execute(delete(Job).where(Job.id == sql_id))
        with sessions() as s:
            for table in (EpochMetric, Checkpoint):
                left = s.scalar(select(func.count()).select_from(table)
                                .where(table.job_id.in_([orm_id, sql_id])))
                assert left == 0
            assert len(repo.history(s, job_id=keep_id)) == 1
            assert len(repo.list_checkpoints(s, job_id=keep_id)) == 1
    finally:
        with sessions.begin() as s:
            for jid in (orm_id, sql_id, keep_id):
                repo.delete_job(s, job_id=jid)
