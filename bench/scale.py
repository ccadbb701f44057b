"""Scale: the read endpoints over 10,000 jobs and 1,000,000 epoch rows in PostgreSQL.

    .venv/bin/python -m bench.scale [--quick] [--keep] [--samples N]

Seeds a database of its own (`bnlab_scale`, or `bnlab_scale_quick` with --quick: 1,000 jobs
and 50,000 epochs), created through the project's migrations so the schema and indexes are
the real ones, with COPY (psycopg), then VACUUM ANALYZE. The data: three API keys (owners,
60/25/15 %), jobs in every status over 30 days, 60 experiments of 3 variants x 5 seeds (50
epochs each), one 1,000-epoch job, and the rest of the epoch rows spread over the finished
jobs. Without --keep the database is dropped and seeded again each run, and dropped at the
end; --keep reuses one that holds the expected rows (and applies any newer migration).

Then a real `uvicorn api.main:app` (one process, real HTTP on loopback, auth on with the
owners' keys) is asked each request `samples` times in turn, as the biggest owner; p50/p99
are per endpoint. Separately, in this process, every SQL statement each request runs is
captured (an engine event listener) and EXPLAINed: a row says how many statements a request
ran and whether any plan seq-scans job or epoch_metric.

Targets (2 cores): job lists and experiment list/detail p99 < 50 ms, history and the
experiment summary p99 < 100 ms, one job p99 < 20 ms.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import math
import os
import random
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.report import Row

GROUP = "scale"
PG_ADMIN_URL = os.environ.get("BNLAB_BENCH_PG_ADMIN",
                              "postgresql://postgres@127.0.0.1:5432/postgres")
KEYS = ("bnlab_scale_bench_key_main", "bnlab_scale_bench_key_second",
        "bnlab_scale_bench_key_third")
OWNER_SHARES = (0.60, 0.25, 0.15)
STATUS_SHARES = (("succeeded", 0.80), ("failed", 0.07), ("cancelled", 0.05),
                 ("queued", 0.05), ("running", 0.03))
HISTORY_EPOCHS = 1000
CHILD_EPOCHS = 50
SEEDS_PER_EXPERIMENT = 5
START = datetime(2026, 1, 1, tzinfo=UTC)
SPAN = timedelta(days=30)


@dataclass(frozen=True)
class Size:
    jobs: int
    epochs: int
    experiments: int
    database: str


FULL = Size(jobs=10_000, epochs=1_000_000, experiments=60, database="bnlab_scale")
QUICK = Size(jobs=1_000, epochs=50_000, experiments=6, database="bnlab_scale_quick")


def owner_of(key: str) -> str:
    """The owner id the API gives a BNLAB_API_KEYS key (api.auth.env_owner)."""
    return f"env:{hashlib.sha256(key.encode()).hexdigest()[:8]}"


# ----------------------------------------------------------------------------------- seeding


def _specs() -> tuple[dict[str, Any], dict[str, Any], list[Any], list[str]]:
    """(a job's stored spec, an experiment's stored spec, its children, its variant names):
    what the API would have stored for the notebook's job and a BN-placement experiment."""
    from models.experiment import ExperimentSpec, expand, variant_names
    from models.spec import JobSpec

    job = JobSpec.model_validate({
        "name": "bn", "dataset": {"name": "concentric_circles", "n_samples": 500, "noise": 0.1},
        "network": {"hidden": [3, 2], "batchnorm": "after_activation"},
        "training": {"epochs": 200, "batch_size": 32, "validation_split": 0.2,
                     "split": "tail"}})
    exp = ExperimentSpec.model_validate({
        "name": "bn-placement", "base": {**job.model_dump(mode="json"),
                                         "training": {"epochs": CHILD_EPOCHS}},
        "variants": {"network.batchnorm": ["none", "before_activation", "after_activation"]},
        "seeds": SEEDS_PER_EXPERIMENT})
    children = expand(exp, max_children=1024)
    return job.model_dump(mode="json"), exp.model_dump(mode="json"), children, \
        variant_names(exp)


def _text(value: Any) -> str:
    """A value as COPY's text format writes it."""
    if value is None:
        return r"\N"
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, dict | list):
        value = json.dumps(value)
    return str(value).replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")


def _line(values: list[Any]) -> str:
    return "\t".join(_text(v) for v in values) + "\n"


JOB_COLUMNS = ("id", "name", "spec", "status", "queue", "device", "worker", "lease_owner",
               "heartbeat_at", "attempts", "max_attempts", "cancel_requested",
               "release_requested", "warnings", "epochs_done", "epochs_total", "error",
               "final_metrics", "best_metrics", "best_epoch", "created_at", "started_at",
               "finished_at", "updated_at", "experiment_id", "variant", "seed", "child_index",
               "stack_key", "owner")
EPOCH_COLUMNS = ("job_id", "epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr",
                 "wall_time", "created_at")


@dataclass
class Seeded:
    """What the measurements need to know about the seeded data."""

    history_job: str
    experiment: str
    cursor_at: tuple[datetime, str]  # the main owner's job halfway down its list


def _pick(rng: random.Random, shares: tuple[tuple[str, float], ...]) -> str:
    x, acc = rng.random(), 0.0
    for value, share in shares:
        acc += share
        if x < acc:
            return value
    return shares[-1][0]


def _metrics(rng: random.Random, epoch: int) -> list[float]:
    loss = 0.7 * math.exp(-epoch / 60) + 0.05 + rng.random() * 0.02
    acc = min(1.0, 0.5 + 0.45 * (1 - math.exp(-epoch / 40)) + rng.random() * 0.02)
    return [round(loss, 6), round(acc, 6), round(loss * 1.05, 6), round(acc * 0.98, 6), 0.001]


def _seed(url: str, size: Size) -> Seeded:
    """Fill a migrated, empty database with `size` rows via COPY."""
    import psycopg

    rng = random.Random(9)
    job_spec, exp_spec, children, variants = _specs()
    owners = [owner_of(k) for k in KEYS]
    main = owners[0]
    jobs: list[dict[str, Any]] = []
    exps: list[list[Any]] = []
    step = SPAN / size.jobs

    # Experiments: their children are jobs; all finished, CHILD_EPOCHS epochs each.
    exp_ids: list[str] = []
    for e in range(size.experiments):
        exp_id = hashlib.sha256(f"exp{e}".encode()).hexdigest()[:32]
        created = START + SPAN * (e + 0.5) / size.experiments
        owner = main if e % 3 else owners[1 + (e // 3) % 2]
        exp_ids.append(exp_id)
        exps.append([exp_id, exp_spec["name"], exp_spec, variants,
                     list(range(SEEDS_PER_EXPERIMENT)), False, created, created, owner])
        for c in children:
            jobs.append({"id": hashlib.sha256(f"{exp_id}/{c.variant}/{c.seed}".encode())
                         .hexdigest()[:32], "spec": c.spec.model_dump(mode="json"),
                         "name": c.spec.name, "status": "succeeded", "epochs": CHILD_EPOCHS,
                         "total": CHILD_EPOCHS, "created": created + timedelta(
                             microseconds=c.index), "experiment_id": exp_id,
                         "variant": c.variant, "seed": c.seed, "child_index": c.index,
                         "stack_key": hashlib.sha256(f"{exp_id}/{c.stack_key}".encode())
                         .hexdigest()[:32], "owner": owner})
    # Standalone jobs, one of them with HISTORY_EPOCHS epochs (the main owner's newest).
    n_single = size.jobs - len(jobs)
    singles: list[dict[str, Any]] = []
    for i in range(n_single):
        status = _pick(rng, STATUS_SHARES)
        r = rng.random()
        owner = owners[0] if r < OWNER_SHARES[0] else \
            owners[1] if r < OWNER_SHARES[0] + OWNER_SHARES[1] else owners[2]
        singles.append({"id": hashlib.sha256(f"job{i}".encode()).hexdigest()[:32],
                        "spec": job_spec, "name": "bn", "status": status, "epochs": 0,
                        "total": 200, "created": START + step * i + timedelta(
                            microseconds=rng.randrange(1000)), "owner": owner})
    history = singles[-1]
    history.update(status="succeeded", owner=main, total=HISTORY_EPOCHS,
                   epochs=HISTORY_EPOCHS)
    # Epochs: the rest of size.epochs spread over the finished and running singles.
    rest = size.epochs - HISTORY_EPOCHS - CHILD_EPOCHS * len(jobs)
    takers = [j for j in singles[:-1] if j["status"] != "queued"]
    weights = [1.0 if j["status"] == "succeeded" else 0.4 for j in takers]
    unit = rest / sum(weights)
    given = 0
    for j, w in zip(takers, weights, strict=True):
        j["epochs"] = int(unit * w)
        given += j["epochs"]
    for j in takers[: rest - given]:
        j["epochs"] += 1
    for j in takers:
        j["total"] = j["epochs"] if j["status"] == "succeeded" else j["epochs"] + 50
    jobs += singles

    job_buf, epoch_buf = io.StringIO(), io.StringIO()
    for j in jobs:
        created = j["created"]
        n, status = j["epochs"], j["status"]
        started = created + timedelta(seconds=1) if status != "queued" else None
        ended = started + timedelta(seconds=n * 0.02 + 1) if started else None
        finished = ended if status in ("succeeded", "failed", "cancelled") else None
        last = _metrics(rng, n) if n else None
        names = ("loss", "accuracy", "val_loss", "val_accuracy", "lr")
        final = dict(zip(names, last, strict=True)) if last and finished else None
        job_buf.write(_line([
            j["id"], j["name"], j["spec"], status, "cpu", "cpu",
            "w@host" if started else None, "w@host/1/1" if status == "running" else None,
            ended if status == "running" else None, 1 if started else 0, 3,
            status == "cancelled", False, [], n, j["total"],
            "Diverged: loss is NaN" if status == "failed" else None, final, final,
            n if final else None, created, started, finished, ended or created,
            j.get("experiment_id"), j.get("variant"), j.get("seed"), j.get("child_index"),
            j.get("stack_key"), j["owner"]]))
        for e in range(1, n + 1):
            epoch_buf.write(_line([j["id"], e, *_metrics(rng, e), 0.02,
                                   created + timedelta(seconds=e)]))

    with psycopg.connect(url, autocommit=True) as conn:
        with conn.cursor() as cur:
            with cur.copy("COPY experiment (id, name, spec, variants, seeds, cancel_requested, "
                          "created_at, updated_at, owner) FROM STDIN") as copy:
                copy.write("".join(_line(row) for row in exps))
            with cur.copy(f"COPY job ({', '.join(JOB_COLUMNS)}) FROM STDIN") as copy:
                copy.write(job_buf.getvalue())
            with cur.copy(f"COPY epoch_metric ({', '.join(EPOCH_COLUMNS)}) FROM STDIN"
                          ) as copy:
                view = epoch_buf.getvalue()
                for start in range(0, len(view), 1 << 22):
                    copy.write(view[start:start + (1 << 22)])
        conn.execute("VACUUM ANALYZE")
    return _describe(url)


def _describe(url: str) -> Seeded:
    import psycopg

    main = owner_of(KEYS[0])
    with psycopg.connect(url) as conn:
        history = conn.execute("SELECT id FROM job WHERE epochs_done = %s AND owner = %s "
                               "LIMIT 1", (HISTORY_EPOCHS, main)).fetchone()
        exp = conn.execute("SELECT id FROM experiment WHERE owner = %s ORDER BY created_at "
                           "DESC, id DESC LIMIT 1", (main,)).fetchone()
        n_main = conn.execute("SELECT count(*) FROM job WHERE owner = %s", (main,)).fetchone()
        assert history
        assert exp
        assert n_main
        at = conn.execute("SELECT created_at, id FROM job WHERE owner = %s ORDER BY created_at "
                          "DESC, id DESC OFFSET %s LIMIT 1", (main, n_main[0] // 2)).fetchone()
        assert at
    return Seeded(history_job=history[0], experiment=exp[0], cursor_at=(at[0], at[1]))


def _counts(url: str) -> tuple[int, int]:
    import psycopg

    with psycopg.connect(url) as conn:
        jobs = conn.execute("SELECT count(*) FROM job").fetchone()
        epochs = conn.execute("SELECT count(*) FROM epoch_metric").fetchone()
    return (jobs[0] if jobs else 0), (epochs[0] if epochs else 0)


def prepare(size: Size, *, keep: bool) -> tuple[str, Seeded, float | None]:
    """The seeded database's URL, what is in it, and the seconds seeding took (None: reused)."""
    import psycopg

    from models.db import upgrade

    server = PG_ADMIN_URL.rsplit("/", 1)[0]
    url = f"{server}/{size.database}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                              (size.database,)).fetchone() is not None
    if keep and exists:
        upgrade(url)  # a newer migration (an index) applies to the kept rows too
        if _counts(url) == (size.jobs, size.epochs):
            return url, _describe(url), None
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{size.database}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{size.database}"')
    start = time.perf_counter()
    upgrade(url)
    seeded = _seed(url, size)
    return url, seeded, time.perf_counter() - start


def drop(size: Size) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{size.database}" WITH (FORCE)')


# ------------------------------------------------------------------------------ measurement


@dataclass(frozen=True)
class Probe:
    name: str
    path: str
    target_ms: float


def probes(seeded: Seeded) -> list[Probe]:
    from models.db.paging import encode_cursor

    deep = encode_cursor(*seeded.cursor_at)
    h, e = seeded.history_job, seeded.experiment
    return [
        Probe("GET /v1/jobs (first page of 50)", "/v1/jobs", 50),
        Probe("GET /v1/jobs deep keyset page", f"/v1/jobs?cursor={deep}", 50),
        Probe("GET /v1/jobs?status=failed", "/v1/jobs?status=failed", 50),
        Probe("GET /v1/jobs?status=running", "/v1/jobs?status=running", 50),
        Probe("GET /v1/jobs?status=failed deep page", f"/v1/jobs?status=failed&cursor={deep}",
              50),
        Probe("GET /v1/jobs?experiment_id=", f"/v1/jobs?experiment_id={e}", 50),
        Probe("GET /v1/jobs/{id}", f"/v1/jobs/{h}", 20),
        Probe(f"GET /v1/jobs/{{id}}/history ({HISTORY_EPOCHS} epochs)", f"/v1/jobs/{h}/history",
              100),
        Probe("GET /v1/jobs/{id}/history?since=900", f"/v1/jobs/{h}/history?since=900", 100),
        Probe("GET /v1/experiments (page of 20)", "/v1/experiments", 50),
        Probe("GET /v1/experiments/{id} (15 children)", f"/v1/experiments/{e}", 50),
        Probe("GET /v1/experiments/{id}/summary", f"/v1/experiments/{e}/summary", 100),
    ]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(url: str, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BNLAB_")}
    env.update(BNLAB_DATABASE_URL=url, BNLAB_API_KEYS=",".join(KEYS), BNLAB_HOME=str(home),
               PYTHONUNBUFFERED="1", MPLCONFIGDIR=str(home / "mpl"))
    return env


@contextlib.contextmanager
def uvicorn(url: str) -> Iterator[str]:
    """A real `uvicorn api.main:app` on the seeded database; yields its base URL."""
    import subprocess

    import httpx

    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="bnlab-scale-") as tmp:
        home = Path(tmp)
        log = (home / "uvicorn.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "api.main:app", "--host", "127.0.0.1", "--port",
             str(port), "--log-level", "warning"], env=_env(url, home), stdout=log,
            stderr=subprocess.STDOUT, cwd=Path(__file__).resolve().parents[1])
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"uvicorn exited: {(home / 'uvicorn.log').read_text()}")
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError("uvicorn did not answer /healthz within 60 s")
                time.sleep(0.2)
            yield base
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


def time_requests(base: str, items: list[Probe], samples: int) -> dict[str, list[float]]:
    """Each probe `samples` times, round-robin (so drift on a busy machine hits all alike);
    milliseconds per request, response fully read. A non-200 raises."""
    import httpx

    out: dict[str, list[float]] = {p.name: [] for p in items}
    headers = {"Authorization": f"Bearer {KEYS[0]}"}
    with httpx.Client(base_url=base, headers=headers, timeout=30) as client:
        for p in items:  # warm-up: connection, first-call paths, PG caches
            for _ in range(3):
                client.get(p.path).raise_for_status()
        for _ in range(samples):
            for p in items:
                start = time.perf_counter()
                r = client.get(p.path)
                _ = r.content
                out[p.name].append((time.perf_counter() - start) * 1000)
                if r.status_code != 200:
                    raise RuntimeError(f"{p.path}: {r.status_code} {r.text[:200]}")
    return out


SEQ_TABLES = {"job", "epoch_metric"}  # experiment: 60 rows, a seq scan is the right plan


def _seq_scans(plan: dict[str, Any]) -> list[str]:
    found = []
    if plan.get("Node Type") == "Seq Scan" and plan.get("Relation Name") in SEQ_TABLES:
        found.append(str(plan["Relation Name"]))
    for child in plan.get("Plans", []):
        found += _seq_scans(child)
    return found


def explain_requests(url: str, items: list[Probe]) -> dict[str, tuple[int, list[str]]]:
    """Per probe: how many SQL statements its request ran in-process (the same app, a
    TestClient), and the tables any of them seq-scans per EXPLAIN."""
    from fastapi.testclient import TestClient
    from sqlalchemy import event

    from api.main import create_app
    from api.settings import ApiSettings

    with tempfile.TemporaryDirectory(prefix="bnlab-scale-") as tmp:
        settings = ApiSettings(database_url=url, api_keys=",".join(KEYS), home=Path(tmp))
        app = create_app(settings)
        statements: list[tuple[str, Any]] = []

        def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any,
                    _context: Any, executemany: bool) -> None:
            if not executemany:
                statements.append((statement, parameters))

        event.listen(app.state.engine, "before_cursor_execute", capture)
        out: dict[str, tuple[int, list[str]]] = {}
        with TestClient(app, headers={"Authorization": f"Bearer {KEYS[0]}"}) as client:
            for p in items:
                client.get(p.path).raise_for_status()  # warm (pool_pre_ping, first use)
                statements.clear()
                client.get(p.path).raise_for_status()
                ran = list(statements)
                scans: list[str] = []
                with app.state.engine.connect() as conn:
                    raw: Any = conn.connection.dbapi_connection
                    with raw.cursor() as cur:
                        for sql, params in ran:
                            if not sql.lstrip().upper().startswith("SELECT"):
                                continue
                            cur.execute("EXPLAIN (FORMAT JSON) " + sql, params)
                            scans += _seq_scans(cur.fetchone()[0][0]["Plan"])
                out[p.name] = (len(ran), sorted(set(scans)))
        event.remove(app.state.engine, "before_cursor_execute", capture)
    return out


def run(quick: bool, keep: bool = False, samples: int | None = None) -> list[Row]:
    """Seed (or reuse), then time and EXPLAIN every probe; rows for bench.report."""
    size = QUICK if quick else FULL
    samples = samples or (30 if quick else 200)
    try:
        import psycopg

        psycopg.connect(PG_ADMIN_URL, connect_timeout=3).close()
    except Exception as exc:
        return [Row(GROUP, "skipped", 0, "", note=f"PostgreSQL not reachable at "
                    f"{PG_ADMIN_URL} ({type(exc).__name__}); set BNLAB_BENCH_PG_ADMIN")]
    try:
        url, seeded, seed_s = prepare(size, keep=keep)
        items = probes(seeded)
        plans = explain_requests(url, items)
        with uvicorn(url) as base:
            timings = time_requests(base, items, samples)
    finally:
        if not keep:
            drop(size)
    data = f"{size.jobs:,} jobs, {size.epochs:,} epochs"
    first = statistics.median(timings[items[0].name])
    rows = []
    if seed_s is not None:
        rows.append(Row(GROUP, f"seed {data} (migrate + COPY + VACUUM ANALYZE)", seed_s, "s"))
    for p in items:
        ms = timings[p.name]
        p99 = _pct(ms, 0.99)
        n_sql, scans = plans[p.name]
        note = f"p50 {statistics.median(ms):.1f} ms, {n_sql} SQL"
        note += f", seq scan on {', '.join(scans)}" if scans else ", no seq scan"
        # Keyset pages cost the same wherever they start: the ratio to the first page shows it.
        deep = "deep" in p.name
        rows.append(Row(GROUP, f"{p.name} p99", p99, "ms",
                        ratio=statistics.median(ms) / first if deep else None,
                        ratio_of="p50 vs first page" if deep else "",
                        target=f"p99 < {p.target_ms:.0f} ms",
                        ok=p99 < p.target_ms and not scans, note=note))
    return rows


def main(argv: list[str] | None = None) -> None:
    from bench.report import print_table

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="1,000 jobs / 50,000 epochs, 30 samples per endpoint")
    parser.add_argument("--keep", action="store_true",
                        help="reuse the seeded database if it holds the expected rows; "
                             "leave it in place")
    parser.add_argument("--samples", type=int, default=None,
                        help="requests per endpoint (default 200, 30 with --quick)")
    args = parser.parse_args(argv)
    print_table(run(args.quick, keep=args.keep, samples=args.samples))


if __name__ == "__main__":
    main()
