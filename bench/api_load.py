"""The API under load: 200 concurrent clients while two jobs train, vs the same jobs alone.

    .venv/bin/python -m bench.api_load [--quick] [--clients 200] [--epochs 1000]

The service is the compose deployment's shape: uvicorn (one process) + two Celery workers
(prefork, concurrency 1) on Redis and a PostgreSQL database created for the run. A 1,000-epoch
notebook BN job is trained first (its history is what the history clients read). Then two jobs
(the same network, `--epochs` each) train twice: alone (the baseline), and while the clients
below run, all in one asyncio process (httpx), each on its own schedule with a random phase:

- status, 50% of clients: `GET /v1/jobs/{id}` of a training job every 2 s with If-None-Match,
  a script or `bnlab status` watching a job (the SDK's `wait()` streams events and polls, every
  1 s, only when it cannot);
- history, 25%: `GET /v1/jobs/{id}/history` of the finished 1,000-epoch job every 10 s with no
  If-None-Match: the dashboard's job page loads the whole history on open, so each request
  is a page (re)load, the worst case for the server (a revalidating client would get 304s);
- events, 25%: `GET /v1/jobs/{id}/events` of a training job, read to its `done` event as the
  dashboard's live page and the client's `wait()` do; latency is connect -> first event, and
  each stream must deliver every epoch exactly once.

Every client starts at a random moment within its first 2 s (10 s for history), as viewers
arrive, not all in the same instant.

Reported: p50/p99 latency per endpoint (client side: request sent -> body read), errors (any
status other than 200/304, or a transport error), requests/s, and the training slowdown: the
two jobs' mean running time (started_at -> finished_at) under load / alone (target < 1.15x).
Targets: status p99 < 50 ms, history p99 < 100 ms, zero errors. Everything shares the same
machine (2 cores here): clients, API, PostgreSQL, Redis and both workers.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import httpx

from bench.report import Row, print_table
from bench.service import (
    TERMINAL,
    Service,
    _ts,
    cpu_seconds,
    job_body,
    redis_postgres_service,
    upload_notebook_csv,
    wait_job,
)

GROUP = "api load"
STATUS_INTERVAL_S = 2.0
HISTORY_INTERVAL_S = 10.0
HISTORY_EPOCHS = 1000
TARGETS_MS = {"status": 50.0, "history": 100.0}
SLOWDOWN_TARGET = 1.15
# Authentication on, as compose runs it (a key from BNLAB_API_KEYS): each request is checked.
API_KEY = "bnlab_bench_" + "k" * 32
AUTH = {"Authorization": f"Bearer {API_KEY}"}


@dataclass
class Stats:
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    statuses: dict[str, dict[int, int]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(int)))
    errors: list[str] = field(default_factory=list)
    epochs_seen: dict[str, list[list[int]]] = field(default_factory=lambda: defaultdict(list))

    def record(self, kind: str, seconds: float, status: int) -> None:
        self.latencies[kind].append(seconds)
        self.statuses[kind][status] += 1
        if status not in (200, 304):
            self.errors.append(f"{kind}: HTTP {status}")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


async def status_client(client: httpx.AsyncClient, job_id: str, stop: asyncio.Event,
                        stats: Stats) -> None:
    await asyncio.sleep(random.uniform(0, STATUS_INTERVAL_S))
    etag: str | None = None
    while not stop.is_set():
        t0 = time.perf_counter()
        try:
            r = await client.get(f"/v1/jobs/{job_id}",
                                 headers={"If-None-Match": etag} if etag else None)
            stats.record("status", time.perf_counter() - t0, r.status_code)
            if r.status_code == 200:
                etag = r.headers.get("etag")
        except httpx.HTTPError as exc:
            stats.errors.append(f"status: {type(exc).__name__}: {exc}")
        await asyncio.sleep(STATUS_INTERVAL_S)


async def history_client(client: httpx.AsyncClient, job_id: str, stop: asyncio.Event,
                         stats: Stats) -> None:
    await asyncio.sleep(random.uniform(0, HISTORY_INTERVAL_S))
    while not stop.is_set():
        t0 = time.perf_counter()
        try:
            r = await client.get(f"/v1/jobs/{job_id}/history")
            stats.record("history", time.perf_counter() - t0, r.status_code)
            if r.status_code == 200 and len(r.json()["epoch"]) != HISTORY_EPOCHS:
                stats.errors.append(f"history: {len(r.json()['epoch'])} epochs")
        except httpx.HTTPError as exc:
            stats.errors.append(f"history: {type(exc).__name__}: {exc}")
        await asyncio.sleep(HISTORY_INTERVAL_S)


async def events_client(client: httpx.AsyncClient, job_id: str, epochs: int,
                        stats: Stats) -> None:
    """Read the stream to `done`; record connect -> first event and the epochs received."""
    await asyncio.sleep(random.uniform(0, STATUS_INTERVAL_S))
    seen: list[int] = []
    t0 = time.perf_counter()
    first = True
    try:
        async with client.stream("GET", f"/v1/jobs/{job_id}/events",
                                 headers={"Accept": "text/event-stream"}) as r:
            if r.status_code != 200:
                stats.record("events", time.perf_counter() - t0, r.status_code)
                return
            # Raw bytes, split by hand: httpx's line decoder costs more CPU than the server's
            # side of the stream, and this process shares the machine with the server.
            buf = b""
            done = False
            async for chunk in r.aiter_raw():
                if first and chunk.strip(b"\n").lstrip()[:1] not in (b":", b""):
                    stats.record("events", time.perf_counter() - t0, 200)
                    first = False
                buf += chunk
                *events, buf = buf.split(b"\n\n")
                for event in events:
                    if b"event: epoch" in event:
                        seen.append(int(event.rpartition(b"\nid: ")[2].split(b"\n", 1)[0]))
                    elif b"event: done" in event:
                        done = True
                if done:
                    break
    except httpx.HTTPError as exc:
        stats.errors.append(f"events: {type(exc).__name__}: {exc}")
        return
    stats.epochs_seen[job_id].append(seen)
    if seen != list(range(1, epochs + 1)):
        stats.errors.append(f"events: {len(seen)} epoch events of {epochs} "
                            f"(first {seen[:3]}, last {seen[-3:]})")


def submit_pair(client: httpx.Client, dataset_id: str, epochs: int, tag: str) -> list[str]:
    ids = []
    for seed in (1, 2):
        r = client.post("/v1/jobs", json=job_body(dataset_id, epochs=epochs, seed=seed,
                                                  name=f"{tag}-{seed}"))
        r.raise_for_status()
        ids.append(r.json()["id"])
    return ids


def running_s(job: dict[str, Any]) -> float:
    return _ts(job["finished_at"]) - _ts(job["started_at"])


def train_pair(client: httpx.Client, service: Service, dataset_id: str, epochs: int,
               tag: str) -> list[float]:
    ids = submit_pair(client, dataset_id, epochs, tag)
    return [running_s(wait_job(client, j, logs=service.logs)) for j in ids]


async def load_phase(base_url: str, job_ids: list[str], history_job: str, clients: int,
                     epochs: int, stats: Stats) -> float:
    """Run the clients until both jobs are done; returns the phase's seconds."""
    n_status = clients // 2
    n_history = clients // 4
    n_events = clients - n_status - n_history
    limits = httpx.Limits(max_connections=clients + 10, max_keepalive_connections=clients + 10)
    stop = asyncio.Event()
    start = time.perf_counter()
    async with httpx.AsyncClient(base_url=base_url, limits=limits, headers=AUTH,
                                 timeout=httpx.Timeout(30.0, read=120.0)) as client:
        tasks = [asyncio.create_task(status_client(client, job_ids[i % 2], stop, stats))
                 for i in range(n_status)]
        tasks += [asyncio.create_task(history_client(client, history_job, stop, stats))
                  for _ in range(n_history)]
        streams = [asyncio.create_task(events_client(client, job_ids[i % 2], epochs, stats))
                   for i in range(n_events)]
        # The jobs end when every stream has seen `done`; status pollers also watch for it.
        await asyncio.gather(*streams)
        while True:
            r = await client.get(f"/v1/jobs/{job_ids[0]}")
            s = await client.get(f"/v1/jobs/{job_ids[1]}")
            if r.json()["status"] in TERMINAL and s.json()["status"] in TERMINAL:
                break
            await asyncio.sleep(0.2)
        stop.set()
        for task in tasks:  # pollers sleeping out their interval: no need to wait for them
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return time.perf_counter() - start


def _cpu(service: Service) -> float:
    return cpu_seconds(service.api_pid) if service.api_pid is not None else float("nan")


def measure(service: Service, *, clients: int, epochs: int, quick: bool) -> list[Row]:
    with httpx.Client(base_url=service.base_url, timeout=30, headers=AUTH) as client:
        dataset_id = upload_notebook_csv(client)
        # The history clients' job; a short one alongside warms the second worker.
        long_job = client.post("/v1/jobs", json=job_body(
            dataset_id, epochs=HISTORY_EPOCHS, name="history")).json()["id"]
        warm = client.post("/v1/jobs", json=job_body(dataset_id, epochs=3, name="warm-up"))
        for job_id in (warm.json()["id"], long_job):
            done = wait_job(client, job_id, logs=service.logs)
            if done["status"] != "succeeded":
                raise RuntimeError(f"job {job_id} {done['status']}: {done.get('error')}")
        alone = train_pair(client, service, dataset_id, epochs, "alone")
        stats = Stats()
        ids = submit_pair(client, dataset_id, epochs, "loaded")
        api_cpu, own_cpu = _cpu(service), time.process_time()
        phase_s = asyncio.run(load_phase(service.base_url, ids, long_job, clients, epochs,
                                         stats))
        api_cpu, own_cpu = _cpu(service) - api_cpu, time.process_time() - own_cpu
        loaded_jobs = [wait_job(client, j, logs=service.logs) for j in ids]
        loaded = [running_s(j) for j in loaded_jobs]
        if not quick:  # the baseline again after, so a drift in the machine shows in both
            alone += train_pair(client, service, dataset_id, epochs, "alone-after")
    slowdown = statistics.mean(loaded) / statistics.mean(alone)
    n_requests = sum(len(v) for v in stats.latencies.values())
    rows: list[Row] = []
    for kind in ("status", "history", "events"):
        lat = [x * 1000 for x in stats.latencies.get(kind, [])]
        codes = dict(sorted(stats.statuses[kind].items()))
        what = {"status": f"GET /v1/jobs/{{id}} every {STATUS_INTERVAL_S:g} s, If-None-Match",
                "history": f"GET /history, {HISTORY_EPOCHS} epochs, every "
                           f"{HISTORY_INTERVAL_S:g} s, full body",
                "events": "SSE connect -> first event"}[kind]
        target = TARGETS_MS.get(kind)
        p99 = percentile(lat, 99)
        for q, value in ((50, percentile(lat, 50)), (99, p99)):
            ok = None if target is None or q != 99 else value < target
            rows.append(Row(GROUP, f"{kind} p{q}", value, "ms",
                            target=f"p99 < {target:g} ms" if target and q == 99 else "",
                            ok=ok, note=f"{what}; {len(lat)} requests, {codes}"
                            if q == 50 else ""))
    rows.append(Row(GROUP, "errors", float(len(stats.errors)), "", target="0",
                    ok=not stats.errors, note="; ".join(sorted(set(stats.errors))[:3])))
    rows.append(Row(GROUP, "requests served", n_requests / phase_s, "req/s",
                    note=f"{clients} clients ({clients // 2} status, {clients // 4} history, "
                         f"{clients - clients // 2 - clients // 4} events), {phase_s:.1f} s; CPU: "
                         f"API process {api_cpu / phase_s:.0%} of a core, load generator "
                         f"{own_cpu / phase_s:.0%}"))
    rows.append(Row(GROUP, "training under load", statistics.mean(loaded), "s", slowdown,
                    "vs the same two jobs alone", f"< {SLOWDOWN_TARGET}x",
                    slowdown < SLOWDOWN_TARGET,
                    f"2 jobs x {epochs} epochs in parallel; alone "
                    f"{statistics.mean(alone):.2f} s"))
    return rows


def run(quick: bool, clients: int = 200, epochs: int | None = None) -> list[Row]:
    epochs = epochs or (300 if quick else 1000)
    try:
        with redis_postgres_service(workers=2, BNLAB_API_KEYS=API_KEY) as service:
            return measure(service, clients=clients, epochs=epochs, quick=quick)
    except Exception as exc:  # unreachable PostgreSQL/Redis, a failed job: a row, not a crash
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return [Row(GROUP, "not measured", float("nan"), "", ok=False,
                    note=f"{type(exc).__name__}: {first_line[:200]}")]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="300-epoch jobs, one baseline")
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=None,
                        help="epochs of each training job (default 1000; quick 300)")
    args = parser.parse_args()
    print_table(run(args.quick, args.clients, args.epochs))


if __name__ == "__main__":
    main()
