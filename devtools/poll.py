"""One way to wait for something another thread or process does: poll until it is so.

A barrier, never a speed check: `timeout` only bounds a hang, so callers give a generous one,
and nothing passes or fails by being fast.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def poll_until(fetch: Callable[[], T], done: Callable[[T], bool], *, what: str,
               timeout: float, interval: float = 0.1,
               describe: Callable[[T], str] = repr) -> T:
    """Call fetch() every `interval` seconds until done() holds for its value; return it.

    After `timeout` seconds raises AssertionError naming `what` and the last value (shown by
    `describe`, e.g. with the processes' logs). fetch() may raise to give up early.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = fetch()
        if done(value):
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"no {what} after {timeout:.0f}s; last: {describe(value)}")
        time.sleep(interval)
