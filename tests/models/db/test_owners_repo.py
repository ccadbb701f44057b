"""Owners and API keys in the repository: owner-scoped lookups, listings, idempotency keys
per owner, the active-jobs count, and the key table (SQLite and PostgreSQL)."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from models.db import repository as repo
from models.db.tables import ANONYMOUS, JobStatus
from tests.models.db.helpers import make_dataset_kwargs, make_job


def test_rows_default_to_anonymous_and_owner_scoped_lookups_hide_others(session: Session
                                                                        ) -> None:
    mine = make_job(session, owner="key-a")
    legacy = make_job(session)
    assert legacy.owner == ANONYMOUS
    assert repo.get_job(session, job_id=mine.id, owner="key-a") is mine
    assert repo.get_job(session, job_id=mine.id, owner="key-b") is None
    assert repo.get_job(session, job_id=mine.id) is mine  # workers look up without an owner
    ds = repo.create_dataset(session, **make_dataset_kwargs(), owner="key-a")
    assert repo.get_dataset(session, dataset_id=ds.id, owner="key-a") is ds
    assert repo.get_dataset(session, dataset_id=ds.id, owner="key-b") is None
    exp = repo.create_experiment(session, spec={}, name="e", variants=["v"], seeds=[0],
                                 owner="key-a")
    assert repo.get_experiment(session, experiment_id=exp.id, owner="key-a") is exp
    assert repo.get_experiment(session, experiment_id=exp.id, owner="key-b") is None


def test_listings_filter_by_owner(session: Session) -> None:
    a = [make_job(session, owner="key-a").id for _ in range(3)]
    b = make_job(session, owner="key-b").id
    rows, _ = repo.list_jobs(session, owner="key-a", limit=10)
    assert sorted(j.id for j in rows) == sorted(a)
    rows, _ = repo.list_jobs(session, owner="key-b", limit=10)
    assert [j.id for j in rows] == [b]
    da = repo.create_dataset(session, **make_dataset_kwargs(), owner="key-a")
    repo.create_dataset(session, **make_dataset_kwargs(), owner="key-b")
    assert [d.id for d in repo.list_datasets(session, owner="key-a")] == [da.id]
    ea = repo.create_experiment(session, spec={}, name="e", variants=["v"], seeds=[0],
                                owner="key-a")
    rows_e, _ = repo.list_experiments(session, owner="key-a")
    assert [e.id for e in rows_e] == [ea.id]
    assert repo.list_experiments(session, owner="key-b")[0] == []


def test_idempotency_keys_are_per_owner(session: Session) -> None:
    a = make_job(session, owner="key-a", idempotency_key="same")
    b = make_job(session, owner="key-b", idempotency_key="same")  # no conflict across owners
    assert a.id != b.id
    assert repo.find_by_idempotency_key(session, idempotency_key="same", owner="key-b") is b
    assert repo.find_by_idempotency_key(session, idempotency_key="same") is None  # anonymous
    with pytest.raises(IntegrityError):
        make_job(session, owner="key-a", idempotency_key="same")
    session.rollback()
    ea = repo.create_experiment(session, spec={}, name="e", variants=["v"], seeds=[0],
                                owner="key-a", idempotency_key="k")
    repo.create_experiment(session, spec={}, name="e", variants=["v"], seeds=[0],
                           owner="key-b", idempotency_key="k")
    assert repo.find_experiment_by_idempotency_key(session, idempotency_key="k",
                                                   owner="key-a") is ea


def test_count_active_counts_queued_and_running_of_one_owner(session: Session) -> None:
    queued = make_job(session, owner="key-a")
    running = make_job(session, owner="key-a")
    done = make_job(session, owner="key-a")
    make_job(session, owner="key-b")
    assert repo.claim_job(session, job_id=running.id, worker="w", device="cpu")
    assert repo.claim_job(session, job_id=done.id, worker="w", device="cpu")
    assert repo.finish_job(session, job_id=done.id, status=JobStatus.succeeded)
    assert repo.count_active(session, owner="key-a") == 2
    repo.request_cancel(session, job_id=queued.id)
    assert repo.count_active(session, owner="key-a") == 1
    assert repo.count_active(session, owner="key-b") == 1
    assert repo.count_active(session, owner="nobody") == 0


def test_api_keys_are_found_by_hash_until_revoked_and_auth_stays_on(session: Session) -> None:
    assert not repo.any_api_key(session)
    row = repo.create_api_key(session, key_hash="a" * 64, prefix="bnlab_abcd", name="alice")
    assert repo.any_api_key(session)
    assert repo.find_api_key(session, key_hash="a" * 64) is row
    assert repo.find_api_key(session, key_hash="b" * 64) is None
    assert repo.revoke_api_key(session, key_id=row.id)
    assert not repo.revoke_api_key(session, key_id=row.id)  # already revoked
    assert not repo.revoke_api_key(session, key_id="0" * 32)
    assert repo.find_api_key(session, key_hash="a" * 64) is None
    assert repo.any_api_key(session)  # a revoked key keeps authentication on
    assert [k.id for k in repo.list_api_keys(session)] == [row.id]
    with pytest.raises(IntegrityError):
        repo.create_api_key(session, key_hash="a" * 64, prefix="bnlab_abcd")
