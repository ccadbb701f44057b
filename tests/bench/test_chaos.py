"""The chaos run's pure parts: its seeded fault schedule and the accounting that must catch a
lost job, a duplicated epoch and a missing one (hand-made rows; no servers)."""

from __future__ import annotations

import itertools
from collections import Counter

from bench.chaos import (
    FAULT_KINDS,
    Accounting,
    Observed,
    Reads,
    Submissions,
    account,
    effects,
    percentile,
    reason,
    schedule,
    table,
)
from bench.run_all import MODULES, select


def job(job_id: str, status: str = "succeeded", *, epochs: int = 3,
        history: list[int] | None = None, rows: int | None = None, attempts: int = 1,
        error: str | None = None) -> Observed:
    history = list(range(1, epochs + 1)) if history is None else history
    return Observed(job_id, status, epochs, attempts, 5, error,
                    len(history) if rows is None else rows, len(set(history)), history)


def test_the_schedule_is_reproducible_from_its_seed() -> None:
    first = schedule(0, 300)
    assert first == schedule(0, 300)
    assert first != schedule(1, 300)
    assert schedule(0, 60) == [f for f in first if f.at_s < 60]  # a prefix of the longer run
    times = [f.at_s for f in first]
    assert times == sorted(times)
    assert all(0 < t < 300 for t in times)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(4.0 - 0.02 <= g <= 12.0 + 0.02 for g in gaps)
    assert all(f.down_s > 0 for f in first if f.kind == "redis")
    assert all(f.down_s == 0 for f in first if f.kind != "redis")


def test_every_kind_of_fault_comes_in_each_round() -> None:
    for seed in range(20):
        faults = schedule(seed, 300)
        for start in range(0, len(faults) - 2, 3):
            assert sorted(f.kind for f in faults[start:start + 3]) == sorted(FAULT_KINDS)


def test_clean_jobs_pass() -> None:
    acc = account(["a", "b"], {"a": job("a"), "b": job("b", "cancelled", history=[1])})
    assert acc.ok
    assert (acc.accepted, acc.succeeded) == (2, 1)


def test_a_job_missing_from_the_database_or_never_finished_is_lost() -> None:
    acc = account(["a", "b", "c"], {"a": job("a"), "b": None,
                                    "c": job("c", "queued", history=[])})
    assert set(acc.lost) == {"b", "c"}
    assert "not in the database" in acc.lost["b"]
    assert "queued" in acc.lost["c"]
    assert not acc.ok


def test_a_duplicated_epoch_is_counted_from_the_table_or_the_history() -> None:
    in_table = job("a", rows=4)  # 4 rows, 3 distinct epochs
    in_history = job("b", history=[1, 2, 2, 3])
    acc = account(["a", "b"], {"a": in_table, "b": in_history})
    assert acc.duplicated == {"a": 1, "b": 1}
    assert not acc.missing
    assert not acc.ok


def test_a_missing_epoch_is_a_hole_or_a_short_success() -> None:
    acc = account(["hole", "short", "failed-hole"], {
        "hole": job("hole", history=[1, 3]),
        "short": job("short", epochs=5, history=[1, 2, 3]),
        "failed-hole": job("failed-hole", "failed", epochs=5, history=[2, 3], attempts=5,
                           error="worker lost 5 times (last seen on w1@h at 12:00)"),
    })
    assert set(acc.missing) == {"hole", "short", "failed-hole"}
    assert "[2]" in acc.missing["hole"]
    assert "1..3 of 5" in acc.missing["short"]
    assert not acc.ok


def test_failures_group_by_reason_and_only_exhausted_lost_workers_are_explained() -> None:
    lost = "worker lost 5 times (last seen on w{n}@host at 12:0{n})"
    acc = account(["x", "y", "z"], {
        "x": job("x", "failed", history=[1], attempts=5, error=lost.format(n=1)),
        "y": job("y", "failed", history=[1, 2], attempts=5, error=lost.format(n=2)),
        "z": job("z", "failed", history=[], error="CUDA out of memory in job 0123456789abcdef"),
    })
    assert sum(acc.failed.values()) == 3
    assert acc.failed[reason(lost.format(n=1))] == 2  # one group for both lost workers
    assert list(acc.unexplained) == [reason("CUDA out of memory in job <id>")]
    assert not acc.ok
    early = account(["w"], {"w": job("w", "failed", history=[1], attempts=2,
                                      error=lost.format(n=3))})
    assert early.unexplained  # lost, but with attempts left: it should have been retried


def test_rows_mark_every_missed_target() -> None:
    acc = Accounting(accepted=3, succeeded=2, lost={"j1": "never finished: running"})
    reads = Reads(latencies_ms=[float(i) for i in range(1, 101)], not_ok=Counter({503: 2}))
    subs = Submissions(jobs=["j1", "j2", "j3"], refused=Counter({"503 job": 4}))
    rows = table(acc, subs, reads, Counter(kill=2, term=1, redis=1, replacement=3),
                 {"resumed from a checkpoint": {"j2"}}, ["stray"], seconds=60, seed=0)
    by_name = {r.name: r for r in rows}
    missed = {r.name for r in rows if r.ok is False}
    assert missed == {"lost jobs", "status reads not 200", "jobs stored though not accepted"}
    assert by_name["faults injected"].value == 4  # replacements are not faults
    assert by_name["status read p99"].value == 99
    assert by_name["submissions refused"].value == 4
    assert by_name["jobs hit by faults"].value == 1


def test_effects_read_stacked_ids_from_the_logs() -> None:
    hit = effects(["job aa11,bb22 released (queued) after 3 epochs",
                   "reaper: job cc33 lost its worker w1@h (last heartbeat x); re-enqueued",
                   "resuming job cc33 from epoch 4"])
    assert hit["released by a stopping worker"] == {"aa11", "bb22"}
    assert hit["requeued after a lost worker"] == {"cc33"}
    assert hit["resumed from a checkpoint"] == {"cc33"}


def test_percentile_is_nearest_rank() -> None:
    assert percentile([5.0], 99) == 5.0
    assert percentile([float(i) for i in range(1, 201)], 99) == 198
    assert percentile([], 99) != percentile([], 99)  # NaN


def test_chaos_runs_only_when_named() -> None:
    assert "chaos" not in select(None)
    assert select(None) == list(MODULES)
    assert select("chaos") == ["chaos"]
    assert select("training,chaos") == ["training", "chaos"]
