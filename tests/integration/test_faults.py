"""Jobs that survive faults, with real processes and real signals (issue 4).

Real uvicorn and real `celery worker` subprocesses on Redis + PostgreSQL (and `bnlab serve` in
its embedded default), each in a process group of its own so a test can SIGKILL or SIGTERM a
whole worker the way the OOM killer or a redeploy does. The lease, reaper and requeue settings
are shortened so a lost worker is noticed in seconds; nothing here waits on a bare sleep for
correctness: every wait polls a condition and fails with the logs only after a hang guard.
A test that acts on a running job (kill, SIGTERM, cancel, a duplicate message, a broker
flush) starts its workers with a `Hold` (the worker's test seam): the job waits after a
given epoch until the test has acted, so no job can finish first on a fast machine, and no
slow machine misses it.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psycopg
import pytest
import redis

from devtools.procs import (
    HANG_S,
    Hold,
    Proc,
    Procs,
    clean_env,
    free_port,
    wait_for_log,
)
from models.queueing import TRAIN_TASK
from tests.support.fault_stack import (
    FAST_ENV,
    MAX_ATTEMPTS,
    METRICS,
    RECOVERY_S,
    RESUMED,
    Stack,
    api_on,
    assert_exact_history,
    embedded_on,
    job_body,
    kill_group,
    pid_alive,
    poll,
    redis_server,
    resume_epochs,
)

pytestmark = pytest.mark.integration

@pytest.fixture(scope="module")
def pg_stack(new_postgres_database: Callable[[], str], redis_url: str,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with api_on(new_postgres_database(), redis_url, tmp_path_factory.mktemp("faults")) as stack:
        yield stack


@pytest.fixture
def stack(pg_stack: Stack, tmp_path: Path) -> Iterator[Stack]:
    """The module's API with this test's own workers and an empty broker; afterwards every
    worker is gone and no job is left to run in the next test."""
    redis.Redis.from_url(pg_stack.redis_url).flushdb()
    pg_stack.workers = Procs(tmp_path)
    pg_stack._nodes.clear()
    try:
        yield pg_stack
    finally:
        workers, pg_stack.workers = pg_stack.workers, None
        workers.stop_all(grace=10)
        print(workers.dump_logs())
        with psycopg.connect(pg_stack.db_url) as conn:
            conn.execute("UPDATE job SET status = 'cancelled', lease_owner = NULL "
                         "WHERE status IN ('queued', 'running')")
        redis.Redis.from_url(pg_stack.redis_url).flushdb()


# ------------------------------------------------------------------------- lost workers


def test_sigkill_resumes_from_checkpoint_like_an_uninterrupted_run(stack: Stack) -> None:
    epochs = 60
    hold = stack.hold(10)
    first = stack.start_worker("first", hold=hold)
    control_worker = stack.start_worker("control", hold=hold)
    victim_id = stack.submit(job_body("victim", epochs))
    running = stack.wait_held(hold, victim_id)  # it waits after epoch 10 until killed
    victim = stack.worker_of(running)
    assert victim in (first, control_worker)
    # The job shows its lease: attempt, node and a heartbeat the worker keeps renewing.
    assert running["attempts"] == 1, running
    assert running["heartbeat_at"] is not None, running
    stack.wait_job(victim_id, "a renewed heartbeat",
                   lambda j: j["heartbeat_at"] != running["heartbeat_at"])
    # The control runs the same spec uninterrupted on the other worker meanwhile.
    control_id = stack.submit(job_body("control", epochs))
    hold.release(control_id)

    at_kill = stack.job(victim_id)["epoch"]
    kill_group(victim, signal.SIGKILL)
    victim.popen.wait(10)
    successor = stack.start_worker("successor")
    job = stack.wait_done(victim_id, timeout=RECOVERY_S + 60)
    assert job["status"] == "succeeded", (job, stack.logs())
    assert job["attempts"] == 2, job
    assert job["epoch"] == epochs, job
    assert job["error"] is None, job
    assert job["worker"].split("@")[0] != victim.name, job
    resumed = assert_exact_history(stack, victim_id, epochs)

    resumers = [p for p in (first, control_worker, successor) if resume_epochs(p, victim_id)]
    assert len(resumers) == 1, stack.logs()
    (resume_epoch,) = resume_epochs(resumers[0], victim_id)
    assert at_kill == resume_epoch == 10, (at_kill, resume_epoch)  # its last checkpoint

    control = stack.wait_done(control_id)
    assert control["status"] == "succeeded", control
    assert control["attempts"] == 1, control
    reference = assert_exact_history(stack, control_id, epochs)
    # Same seed, same RNG stream, one torch thread on CPU: bit-for-bit the same numbers, in
    # the epochs the lost worker recorded and in those resumed from its checkpoint.
    for key in METRICS:
        assert resumed[key][resume_epoch:] == reference[key][resume_epoch:], key
        assert resumed[key] == reference[key], key


def test_worker_killed_at_every_attempt_fails_with_reason(stack: Stack) -> None:
    job_id = stack.submit(job_body("doomed", 50))
    for attempt in range(1, MAX_ATTEMPTS + 1):
        # each attempt records two more epochs, then waits there until it is killed
        hold = stack.hold(2 * attempt)
        stack.start_worker(f"doomed{attempt}", hold=hold)
        job = stack.wait_held(hold, job_id)
        assert job["attempts"] == attempt, job
        victim = stack.worker_of(job)
        kill_group(victim, signal.SIGKILL)
        victim.popen.wait(10)
    # Only a live worker's reaper can notice the last loss.
    stack.start_worker("reaper")
    job = stack.wait_done(job_id, timeout=RECOVERY_S)
    assert job["status"] == "failed", (job, stack.logs())
    assert job["attempts"] == MAX_ATTEMPTS, job
    assert "worker lost" in (job["error"] or ""), job
    assert f"{MAX_ATTEMPTS} times" in job["error"], job
    # What the lost attempts trained is kept, without holes.
    h = stack.history(job_id)
    assert h["epoch"] == list(range(1, 2 * MAX_ATTEMPTS + 1)), h["epoch"]


# ------------------------------------------------------------------------ graceful stop


@pytest.mark.parametrize(("pool", "target"), [("solo", "group"), ("prefork", "group"),
                                             ("prefork", "main")])
def test_sigterm_releases_at_epoch_end_and_another_worker_resumes(
        stack: Stack, pool: str, target: str) -> None:
    epochs = 30
    hold = stack.hold(5)
    first = stack.start_worker("term", pool=pool, hold=hold)
    job_id = stack.submit(job_body("sigterm", epochs))
    before = stack.wait_held(hold, job_id)
    assert stack.worker_of(before) is first

    # Celery's warm shutdown, while the job waits after epoch 5; it goes on once the worker
    # has asked it to stop, so it stops at its next epoch end, whatever the machine's speed.
    if target == "group":
        kill_group(first, signal.SIGTERM)
    else:
        first.popen.send_signal(signal.SIGTERM)
    poll("the worker to ask its job to stop", lambda: stack.release_requested(job_id),
         timeout=HANG_S, logs=stack.logs)
    hold.release(job_id)
    assert first.popen.wait(HANG_S) == 0, first.log_tail()
    released = stack.job(job_id)
    # Back in the queue, not failed, its attempt not counted; no worker is up to take it.
    assert released["status"] == "queued", (released, stack.logs())
    assert released["attempts"] == 0, released
    assert released["epoch"] == before["epoch"] + 1, released  # the epoch after the hold
    assert f"released at epoch {released['epoch']}" in first.log_tail(10**8), first.log_tail()

    second = stack.start_worker("heir")
    job = stack.wait_done(job_id, timeout=RECOVERY_S)
    assert job["status"] == "succeeded", (job, stack.logs())
    assert job["attempts"] == 1, job
    assert job["error"] is None, job
    assert resume_epochs(second, job_id) == [released["epoch"]], second.log_tail()
    # At most the epoch in flight at the signal is lost: it resumes where it stopped.
    assert released["epoch"] >= before["epoch"]
    assert_exact_history(stack, job_id, epochs)


# --------------------------------------------------------------------------- the broker


def test_broker_data_loss_runs_every_job_once(stack: Stack) -> None:
    hold = stack.hold(3)
    worker = stack.start_worker("flush", hold=hold)
    long_id = stack.submit(job_body("running", 30))
    stack.wait_held(hold, long_id)
    waiting = [stack.submit(job_body(f"queued{i}", 20, seed=i)) for i in (1, 2)]
    for job_id in waiting:
        hold.release(job_id)  # only the running job waits for the flush
    r = redis.Redis.from_url(stack.redis_url)
    poll("two queued messages in Redis", lambda: r.llen("cpu") == 2, timeout=HANG_S,
         logs=stack.logs)
    r.flushdb()  # Redis lost its data: our db index only
    assert r.dbsize() == 0
    assert stack.job(long_id)["status"] == "running"
    hold.release(long_id)
    for job_id, epochs in ((long_id, 30), *((w, 20) for w in waiting)):
        job = stack.wait_done(job_id, timeout=RECOVERY_S)
        assert job["status"] == "succeeded", (job, stack.logs())
        assert job["attempts"] == 1, job  # none ran twice
        assert_exact_history(stack, job_id, epochs)
    log = worker.log_tail(10**8)
    for job_id in waiting:  # they ran because the reaper noticed the loss
        assert f"reaper: job {job_id} is queued but no broker holds its message" in log, log


def test_worker_killed_between_taking_the_message_and_the_claim(stack: Stack) -> None:
    """The message sits unacknowledged (Redis would keep it for the 12 h visibility timeout);
    once it has for longer than the lease timeout, a live worker's reaper sends it again."""
    epochs = 10
    hold = stack.hold(0)  # after the message is taken, before the claim
    taker = stack.start_worker("taker", hold=hold)
    job_id = stack.submit(job_body("stranded", epochs))
    hold.wait_held(job_id, logs=stack.logs)
    r = redis.Redis.from_url(stack.redis_url)
    assert r.hlen("unacked") == 1, stack.logs()  # taken, not acknowledged
    assert r.llen("cpu") == 0
    assert stack.job(job_id)["status"] == "queued"
    kill_group(taker, signal.SIGKILL)
    taker.popen.wait(10)
    assert r.hlen("unacked") == 1  # stranded: nothing gives it back before 12 h

    heir = stack.start_worker("heir")
    job = stack.wait_done(job_id, timeout=RECOVERY_S)
    assert job["status"] == "succeeded", (job, stack.logs())
    assert job["attempts"] == 1, job  # the killed worker never claimed it
    assert stack.worker_of(job) is heir
    assert_exact_history(stack, job_id, epochs)
    assert (f"reaper: job {job_id} is queued but its message was taken by a consumer that "
            "never claimed it; re-enqueued") in heir.log_tail(10**8), heir.log_tail()


def test_redis_restarted_empty_runs_every_job_once(
        new_postgres_database: Callable[[], str], tmp_path: Path) -> None:
    """Redis dies with two jobs running and two waiting in its queue and comes back empty:
    the workers reconnect by themselves, the reaper sends the lost messages again, and every
    job succeeds once. Recovery (restart to both lost jobs re-enqueued) is measured."""
    port = free_port()
    servers = Procs(tmp_path)
    server = redis_server(servers, "redis", port)
    try:
        with api_on(new_postgres_database(), f"redis://127.0.0.1:{port}/0",
                    tmp_path / "home") as stack:
            stack.workers = Procs(tmp_path)
            try:
                _restart_redis_under_load(stack, servers, server, port)
            finally:
                stack.workers.stop_all(grace=10)
                print(stack.workers.dump_logs())
    finally:
        servers.stop_all()


def _restart_redis_under_load(stack: Stack, servers: Procs, server: Proc, port: int) -> None:
    hold = stack.hold(3)
    workers = [stack.start_worker(f"redis{i}", hold=hold) for i in (1, 2)]
    running = [stack.submit(job_body(f"running{i}", 20, seed=i)) for i in (1, 2)]
    for job_id in running:
        stack.wait_held(hold, job_id)
    waiting = [stack.submit(job_body(f"waiting{i}", 10, seed=i)) for i in (3, 4)]
    for job_id in waiting:
        hold.release(job_id)  # only the running jobs wait for the restart
    r = redis.Redis(port=port)
    poll("two waiting messages", lambda: r.llen("cpu") == 2, timeout=HANG_S, logs=stack.logs)

    kill_group(server, signal.SIGKILL)
    server.popen.wait(10)
    redis_server(servers, "redis-again", port)
    restarted = time.monotonic()
    assert r.dbsize() == 0  # it came back empty
    for job_id in running:
        hold.release(job_id)

    def requeued() -> bool:
        logs = "".join(w.log_tail(10**8) for w in workers)
        return all(f"reaper: job {j} is queued but no broker holds its message" in logs
                   for j in waiting)
    poll("the reaper to re-enqueue the lost messages", requeued, timeout=HANG_S,
         logs=stack.logs)
    recovery = time.monotonic() - restarted
    for w in workers:  # each saw the loss and reconnected by itself (the waiting jobs ran)
        assert "Connection to broker lost" in w.log_tail(10**8), w.log_tail()
    print(f"redis restart: lost messages re-enqueued {recovery:.1f} s after the restart")
    for job_id, epochs in (*((j, 20) for j in running), *((j, 10) for j in waiting)):
        job = stack.wait_done(job_id, timeout=RECOVERY_S)
        assert job["status"] == "succeeded", (job, stack.logs())
        assert job["attempts"] == 1, job  # none ran twice
        assert_exact_history(stack, job_id, epochs)
    # The reaper's interval (1 s here) plus 10 s: the grace before a queued job counts as
    # lost (2 s here) and a sweep's own time fit inside it.
    assert recovery < float(FAST_ENV["BNLAB_REAPER_INTERVAL"]) + 10, (recovery, stack.logs())


def test_duplicate_delivery_while_running_trains_once(stack: Stack) -> None:
    from celery import Celery

    epochs = 30
    hold = stack.hold(3)
    workers = [stack.start_worker("dup-a", hold=hold), stack.start_worker("dup-b", hold=hold)]
    for w in workers:
        wait_for_log(w, " ready.")
    job_id = stack.submit(job_body("dup", epochs))
    running = stack.wait_held(hold, job_id)  # runs on, its lease live, until released
    owner = stack.worker_of(running)
    (idle,) = (w for w in workers if w is not owner)

    producer = Celery("faults-test", broker=stack.redis_url, set_as_current=False)
    try:
        producer.send_task(TRAIN_TASK, args=[job_id], queue="cpu", ignore_result=True)
    finally:
        producer.close()
    wait_for_log(idle, f"job {job_id} is running under")
    assert "(lease live); ignoring duplicate delivery" in idle.log_tail(10**8)

    hold.release(job_id)
    job = stack.wait_done(job_id)
    assert job["status"] == "succeeded", (job, stack.logs())
    assert job["attempts"] == 1, (job, stack.logs())
    assert stack.worker_of(job) is owner
    assert f"job {job_id} claimed" not in idle.log_tail(10**8)
    assert_exact_history(stack, job_id, epochs)


# ------------------------------------------------------------------------------ cancel


def test_cancel_running_within_an_epoch_and_queued_never_starts(stack: Stack) -> None:
    hold = stack.hold(3)
    worker = stack.start_worker("cancel", hold=hold)
    busy_id = stack.submit(job_body("busy", 50))
    stack.wait_held(hold, busy_id)
    queued_id = stack.submit(job_body("behind", 20))

    r = stack.client.post(f"/v1/jobs/{queued_id}/cancel")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "cancelled", r.text

    r = stack.client.post(f"/v1/jobs/{busy_id}/cancel")
    answered = datetime.now(UTC)
    assert r.status_code == 200, r.text
    at_request = r.json()["epoch"]  # read back after the cancel was committed
    hold.release(busy_id)  # the job goes on past epoch 3 only now
    job = stack.wait_done(busy_id)
    assert job["status"] == "cancelled", (job, stack.logs())
    # The flag is read once per epoch, after its training and before its row is written: the
    # epoch in flight may still be recorded, then at most one more epoch ...
    assert at_request <= job["epoch"] <= at_request + 2, (at_request, job)
    # ... and at most one epoch began after the cancel was answered (epoch e begins after
    # row e-1 is written, so a row written after the answer means its successor began later).
    written = stack.epoch_written_at(busy_id)
    begun_after = [e for e in range(2, job["epoch"] + 1) if written[e - 1] > answered]
    assert len(begun_after) <= 1, (answered, begun_after, written)
    assert_exact_history(stack, busy_id, job["epoch"])  # history kept
    assert stack.client.get(f"/v1/jobs/{busy_id}/checkpoints/last").status_code == 200

    # The worker is free now and meets the cancelled job's message: it must not run it.
    wait_for_log(worker, f"job {queued_id} already claimed or not queued")
    behind = stack.job(queued_id)
    assert behind["status"] == "cancelled", behind
    assert behind["attempts"] == 0, behind
    assert behind["epoch"] == 0, behind
    assert behind["started_at"] is None, behind
    assert behind["worker"] is None, behind
    assert stack.epoch_rows(queued_id) == []
    # The reaper never resurrects either of them: three more sweeps leave both cancelled.
    hold.wait_sweeps(worker.popen.pid, 3, logs=stack.logs)
    assert stack.job(queued_id)["status"] == "cancelled"
    assert stack.job(busy_id)["status"] == "cancelled"


# ------------------------------------------------------------------------- submission


def test_idempotency_key_retried_concurrently_creates_one_job(stack: Stack) -> None:
    key = f"retry-{uuid.uuid4().hex}"
    body = job_body("idem", 5)
    barrier = threading.Barrier(10)
    answers: list[tuple[int, str]] = []

    def post() -> None:
        with httpx.Client(base_url=stack.base_url, timeout=30) as c:
            barrier.wait()
            r = c.post("/v1/jobs", json=body, headers={"Idempotency-Key": key})
            answers.append((r.status_code, r.json().get("id", r.text)))

    threads = [threading.Thread(target=post) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(answers) == 10, answers
    assert len({job_id for _, job_id in answers}) == 1, answers
    codes = sorted(code for code, _ in answers)
    assert codes == [200] * 9 + [202], answers
    with psycopg.connect(stack.db_url) as conn:
        count = conn.execute("SELECT count(*) FROM job WHERE idempotency_key = %s",
                             (key,)).fetchone()
    assert count is not None
    assert count[0] == 1

    other = stack.client.post("/v1/jobs", json=job_body("idem", 6),
                              headers={"Idempotency-Key": key})
    assert other.status_code == 409, other.text
    assert answers[0][1] in other.text


# ---------------------------------------------------------------------- embedded default


def test_embedded_worker_killed_is_restarted_and_resumes(tmp_path: Path) -> None:
    epochs = 40
    # The first worker waits after epoch 10 until it is killed; its successor resumes from
    # that checkpoint, so it never stores epoch 10 again and is never held.
    hold = Hold(tmp_path / "hold", 10)
    env = clean_env(BNLAB_HOME=str(tmp_path / "home"), **FAST_ENV, **hold.env())
    procs = Procs(tmp_path)
    started = re.compile(r"embedded worker started \(pid (\d+)\)")
    try:
        with embedded_on(procs, env) as (serve, stack):
            job_id = stack.submit(job_body("embedded", epochs))
            running = stack.wait_held(hold, job_id)
            (first_pid,) = [int(p) for p in started.findall(serve.log_tail(10**8))]
            os.killpg(first_pid, signal.SIGKILL)
            poll("the server to restart its worker",
                 lambda: len(started.findall(serve.log_tail(10**8))) == 2,
                 timeout=HANG_S, logs=procs.dump_logs)
            job = stack.wait_done(job_id, timeout=RECOVERY_S + 60)
            assert job["status"] == "succeeded", (job, procs.dump_logs())
            assert job["attempts"] == 2, job
            assert job["error"] is None, job
            assert job["epoch"] == epochs
            assert running["epoch"] >= 10
            h = stack.history(job_id)
            assert h["epoch"] == list(range(1, epochs + 1)), h["epoch"]
            resumed = [int(e) for j, e in RESUMED.findall(serve.log_tail(10**8))
                       if j == job_id]
            assert resumed == [10], resumed
            assert not pid_alive(first_pid)
    finally:
        procs.stop_all()
        serve_log = procs.procs[0].log_tail(10**8) if procs.procs else ""
        for pid in started.findall(serve_log):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(int(pid), signal.SIGKILL)
        print(procs.dump_logs())
