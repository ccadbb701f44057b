"""Chaos: jobs and experiments submitted steadily while workers and Redis are killed.

    .venv/bin/python -m bench.chaos [--quick] [--seconds S] [--seed N]
    .venv/bin/python -m bench --only chaos [--quick]    # opt-in: never in the default run

For a fixed time (5 minutes, --quick 1 minute; BNLAB_CHAOS_SECONDS / BNLAB_CHAOS_SEED override
the length and the seed under `python -m bench`) a real uvicorn on a fresh PostgreSQL database
and three celery workers on a private Redis take small jobs and small experiments (a BN MLP
on concentric_circles, 300 samples, 10-30 epochs; experiments of 2-3 seeds, trained stacked)
at a steady rate, while a seeded schedule (`random.Random(seed)`) at random intervals
SIGKILLs a worker's process group, SIGTERMs one (it releases its job at the epoch end), or
kills Redis and starts it again empty on the same port. A replacement worker is started after
each kill or term so three are up again. A thread reads `GET /v1/jobs/{id}` of random known
jobs all along (those touch only PostgreSQL: a Redis restart must not fail them).

Then the faults stop, every job is waited for (a hang guard, not a speed check) and each
accepted job (its POST answered 202) is accounted for: lost (missing, or never finished),
duplicated epochs (an epoch stored twice: rows vs distinct epochs in the table and in the
history endpoint), missing epochs (a hole in the history, or a succeeded job without exactly
1..N), failures grouped by reason (explained: a job that lost its worker at every one of its
attempts), refused submissions (503 while Redis is down: the client was told, nothing kept).

Lease, reaper and requeue settings are the fault tests' short ones (lease 3 s, reaper 1 s,
grace 2 s, heartbeat 0.5 s) with 5 attempts per job; epoch writes and checkpoints keep their
production (batched) defaults, so the run checks what a deployment runs.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import random
import re
import signal
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.report import Row, print_table

GROUP = "chaos"
PG_ADMIN_URL = os.environ.get("BNLAB_BENCH_PG_ADMIN",
                              "postgresql://postgres@127.0.0.1:5432/postgres")
TERMINAL = {"succeeded", "failed", "cancelled"}
WORKERS = 3
MAX_ATTEMPTS = 5
FAULT_KINDS = ("kill", "term", "redis")
FAULT_GAP_S = (4.0, 12.0)  # between two faults, uniform
REDIS_DOWN_S = (0.5, 3.0)  # how long Redis stays dead before it starts again empty
EPOCHS = (50, 150)  # per job, uniform
SUBMIT_EVERY_S = 1.5
VICTIM_WAIT_S = 5.0
EXPERIMENT_SHARE = 0.25  # of submissions
READ_EVERY_S = 0.02
# Hang guard for the drain: this long without any job finishing fails the wait (the jobs
# left are then lost). Generous: a lost worker is noticed after its lease (3 s) and a sweep.
DRAIN_QUIET_S = {True: 90.0, False: 180.0}
# The fault tests' lease/reaper settings; the API reads BNLAB_MAX_ATTEMPTS at submission.
FAST_ENV = {"BNLAB_HEARTBEAT_INTERVAL": "0.5", "BNLAB_LEASE_TIMEOUT": "3",
            "BNLAB_REAPER_INTERVAL": "1", "BNLAB_REQUEUE_GRACE": "2",
            "BNLAB_MAX_ATTEMPTS": str(MAX_ATTEMPTS), "BNLAB_TORCH_THREADS": "1",
            "BNLAB_RATE_LIMIT_SUBMISSIONS": ""}  # the steady stream is no abuse


# ---------------------------------------------------------------------------------------------
# The fault schedule (pure: the same seed gives the same faults)


@dataclass(frozen=True)
class Fault:
    at_s: float  # seconds after the start of the run
    kind: str  # "kill", "term" or "redis"
    pick: int  # which worker, as an index into those up then (modulo their number)
    down_s: float = 0.0  # redis: how long it stays dead


def schedule(seed: int, seconds: float, *, gap: tuple[float, float] = FAULT_GAP_S
             ) -> list[Fault]:
    """The faults of a run of `seconds`, at random gaps. Kinds come in rounds, each a random
    order of all of them: even a short run meets every kind."""
    rng = random.Random(seed)
    faults: list[Fault] = []
    kinds: list[str] = []
    at = rng.uniform(*gap)
    while at < seconds:
        if not kinds:
            kinds = rng.sample(FAULT_KINDS, len(FAULT_KINDS))
        kind = kinds.pop()
        pick = rng.randrange(1_000)
        down = round(rng.uniform(*REDIS_DOWN_S), 2) if kind == "redis" else 0.0
        faults.append(Fault(round(at, 2), kind, pick, down))
        at += rng.uniform(*gap)
    return faults


# ---------------------------------------------------------------------------------------------
# Accounting (pure: what was accepted vs what the database and the API hold at the end)


@dataclass(frozen=True)
class Observed:
    """One accepted job at the end, as the database and GET /v1/jobs/{id}/history show it."""

    job_id: str
    status: str
    epochs: int  # the spec's
    attempts: int
    max_attempts: int
    error: str | None
    rows: int  # epoch_metric rows
    distinct: int  # distinct epochs among them
    history: list[int]  # the history endpoint's `epoch`


@dataclass
class Accounting:
    accepted: int = 0
    succeeded: int = 0
    lost: dict[str, str] = field(default_factory=dict)  # job id -> why
    duplicated: dict[str, int] = field(default_factory=dict)  # job id -> extra epochs
    missing: dict[str, str] = field(default_factory=dict)  # job id -> what is wrong
    failed: Counter[str] = field(default_factory=Counter)  # reason -> jobs
    unexplained: Counter[str] = field(default_factory=Counter)  # the failures not explained

    @property
    def ok(self) -> bool:
        return not (self.lost or self.duplicated or self.missing or self.unexplained)


_ID = re.compile(r"\b[0-9a-f]{12,}\b")
_NUMBER = re.compile(r"\d+(\.\d+)?")


def reason(error: str | None) -> str:
    """A failure's message with ids and numbers blanked, so alike failures group."""
    text = _NUMBER.sub("N", _ID.sub("<id>", (error or "no error given").strip()))
    return text.splitlines()[0][:120] if text else "no error given"


def explained(job: Observed) -> bool:
    """A failure the faults account for: its worker was lost at every attempt it had."""
    return "worker lost" in (job.error or "") and job.attempts >= job.max_attempts


def account(accepted: list[str], observed: dict[str, Observed | None]) -> Accounting:
    """Check every accepted job: `observed[id]` is None where the database has no such job."""
    acc = Accounting(accepted=len(accepted))
    for job_id in accepted:
        job = observed.get(job_id)
        if job is None:
            acc.lost[job_id] = "accepted (202) but not in the database"
            continue
        if job.status not in TERMINAL:
            acc.lost[job_id] = f"never finished: {job.status}"
        extra = max(job.rows - job.distinct, len(job.history) - len(set(job.history)))
        if extra:
            acc.duplicated[job_id] = extra
        gap = epoch_problem(job)
        if gap:
            acc.missing[job_id] = gap
        if job.status == "succeeded":
            acc.succeeded += 1
        elif job.status == "failed":
            acc.failed[reason(job.error)] += 1
            if not explained(job):
                acc.unexplained[reason(job.error)] += 1
    return acc


def epoch_problem(job: Observed) -> str:
    """'' if the job's epochs are 1..k without a hole (k = N once it succeeded)."""
    epochs = sorted(set(job.history))
    if epochs != list(range(1, len(epochs) + 1)):
        holes = sorted(set(range(1, (epochs[-1] if epochs else 0) + 1)) - set(epochs))
        return f"holes at epochs {holes[:10]}"
    if job.status == "succeeded" and len(epochs) != job.epochs:
        return f"succeeded with epochs 1..{len(epochs)} of {job.epochs}"
    return ""


# ---------------------------------------------------------------------------------------------
# What the client saw


@dataclass
class Submissions:
    """Accepted job ids (experiment children included), refusals and unanswered POSTs."""

    jobs: list[str] = field(default_factory=list)
    experiments: list[str] = field(default_factory=list)
    experiment_children: int = 0
    refused: Counter[str] = field(default_factory=Counter)  # "503 job" -> count
    unanswered: int = 0  # transport errors: stored or not, the client cannot know
    lock: threading.Lock = field(default_factory=threading.Lock)

    def known(self) -> list[str]:
        with self.lock:
            return list(self.jobs)


@dataclass
class Reads:
    latencies_ms: list[float] = field(default_factory=list)
    not_ok: Counter[int] = field(default_factory=Counter)  # status -> count (0: no answer)
    during_redis_down: int = 0  # reads answered while Redis was dead
    not_ok_during_redis_down: int = 0


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


def table(acc: Accounting, subs: Submissions, reads: Reads, faults: Counter[str],
          hit: dict[str, set[str]], stray: list[str], *, seconds: float, seed: int
          ) -> list[Row]:
    """The run's rows; ok=False where a target is missed."""
    def ids(d: dict[str, Any]) -> str:
        return "; ".join(f"{k}: {v}" for k, v in list(d.items())[:3])

    failed_note = ", ".join(f"{n} x {r}" for r, n in acc.failed.most_common()) or "none"
    refused = sum(subs.refused.values())
    p99 = percentile(reads.latencies_ms, 99)
    bad_reads = sum(reads.not_ok.values())
    return [
        Row(GROUP, "jobs submitted", acc.accepted, "jobs",
            note=f"{len(subs.jobs) - subs.experiment_children} jobs + {len(subs.experiments)} "
                 f"experiments ({subs.experiment_children} children) in {seconds:.0f} s, "
                 f"seed {seed}"),
        Row(GROUP, "jobs succeeded", acc.succeeded, "jobs"),
        Row(GROUP, "faults injected", sum(faults[k] for k in FAULT_KINDS), "faults",
            note=", ".join(f"{k} {faults[k]}" for k in FAULT_KINDS)
            + f"; {faults['replacement']} replacement workers"),
        Row(GROUP, "jobs hit by faults", len(set().union(*hit.values())), "jobs",
            note=", ".join(f"{len(ids)} {what}" for what, ids in hit.items())),
        Row(GROUP, "lost jobs", len(acc.lost), "jobs", target="0", ok=not acc.lost,
            note=ids(acc.lost)),
        Row(GROUP, "duplicated epochs", sum(acc.duplicated.values()), "epochs", target="0",
            ok=not acc.duplicated, note=ids(acc.duplicated)),
        Row(GROUP, "jobs with missing epochs", len(acc.missing), "jobs", target="0",
            ok=not acc.missing, note=ids(acc.missing)),
        Row(GROUP, "failed jobs", sum(acc.failed.values()), "jobs",
            target="every failure explained", ok=not acc.unexplained, note=failed_note),
        Row(GROUP, "jobs stored though not accepted", len(stray), "jobs", target="0",
            ok=None if subs.unanswered else not stray, note="; ".join(stray[:3])),
        Row(GROUP, "submissions refused", refused, "POSTs",
            note=(", ".join(f"{n} x {k}" for k, n in subs.refused.most_common()) or "none")
            + (f"; {subs.unanswered} unanswered" if subs.unanswered else "")),
        Row(GROUP, "status read p99", p99, "ms",
            note=f"{len(reads.latencies_ms)} reads, median "
                 f"{percentile(reads.latencies_ms, 50):.1f} ms, "
                 f"{reads.during_redis_down} while Redis was down"),
        Row(GROUP, "status reads not 200", bad_reads, "reads", target="0", ok=bad_reads == 0,
            note=", ".join(f"{n} x {c or 'no answer'}" for c, n in reads.not_ok.most_common())
            + (f" ({reads.not_ok_during_redis_down} while Redis was down)"
               if reads.not_ok_during_redis_down else "")),
    ]


# ---------------------------------------------------------------------------------------------
# The service under chaos


def job_body(rng: random.Random, n: int) -> dict[str, Any]:
    """A small BN MLP on a generated dataset, ~30 shuffled steps an epoch: a second or a few
    on one thread, so most faults find a job running (10 epochs of batch 32 take 30 ms)."""
    return {"name": f"chaos-{n}",
            "dataset": {"name": "concentric_circles", "n_samples": 300, "seed": 3},
            "network": {"hidden": [8, 8], "batchnorm": "after_activation"},
            "training": {"epochs": rng.randint(*EPOCHS), "batch_size": 8,
                         "seed": rng.randrange(100),
                         "optimizer": {"name": "adam", "lr": 0.01}}}


def experiment_body(rng: random.Random, n: int) -> dict[str, Any]:
    base = job_body(rng, n)
    return {"name": base.pop("name"), "base": base,
            "variants": {"network.batchnorm": ["after_activation"]},
            "seeds": rng.randint(2, 3)}


@contextlib.contextmanager
def pg_database() -> Iterator[str]:
    """A fresh, migrated database on the machine's PostgreSQL, dropped afterwards."""
    import psycopg

    from models.db.migrate import upgrade

    name = f"bnlab_chaos_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
        upgrade(url)
        yield url
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class Chaos:
    """The processes of one run: a private Redis, uvicorn, the workers, and the faults."""

    def __init__(self, tmp: Path, db_url: str) -> None:
        from devtools.procs import Procs, clean_env, free_port

        self.db_url = db_url
        self.redis_port = free_port()
        self.procs = Procs(tmp)
        self.env = clean_env(BNLAB_BROKER_URL=f"redis://127.0.0.1:{self.redis_port}/0",
                             BNLAB_DATABASE_URL=db_url, BNLAB_HOME=str(tmp / "home"),
                             **FAST_ENV)
        self.workers: dict[str, Any] = {}  # node name -> Proc, those not told to stop
        self.started = 0
        self.faults: Counter[str] = Counter()
        self.redis_down = threading.Event()
        self.redis: Any = None
        self.base_url = ""

    # -- processes

    def start_redis(self) -> None:
        import redis

        from devtools.poll import poll_until
        from devtools.procs import HANG_S

        self.redis = self.procs.start(f"redis-{self.faults['redis']}", [
            "redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no"], self.env)
        client = redis.Redis(port=self.redis_port, socket_connect_timeout=1)

        def pings() -> bool:
            try:
                return bool(client.ping())
            except redis.ConnectionError:
                return False
        poll_until(pings, bool, what=f"redis on port {self.redis_port}", timeout=HANG_S,
                   describe=lambda _: self.procs.dump_logs())

    def start_api(self) -> None:
        from devtools.procs import PYTHON, free_port, wait_ready

        port = free_port()
        self.procs.start("api", [PYTHON, "-m", "uvicorn", "api.main:app", "--host",
                                 "127.0.0.1", "--port", str(port)], self.env)
        self.base_url = f"http://127.0.0.1:{port}"
        wait_ready(self.base_url, self.procs)

    def start_worker(self) -> Any:
        """Solo and prefork pools alternate (prefork: a killed group takes its child)."""
        from devtools.procs import celery_worker_argv

        self.started += 1
        node = f"w{self.started}"
        pool = "solo" if self.started % 2 else "prefork"
        proc = self.procs.start(node, celery_worker_argv(f"{node}@%h", pool=pool), self.env)
        self.workers[node] = proc
        return proc

    def logs(self) -> str:
        return self.procs.dump_logs()

    # -- faults

    def busy_nodes(self) -> list[str]:
        """Workers holding a running job now: a fault there interrupts training."""
        import psycopg

        with psycopg.connect(self.db_url, connect_timeout=3) as conn:
            rows = conn.execute("SELECT DISTINCT worker FROM job WHERE status = 'running'"
                                ).fetchall()
        return [str(w).split("@")[0] for (w,) in rows if w]

    def victim(self, pick: int) -> tuple[str | None, bool]:
        """The worker to hit, and whether it is training: a busy one if any becomes busy
        within VICTIM_WAIT_S (a fault on an idle worker tests little), else any one up."""
        deadline = time.monotonic() + VICTIM_WAIT_S
        while True:
            up = [n for n, p in self.workers.items() if p.popen.poll() is None]
            busy = sorted(n for n in self.busy_nodes() if n in up)
            if busy or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        choices = busy or up
        return (choices[pick % len(choices)] if choices else None), bool(busy)

    def inject(self, fault: Fault) -> str:
        """Do one fault; a line saying what was done."""
        if fault.kind == "redis":
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.redis.popen.pid, signal.SIGKILL)
            self.redis.popen.wait(10)
            self.redis_down.set()
            time.sleep(fault.down_s)
            self.faults["redis"] += 1
            self.start_redis()
            self.redis_down.clear()
            return f"redis killed, back empty after {fault.down_s:.1f} s"
        node, busy = self.victim(fault.pick)
        if node is None:
            return f"{fault.kind}: no worker up"
        proc = self.workers.pop(node)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.popen.pid, signal.SIGKILL if fault.kind == "kill" else
                      signal.SIGTERM)
        self.faults[fault.kind] += 1
        heir = self.start_worker()
        self.faults["replacement"] += 1
        return f"{fault.kind} {node} ({'training' if busy else 'idle'}); {heir.name} started"


def submitter(base_url: str, subs: Submissions, stop: threading.Event, seed: int) -> None:
    """One job or experiment every SUBMIT_EVERY_S, each with its own Idempotency-Key."""
    rng = random.Random(seed + 1)
    n = 0
    with httpx.Client(base_url=base_url, timeout=30) as client:
        while not stop.wait(SUBMIT_EVERY_S):
            n += 1
            is_exp = rng.random() < EXPERIMENT_SHARE
            path = "/v1/experiments" if is_exp else "/v1/jobs"
            body = experiment_body(rng, n) if is_exp else job_body(rng, n)
            try:
                r = client.post(path, json=body, headers={"Idempotency-Key": f"chaos-{n}"})
            except httpx.HTTPError:
                with subs.lock:
                    subs.unanswered += 1
                continue
            record(subs, is_exp, r)


def record(subs: Submissions, is_exp: bool, r: httpx.Response) -> None:
    with subs.lock:
        if r.status_code != 202:
            subs.refused[f"{r.status_code} {'experiment' if is_exp else 'job'}"] += 1
        elif is_exp:
            doc = r.json()
            subs.experiments.append(doc["id"])
            children = [c["job_id"] for c in doc["children"]]
            subs.jobs += children
            subs.experiment_children += len(children)
        else:
            subs.jobs.append(r.json()["id"])


def reader(base_url: str, subs: Submissions, reads: Reads, stop: threading.Event,
           redis_down: threading.Event, seed: int) -> None:
    """GET /v1/jobs/{id} of random known jobs, continuously; latency and status kept."""
    rng = random.Random(seed + 2)
    with httpx.Client(base_url=base_url, timeout=30) as client:
        while not stop.wait(READ_EVERY_S):
            known = subs.known()
            if not known:
                continue
            down = redis_down.is_set()
            start = time.perf_counter()
            try:
                code = client.get(f"/v1/jobs/{rng.choice(known)}").status_code
            except httpx.HTTPError:
                code = 0
            reads.latencies_ms.append((time.perf_counter() - start) * 1000)
            reads.during_redis_down += down
            if code != 200:
                reads.not_ok[code] += 1
                reads.not_ok_during_redis_down += down


def observe(db_url: str, client: httpx.Client, ids: list[str]
            ) -> tuple[dict[str, Observed | None], list[str]]:
    """Each accepted job's end state, and the jobs stored that no 202 named (a refused POST
    must leave nothing behind)."""
    import psycopg

    with psycopg.connect(db_url, connect_timeout=3) as conn:
        jobs = {r[0]: r[1:] for r in conn.execute(
            "SELECT id, status, epochs_total, attempts, max_attempts, error FROM job")}
        counts = {r[0]: r[1:] for r in conn.execute(
            "SELECT job_id, count(*), count(DISTINCT epoch) FROM epoch_metric GROUP BY job_id")}
    out: dict[str, Observed | None] = {}
    for job_id in ids:
        if job_id not in jobs:
            out[job_id] = None
            continue
        status, epochs, attempts, max_attempts, error = jobs[job_id]
        rows, distinct = counts.get(job_id, (0, 0))
        r = client.get(f"/v1/jobs/{job_id}/history")
        history = [int(e) for e in r.json()["epoch"]] if r.status_code == 200 else []
        out[job_id] = Observed(job_id, str(status), int(epochs), int(attempts),
                               int(max_attempts), error, int(rows), int(distinct), history)
    return out, sorted(set(jobs) - set(ids))


def drain(db_url: str, ids: list[str], quiet_s: float, say: Callable[[str], None]) -> None:
    """Until every job is terminal, or no job has finished for `quiet_s` (a hang)."""
    import psycopg

    wanted = set(ids)
    last_left, last_change = len(wanted) + 1, time.monotonic()
    while True:
        with psycopg.connect(db_url, connect_timeout=3) as conn:
            left = sum(1 for (job_id, status) in conn.execute("SELECT id, status FROM job")
                       if job_id in wanted and status not in TERMINAL)
        if left == 0:
            return
        if left != last_left:
            last_left, last_change = left, time.monotonic()
            say(f"draining: {left} jobs not finished")
        elif time.monotonic() - last_change > quiet_s:
            say(f"drain: {left} jobs unfinished after {quiet_s:.0f} s without progress")
            return
        time.sleep(1.0)


# What the workers' logs say happened to a job a fault hit (stacked jobs: ids joined by ",").
EFFECTS = {
    "released by a stopping worker": re.compile(r"job ([0-9a-f,]+) released"),
    "requeued after a lost worker": re.compile(r"reaper: job ([0-9a-f]+) lost its worker"),
    "message re-sent (broker lost it)": re.compile(r"reaper: job ([0-9a-f]+) is queued but"),
    "resumed from a checkpoint": re.compile(r"resuming job ([0-9a-f]+) from epoch"),
}


def effects(logs: list[str]) -> dict[str, set[str]]:
    """Which jobs each kind of recovery touched, per the logs."""
    out: dict[str, set[str]] = {what: set() for what in EFFECTS}
    for text in logs:
        for what, pattern in EFFECTS.items():
            for ids in pattern.findall(text):
                out[what].update(ids.split(","))
    return out


def log_lines(logs_dir: Path, job_id: str, limit: int = 40) -> str:
    """Every process's log lines naming the job (what to read about a lost one)."""
    lines = []
    for path in sorted(logs_dir.glob("*.log")):
        for line in path.read_text(errors="replace").splitlines():
            if job_id in line:
                lines.append(f"{path.stem}: {line}")
    return "\n".join(lines[-limit:])


def chaos_run(seconds: float, seed: int, *, quick: bool) -> list[Row]:
    from devtools.procs import wait_for_log

    def say(line: str) -> None:
        print(f"[chaos {time.monotonic() - t0:6.1f}s] {line}", flush=True)

    faults = schedule(seed, seconds)
    subs, reads = Submissions(), Reads()
    with tempfile.TemporaryDirectory(prefix="bnlab-chaos-") as tmp_name, \
            pg_database() as db_url:
        tmp = Path(tmp_name)
        chaos = Chaos(tmp, db_url)
        t0 = time.monotonic()
        try:
            chaos.start_redis()
            chaos.start_api()
            for w in [chaos.start_worker() for _ in range(WORKERS)]:
                wait_for_log(w, " ready.")
            say(f"up: api {chaos.base_url}, redis :{chaos.redis_port}, {WORKERS} workers; "
                f"{len(faults)} faults over {seconds:.0f} s (seed {seed})")
            stop = threading.Event()
            threads = [
                threading.Thread(target=submitter, args=(chaos.base_url, subs, stop, seed)),
                threading.Thread(target=reader, args=(chaos.base_url, subs, reads, stop,
                                                      chaos.redis_down, seed))]
            for t in threads:
                t.start()
            start = time.monotonic()
            try:
                for fault in faults:
                    time.sleep(max(0.0, start + fault.at_s - time.monotonic()))
                    say(chaos.inject(fault))
                time.sleep(max(0.0, start + seconds - time.monotonic()))
            finally:
                stop.set()
                for t in threads:
                    t.join(60)
            say(f"faults stopped: {len(subs.jobs)} jobs accepted; draining")
            drain(db_url, subs.jobs, DRAIN_QUIET_S[quick], say)
            with httpx.Client(base_url=chaos.base_url, timeout=30) as client:
                observed, stray = observe(db_url, client, subs.jobs)
        finally:
            chaos.procs.stop_all(grace=10)
        acc = account(subs.jobs, observed)
        for job_id in (*acc.lost, *acc.duplicated, *acc.missing, *stray):
            say(f"job {job_id}: the logs' lines naming it\n{log_lines(tmp, job_id)}")
        hit = effects([p.read_text(errors="replace") for p in tmp.glob("w*.log")])
    return table(acc, subs, reads, chaos.faults, hit, stray, seconds=seconds, seed=seed)


def run(quick: bool, seconds: float | None = None, seed: int | None = None) -> list[Row]:
    if seconds is None:
        seconds = float(os.environ.get("BNLAB_CHAOS_SECONDS", 60 if quick else 300))
    if seed is None:
        seed = int(os.environ.get("BNLAB_CHAOS_SEED", "0"))
    return chaos_run(seconds, seed, quick=quick)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 minute instead of 5")
    parser.add_argument("--seconds", type=float, default=None, help="length of the faults")
    parser.add_argument("--seed", type=int, default=None, help="the fault schedule's seed")
    args = parser.parse_args()
    rows = run(args.quick, args.seconds, args.seed)
    print_table(rows)


if __name__ == "__main__":
    main()
