"""Prometheus metrics: `GET /metrics`, and the middleware that times and logs every request.

What is exported, and where each number comes from:
- `bnlab_jobs{status}`: jobs in the database per status, counted at scrape time.
- `bnlab_queue_depth{queue}`: messages waiting in the broker per Celery queue (Redis: the
  queue lists' lengths; embedded: message files in the queue folder). Delivered messages whose
  job is running are not waiting, so they are not counted.
- `bnlab_epochs_per_second`: epochs completed by all workers over the last
  EPOCH_RATE_WINDOW_S seconds, from the epoch rows written in that window (the database is the
  only place the API sees training progress; it needs the API's and workers' clocks in sync).
- `bnlab_http_requests_total` and `bnlab_http_request_duration_seconds{method,route,status}`:
  by route template (`/v1/jobs/{job_id}`, never the raw path, so ids cannot grow the label
  set) and status class (2xx..5xx); duration to the end of the response, or to its headers
  for an event stream, whose length is the client's choice.
- `bnlab_http_requests_in_progress`, `bnlab_metrics_source_up{source}` (1 if the scrape could
  read the database / broker).

The HTTP numbers are this API process's own; the database and broker ones are global, so
several API processes report the same values. /metrics needs no key and is not rate limited:
scrapers rarely carry credentials, and it exposes counts only (no ids, names or owners). Keep
it off a public network at the proxy if even counts are private. Database and broker reads are
shared by scrapes less than SNAPSHOT_TTL_S apart, so a flood of scrapes costs the database
nothing more.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Any

from fastapi import APIRouter, FastAPI, Request, Response
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.orm import Session, sessionmaker
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from config.settings import BaseBnlabSettings
from models.db import stats_repo
from models.db.tables import utcnow
from models.queueing import QUEUES

log = logging.getLogger(__name__)
access_log = logging.getLogger("bnlab.access")

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4  # the text format every Prometheus version reads
EPOCH_RATE_WINDOW_S = 60.0
SNAPSHOT_TTL_S = 1.0
# Seconds; fine around the targets (status < 50 ms, history < 100 ms, predict < 5 ms).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5,
                   5.0, 10.0)
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Probes and scrapes come every few seconds: their access lines are DEBUG, not INFO.
_QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
# kombu's Redis transport keeps a list per queue, plus one per priority step above 0.
_REDIS_PRIORITY_SEP = "\x06\x16"


class QueueDepth:
    """Messages waiting per queue in the configured broker; {} for a broker it cannot read."""

    def __init__(self, settings: BaseBnlabSettings) -> None:
        self._settings = settings
        self._redis: Any = None

    def __call__(self) -> dict[str, int]:
        if self._settings.embedded:
            folder = self._settings.broker_folder / "queue"
            counts = dict.fromkeys(QUEUES, 0)
            with os.scandir(folder) as entries:
                for entry in entries:
                    for queue in QUEUES:
                        if entry.name.endswith(f".{queue}.msg"):
                            counts[queue] += 1
            return counts
        url = self._settings.redis_url
        if url is None:
            return {}
        if self._redis is None:
            import redis

            self._redis = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        pipe = self._redis.pipeline(transaction=False)
        for queue in QUEUES:
            for key in [queue, *(f"{queue}{_REDIS_PRIORITY_SEP}{s}" for s in range(1, 10))]:
                pipe.llen(key)
        lengths = pipe.execute()
        per_queue = len(lengths) // len(QUEUES)
        return {q: int(sum(lengths[i * per_queue:(i + 1) * per_queue]))
                for i, q in enumerate(QUEUES)}

    def close(self) -> None:
        if self._redis is not None:
            self._redis.close()


class StateCollector(Collector):
    """Database and broker gauges, read when scraped (at most once per SNAPSHOT_TTL_S)."""

    def __init__(self, sessions: sessionmaker[Session], queue_depth: Callable[[], dict[str, int]],
                 lease_timeout_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._sessions = sessions
        self._queue_depth = queue_depth
        self._lease_timeout = timedelta(seconds=lease_timeout_s)
        self._clock = clock
        self._lock = threading.Lock()
        self._snapshot: list[Metric] = []
        self._taken_at = -float("inf")

    def describe(self) -> Iterable[Metric]:
        return []  # the registry would otherwise collect (query the database) at register

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            if self._clock() - self._taken_at >= SNAPSHOT_TTL_S:
                self._snapshot = self._read()
                self._taken_at = self._clock()
            return list(self._snapshot)

    def _read(self) -> list[Metric]:
        up = GaugeMetricFamily("bnlab_metrics_source_up",
                               "1 if this scrape could read the source, else 0",
                               labels=["source"])
        out: list[Metric] = [up]
        try:
            window = timedelta(seconds=EPOCH_RATE_WINDOW_S)
            with self._sessions() as session:
                counts = stats_repo.job_counts(session)
                epochs = stats_repo.epochs_since(session, since=utcnow() - window,
                                                 lease_timeout=self._lease_timeout)
        except Exception as exc:  # reported as bnlab_metrics_source_up 0; one line, no trace
            log.warning("metrics: could not read the database: %s", _first_line(exc))
            up.add_metric(["database"], 0)
        else:
            up.add_metric(["database"], 1)
            jobs = GaugeMetricFamily("bnlab_jobs", "Jobs in the database by status",
                                     labels=["status"])
            for status, n in counts.items():
                jobs.add_metric([status], n)
            rate = GaugeMetricFamily(
                "bnlab_epochs_per_second",
                f"Epochs completed per second by all workers over the last "
                f"{EPOCH_RATE_WINDOW_S:g} s (epoch rows written in that window)")
            rate.add_metric([], epochs / EPOCH_RATE_WINDOW_S)
            out += [jobs, rate]
        try:
            depths = self._queue_depth()
        except Exception as exc:
            log.warning("metrics: could not read the broker's queues: %s", _first_line(exc))
            up.add_metric(["broker"], 0)
        else:
            up.add_metric(["broker"], 1)
            if depths:
                depth = GaugeMetricFamily("bnlab_queue_depth",
                                          "Messages waiting in the broker per queue",
                                          labels=["queue"])
                for queue, n in depths.items():
                    depth.add_metric([queue], n)
                out.append(depth)
        return out


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


class Metrics:
    """One app's metrics in a registry of its own (two apps in one process, as in tests, never
    share counters)."""

    def __init__(self, sessions: sessionmaker[Session], settings: BaseBnlabSettings) -> None:
        self.registry = CollectorRegistry()
        labels = ["method", "route", "status"]
        self.requests = Counter("bnlab_http_requests", "HTTP requests answered", labels,
                                registry=self.registry)
        self.latency = Histogram(
            "bnlab_http_request_duration_seconds",
            "Seconds from request to the end of the response (event streams: to its headers)",
            labels, buckets=LATENCY_BUCKETS, registry=self.registry)
        self.in_progress = Gauge("bnlab_http_requests_in_progress",
                                 "HTTP requests being answered now (open event streams too)",
                                 registry=self.registry)
        self.queue_depth = QueueDepth(settings)
        self.registry.register(StateCollector(sessions, self.queue_depth,
                                              settings.lease_timeout))

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        labels = (method if method in _METHODS else "other", route, f"{status // 100}xx")
        self.requests.labels(*labels).inc()
        self.latency.labels(*labels).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def close(self) -> None:
        self.queue_depth.close()


class RouteTemplates:
    """The path template that served (or would serve) a request: `/v1/jobs/{job_id}`, never
    the raw path; "unmatched" when no route takes it."""

    def __init__(self, app: FastAPI) -> None:
        self._app = app
        self._table: list[tuple[re.Pattern[str], str]] | None = None

    def __call__(self, scope: Scope) -> str:
        route = scope.get("route")
        if route is not None:
            template = _routed_template(scope, route)
            if template is not None:
                return template
        # Answered before routing (401, 413, 429 from the middleware) or by no route (404).
        path = scope["path"]
        return next((t for regex, t in self._templates() if regex.match(path)), "unmatched")

    def _templates(self) -> list[tuple[re.Pattern[str], str]]:
        # The documented paths in the router's order (so /v1/datasets/builtin comes before
        # /v1/datasets/{dataset_id}, as when routing), then the undocumented top-level ones.
        if self._table is None:
            paths = list(self._app.openapi().get("paths", {}))
            paths += [p for r in self._app.routes
                      if isinstance(p := getattr(r, "path", None), str) and p not in paths]
            self._table = [(regex, template) for regex, template, _ in map(compile_path, paths)]
        return self._table


def _routed_template(scope: Scope, route: Any) -> str | None:
    """The router's route knows its template relative to the router it was included with
    (`/jobs/{job_id}` under `/v1`): the prefix is what the path has before that part."""
    template = getattr(route, "path_format", None)
    if not isinstance(template, str):
        return None
    try:
        rendered = str(route.url_path_for(route.name, **scope.get("path_params", {})))
    except Exception:  # not a named, reversible route
        return None
    path: str = scope["path"]
    return path[:len(path) - len(rendered)] + template if path.endswith(rendered) else None


class RequestMetrics:
    """Plain ASGI (streams pass through untouched): counts and times every HTTP request and
    writes its access log line (method, path, route, status, duration; the request id comes
    from the log context RequestId binds)."""

    def __init__(self, app: ASGIApp, metrics: Metrics, templates: RouteTemplates) -> None:
        self.app = app
        self.metrics = metrics
        self.template = templates

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status: int | None = None
        observed = False

        def observe() -> None:
            nonlocal observed
            if not observed and status is not None:
                observed = True
                self.metrics.observe(scope["method"], self.template(scope),
                                     status, time.perf_counter() - start)

        async def timed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = dict(message.get("headers") or [])
                if headers.get(b"content-type", b"").startswith(b"text/event-stream"):
                    observe()
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                observe()

        self.metrics.in_progress.inc()
        try:
            await self.app(scope, receive, timed_send)
        except Exception:
            if status is None:
                status = 500  # the server's error handler, outside this one, answers it
            raise
        finally:
            self.metrics.in_progress.dec()
            observe()
            if status is not None:
                self._log(scope, status, time.perf_counter() - start)

    def _log(self, scope: Scope, status: int, seconds: float) -> None:
        level = logging.DEBUG if scope["path"] in _QUIET_PATHS and status < 400 else logging.INFO
        if not access_log.isEnabledFor(level):
            return
        ms = round(seconds * 1000, 2)
        access_log.log(level, "%s %s %d %.1f ms", scope["method"], scope["path"], status, ms,
                       extra={"method": scope["method"], "path": scope["path"],
                              "route": self.template(scope), "status": status,
                              "duration_ms": ms})


router = APIRouter(tags=["health"])


@router.get("/metrics", response_class=Response, responses={200: {
    "description": "Prometheus text format 0.0.4: jobs by status, queue depth, epochs per "
                   "second, request counts and latency histograms. No key needed.",
    "content": {"text/plain": {"schema": {"type": "string"}}}}})
def metrics(request: Request) -> Response:
    # Sync, so FastAPI runs it in its threadpool: the database and broker reads never block
    # the event loop.
    registry: Metrics = request.app.state.metrics
    return Response(registry.render(), media_type=CONTENT_TYPE)
