"""Per-key rate limits (token buckets) and the active-jobs cap.

With a Redis broker the buckets live in Redis (api/shared_buckets.py), so the limit holds
across every API process; the embedded default has one API process and keeps them in memory
(`RateLimiter`). The active-jobs cap counts under a per-owner lock (repo.lock_submissions), so
two simultaneous submissions cannot both pass it.

`RateLimit` is plain ASGI and sits after authentication, so it knows the key, and before the
body cap and the routes, so a refused upload is answered without reading its body.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session
from starlette.types import ASGIApp, Receive, Scope, Send

from api.errors import ApiError
from api.middleware import request_id_of
from models.db import repository as repo

PERIODS = {"second": 1.0, "minute": 60.0, "hour": 3600.0}
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(second|minute|hour)\s*$")
_PREDICT = re.compile(r"^/v1/jobs/[^/]+/predict/?$")
# GETs that run a model
_MODEL_GETS = re.compile(r"^/v1/jobs/[^/]+/(boundary|export|validation)/?$")
SUBMISSION_PATHS = frozenset({"/v1/jobs", "/v1/experiments", "/v1/studies", "/v1/datasets"})


@dataclass(frozen=True)
class Rate:
    count: int
    period_s: float
    text: str  # as configured, for messages

    @property
    def per_unit(self) -> str:
        unit = next(u for u, s in PERIODS.items() if s == self.period_s)
        return f"{self.count} per {unit}"


def parse_rate(text: str) -> Rate | None:
    """"60/minute" -> Rate(60, 60.0); "" -> None (no limit). ValueError otherwise."""
    if not text.strip():
        return None
    match = _RATE.match(text)
    if match is None or int(match.group(1)) < 1:
        raise ValueError(f"'{text}' is not a rate: write N/second, N/minute or N/hour with "
                         "N >= 1, or leave it empty for no limit")
    return Rate(int(match.group(1)), PERIODS[match.group(2)], text.strip())


class Buckets:
    """A token bucket per key: `count` tokens, refilled evenly over `period_s`, so a burst of
    `count` is allowed and then one request per period/count.

    `spend(key)` takes a token: 0.0 if there was one, else the seconds until the next one
    (nothing is spent). The middleware awaits `take`, which a limiter that does I/O runs off
    the event loop.
    """

    rate: Rate

    def spend(self, key: str) -> float:
        raise NotImplementedError

    async def take(self, key: str) -> float:
        return self.spend(key)

    def close(self) -> None:
        """Release what the limiter holds (a connection); memory buckets hold nothing."""


class RateLimiter(Buckets):
    """The buckets in this process's memory."""

    def __init__(self, rate: Rate, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)
        self._lock = threading.Lock()

    def spend(self, key: str) -> float:
        refill = self.rate.count / self.rate.period_s  # tokens per second
        with self._lock:
            now = self.clock()
            tokens, at = self._buckets.get(key, (float(self.rate.count), now))
            tokens = min(float(self.rate.count), tokens + (now - at) * refill)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                return 0.0
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / refill


def limited_kind(method: str, path: str) -> str | None:
    """Which limit a request counts against: "submissions", "predictions" or None."""
    if method == "POST" and path.rstrip("/") in SUBMISSION_PATHS:
        return "submissions"
    if (method == "POST" and _PREDICT.match(path)) or (method == "GET" and _MODEL_GETS.match(path)):
        return "predictions"
    return None


class RateLimit:
    """429 with Retry-After when the request's key has no token left for its kind.

    `limiters` maps a kind to its limiter (a kind without one is not limited). The key is the
    principal Authenticate left in the scope's state.
    """

    def __init__(self, app: ASGIApp, limiters: Mapping[str, Buckets]) -> None:
        self.app = app
        self.limiters = limiters

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            kind = limited_kind(scope["method"], scope["path"])
            limiter = self.limiters.get(kind) if kind is not None else None
            if limiter is not None:
                state: dict[str, Any] = scope.get("state") or {}
                principal = state.get("principal")
                owner = getattr(principal, "owner", "anonymous")
                wait = await limiter.take(owner)
                if wait > 0:
                    await _too_many(send, scope, kind or "", limiter.rate, wait)
                    return
        await self.app(scope, receive, send)


async def _too_many(send: Send, scope: Scope, kind: str, rate: Rate, wait: float) -> None:
    retry_after = max(1, math.ceil(wait))
    body = json.dumps({"error": "RateLimited", "detail": (
        f"too many {kind} for this API key: the limit is {rate.per_unit} "
        f"(rate_limit_{kind}={rate.text}); retry in {retry_after} s"),
        "request_id": request_id_of(scope)}).encode()
    await send({"type": "http.response.start", "status": 429, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"retry-after", str(retry_after).encode())]})
    await send({"type": "http.response.body", "body": body})


class TooManyActiveJobs(ApiError):
    status_code = 429


# What a client is told to wait when its key is at max_active_jobs_per_key: a guess (jobs
# finish when they finish), long enough that a retrying client does not hammer the API.
ACTIVE_RETRY_AFTER_S = 30


def check_active_jobs(session: Session, *, owner: str, adding: int, limit: int) -> None:
    """Refuse a submission that would take `owner` past `limit` queued + running jobs.

    Takes the owner's submission lock first, held until the session commits the new jobs (or
    rolls back), so the count and the insert are one step across requests and API processes.
    """
    repo.lock_submissions(session, owner=owner)
    active = repo.count_active(session, owner=owner)
    if active + adding > limit:
        raise TooManyActiveJobs(
            f"this API key has {active} queued or running jobs and this request adds {adding}; "
            f"the limit (max_active_jobs_per_key) is {limit}: wait for some to finish or "
            "cancel some", headers={"Retry-After": str(ACTIVE_RETRY_AFTER_S)})
