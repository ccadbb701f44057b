"""Token buckets in Redis, shared by every API process on the same broker.

One Lua script reads, refills, spends and writes a bucket atomically on the server, using the
server's clock (Redis TIME), so processes on machines whose clocks differ agree. A bucket left
alone for a whole period is full again, so its key expires then (PEXPIRE): idle keys cost
nothing and Redis holds only the callers of the last period.

When Redis does not answer, the limit falls back to this process's own buckets (the N-times
limit of the embedded default) rather than refusing every request or none: rate limiting is a
guard, not a reason for an outage. One warning says so, and one line when Redis is back; for
`RETRY_AFTER_S` after a failure the process does not ask Redis at all, so an unreachable
server does not add its connect timeout to every limited request.
"""

from __future__ import annotations

import logging
import threading
import time

import anyio.to_thread

from api.ratelimit import Buckets, Rate, RateLimiter

log = logging.getLogger(__name__)

KEY_PREFIX = "bnlab:rl:"
RETRY_AFTER_S = 1.0
TIMEOUT_S = 0.5  # connect and reply; a local Redis answers in well under a millisecond

# KEYS[1]: the bucket; ARGV: count, period in ms. Returns the wait in ms as a string (Lua
# numbers come back as integers otherwise), "0" when a token was spent.
SPEND = """
local count = tonumber(ARGV[1])
local period_ms = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local held = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(held[1]) or count
local at = tonumber(held[2]) or now
local refill = count / period_ms
tokens = math.min(count, tokens + math.max(0, now - at) * refill)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / refill end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(period_ms))
return tostring(wait)
"""


class RedisBuckets(Buckets):
    """The buckets of one kind ("submissions", "predictions") in the Redis at `url`."""

    def __init__(self, rate: Rate, url: str, kind: str) -> None:
        import redis  # the server's dependency via celery[redis]; only Redis brokers need it
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self.rate = rate
        self.prefix = f"{KEY_PREFIX}{kind}:"
        self._redis = redis.Redis.from_url(
            url, socket_timeout=TIMEOUT_S, socket_connect_timeout=TIMEOUT_S,
            retry=Retry(NoBackoff(), 0))  # one try: a miss falls back at once, never waits
        self._script = self._redis.register_script(SPEND)
        self._errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
        self._local = RateLimiter(rate)
        self._lock = threading.Lock()
        self._down_until = 0.0  # monotonic; Redis is not asked before then
        self._down = False

    def spend(self, key: str) -> float:
        if time.monotonic() < self._down_until:
            return self._local.spend(key)
        try:
            wait_ms = float(self._script(keys=[self.prefix + key], args=[
                self.rate.count, self.rate.period_s * 1000.0]))
        except self._errors as exc:
            self._failed(exc)
            return self._local.spend(key)
        if self._down:
            self._recovered()
        return wait_ms / 1000.0

    async def take(self, key: str) -> float:
        # A network round trip: off the event loop, so a slow Redis never stalls the others.
        return await anyio.to_thread.run_sync(self.spend, key)

    def close(self) -> None:
        self._redis.close()

    def _failed(self, exc: BaseException) -> None:
        with self._lock:
            self._down_until = time.monotonic() + RETRY_AFTER_S
            first = not self._down
            self._down = True
        if first:
            log.warning("rate limits: Redis did not answer (%s: %s); limiting with this "
                        "process's own buckets until it does", type(exc).__name__, exc)

    def _recovered(self) -> None:
        with self._lock:
            was_down, self._down = self._down, False
        if was_down:
            log.warning("rate limits: Redis answers again; the limits are shared again")


def limiters_for(redis_url: str | None, rates: dict[str, Rate]) -> dict[str, Buckets]:
    """Shared buckets when the broker is Redis (`redis_url`), this process's own otherwise."""
    if redis_url is not None:
        return {kind: RedisBuckets(rate, redis_url, kind) for kind, rate in rates.items()}
    return {kind: RateLimiter(rate) for kind, rate in rates.items()}
