"""Conditional GETs and cached bodies: a job's weak ETag, the 304 for If-None-Match, and an LRU
of JSON bodies by ETag (a tag names everything its body depends on, so no entry goes stale)."""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

from fastapi import Request, Response, status

from models.db.tables import Job


def job_etag(job: Job, *parts: object) -> str:
    """A weak ETag of what is read from a job: every write to the job's row (progress, status,
    heartbeat, a stored or truncated epoch) moves its updated_at. Weak: `elapsed_s` follows
    the clock between writes. `parts` add request parameters (history's since, format)."""
    raw = "|".join(str(p) for p in (job.id, job.status, job.epochs_done,
                                    job.updated_at.isoformat(), *parts))
    return f'W/"{hashlib.sha256(raw.encode()).hexdigest()[:24]}"'


def not_modified(request: Request, etag: str) -> Response | None:
    """304 when If-None-Match names `etag` (weak comparison, as RFC 9110 asks for GET)."""
    header = request.headers.get("if-none-match")
    if header is None:
        return None
    tags = {t.strip().removeprefix("W/") for t in header.split(",")}
    if "*" in tags or etag.removeprefix("W/") in tags:
        return Response(status_code=status.HTTP_304_NOT_MODIFIED,
                        headers={"ETag": etag, "Cache-Control": "no-cache"})
    return None


class BodyCache:
    """JSON bodies by ETag, least recently used out first, at most `max_bytes` in all. The
    tag names the job's state (and the request's parameters), so an entry never goes stale:
    a finished job's history, which every page load of it asks for, is built once."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes, self.size = max_bytes, 0
        self._items: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> bytes | None:
        with self._lock:
            body = self._items.get(key)
            if body is not None:
                self._items.move_to_end(key)
            return body

    def put(self, key: str, body: bytes) -> None:
        if len(body) > self.max_bytes // 4:
            return
        with self._lock:
            if key in self._items:
                return
            self._items[key] = body
            self.size += len(body)
            while self.size > self.max_bytes:
                _, old = self._items.popitem(last=False)
                self.size -= len(old)


HISTORY_CACHE_BYTES = 32 * 1024 * 1024


def history_cache(request: Request) -> BodyCache:
    """The app's cache of history bodies, made on first use."""
    state = request.app.state
    cache: BodyCache | None = getattr(state, "history_cache", None)
    if cache is None:  # a race here makes two caches, one of which is dropped: harmless
        cache = state.history_cache = BodyCache(HISTORY_CACHE_BYTES)
    return cache
