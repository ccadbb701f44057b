"""Eval-mode predictors cached per process, keyed by (job, checkpoint kind, sha256).

A newer checkpoint has a new sha256, so it misses the cache and the stale entry ages out of the
small LRU. torch is imported only when the first predictor is built.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

Key = tuple[str, str, str]


class PredictorCache:
    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[Key, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Key) -> Any | None:
        with self._lock:
            if key not in self._items:
                return None
            self._items.move_to_end(key)
            return self._items[key]

    def put(self, key: Key, predictor: Any) -> None:
        with self._lock:
            # A newer checkpoint of the same (job, kind) replaces the older one at once.
            for stale in [k for k in self._items if k[:2] == key[:2] and k != key]:
                del self._items[stale]
            self._items[key] = predictor
            self._items.move_to_end(key)
            while len(self._items) > self._size:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)
