"""0006: the study table; experiment.study_id (ON DELETE CASCADE) and experiment.claim.
Experiments stored before it belong to no study; a study's experiments and their children go
with it."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from alembic import command
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from models.db import make_engine, upgrade
from models.db import repository as repo
from models.db.migrate import alembic_config
from models.db.tables import JobStatus, Study
from tests.models.db.helpers import make_job


def test_existing_experiments_belong_to_no_study_and_studies_cascade(
        fresh_url: str) -> None:
    command.upgrade(alembic_config(fresh_url), "0005")
    engine = make_engine(fresh_url)
    now = datetime.now(UTC)
    try:
        with engine.begin() as conn:
            conn.execute(text(
                "INSERT INTO experiment (id, name, spec, variants, seeds, cancel_requested, "
                "owner, created_at, updated_at) VALUES (:id, 'old', :spec, :variants, :seeds, "
                ":no, 'anonymous', :at, :at)"),
                {"id": "e" * 32, "spec": json.dumps({}), "variants": json.dumps(["v"]),
                 "seeds": json.dumps([0]), "no": False, "at": now})
        upgrade(fresh_url)
        with Session(engine) as session:
            old = repo.get_experiment(session, experiment_id="e" * 32)
            assert old is not None
            assert (old.study_id, old.claim) == (None, None)
            study = repo.create_study(session, spec={"seeds": 2}, name="s",
                                      claims=["placement"])
            exp = repo.create_study_experiment(session, study=study, claim="placement",
                                               spec={}, name="s placement",
                                               variants=["before", "after"], seeds=[0, 1])
            job = make_job(session, experiment_id=exp.id, variant="before", seed=0,
                           child_index=0)
            session.commit()
            ids = (study.id, exp.id, job.id)
            assert [e.id for e in repo.study_experiments(session, study_id=ids[0])] == [ids[1]]
            session.delete(study)
            session.commit()
            session.expire_all()
            assert repo.get_experiment(session, experiment_id=ids[1]) is None
            assert repo.get_job(session, job_id=ids[2]) is None
            assert repo.get_experiment(session, experiment_id="e" * 32) is not None
        command.downgrade(alembic_config(fresh_url), "0005")
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM experiment")).scalar() == 1
    finally:
        engine.dispose()


def test_studies_repo(session: Session) -> None:
    first = repo.create_study(session, spec={}, name="one", claims=["a"], owner="key-a")
    second = repo.create_study(session, spec={}, name="two",
                               claims=["placement", "regularization"], owner="key-a",
                               idempotency_key="k", request_hash="h")
    other = repo.create_study(session, spec={}, name="three", claims=["a"], owner="key-b",
                              idempotency_key="k")
    first.created_at = second.created_at - timedelta(seconds=1)
    session.flush()
    assert repo.get_study(session, study_id=second.id, owner="key-a") is second
    assert repo.get_study(session, study_id=second.id, owner="key-b") is None
    assert repo.get_study(session, study_id=second.id) is second
    assert repo.find_study_by_idempotency_key(session, idempotency_key="k",
                                              owner="key-a") is second
    assert repo.find_study_by_idempotency_key(session, idempotency_key="k",
                                              owner="key-b") is other
    rows, cursor = repo.list_studies(session, limit=1, owner="key-a")
    assert [s.id for s in rows] == [second.id]
    assert cursor
    rows, cursor = repo.list_studies(session, limit=1, owner="key-a", cursor=cursor)
    assert [s.id for s in rows] == [first.id]
    assert cursor is None
    # Experiments come back in the study's claim order, whatever order they were made in.
    reg = repo.create_study_experiment(session, study=second, claim="regularization", spec={},
                                       name="r", variants=["bn", "none"], seeds=[0])
    place = repo.create_study_experiment(session, study=second, claim="placement", spec={},
                                         name="p", variants=["before", "after"], seeds=[0])
    assert reg.owner == "key-a"
    assert reg.study_id == second.id
    assert [e.id for e in repo.study_experiments(session, study_id=second.id)] == [place.id,
                                                                                   reg.id]
    assert [e.id for e in repo.experiments_of(session, studies=[first, second])[second.id]] \
        == [place.id, reg.id]
    # cancel and retry reach every experiment's children.
    a = make_job(session, experiment_id=place.id, owner="key-a", child_index=0)
    b = make_job(session, experiment_id=reg.id, owner="key-a", child_index=0)
    assert repo.claim_job(session, job_id=b.id, worker="w", device="cpu")
    assert repo.finish_job(session, job_id=b.id, status="failed", error="x", worker="w")
    assert repo.cancel_study(session, study_id=second.id) == 1
    session.expire_all()
    cancelled = repo.get_job(session, job_id=a.id)
    assert cancelled is not None
    assert cancelled.status == JobStatus.cancelled
    assert session.get_one(Study, second.id).cancel_requested is True
    assert repo.reset_failed_study(session, study_id=second.id) == [b.id]
    assert session.get_one(Study, second.id).cancel_requested is False
    with pytest.raises(IntegrityError):
        repo.create_study(session, spec={}, name="dup", claims=[], owner="key-a",
                          idempotency_key="k")
    session.rollback()


def test_seconds_per_epoch_reads_finished_jobs(session: Session) -> None:
    assert repo.seconds_per_epoch(session) == (None, 0)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    for seconds, epochs in ((10.0, 5), (30.0, 10), (8.0, 2)):  # 2, 3 and 4 s per epoch
        job = make_job(session, epochs_total=epochs)
        job.status, job.epochs_done = JobStatus.succeeded, epochs
        job.started_at, job.finished_at = start, start + timedelta(seconds=seconds)
    make_job(session)  # queued: not counted
    session.flush()
    assert repo.seconds_per_epoch(session) == (3.0, 3)
