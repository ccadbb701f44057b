"""Eval-mode predictors cached per process, keyed by (job, checkpoint kind, sha256).

A newer checkpoint has a new sha256, so it misses the cache and the stale entry ages out of the
small LRU. torch is imported only when the first predictor is built.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
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


# (job, checkpoint kind, sha256, format, fold_bn, class names)
ExportKey = tuple[str, str, str, str, bool, tuple[str, ...] | None]


class ExportCache:
    """Exported files (bytes) per checkpoint digest, LRU within a byte budget.

    An ONNX export takes seconds (tracing + the dynamo exporter), so each (checkpoint, format,
    fold) is built once; `produce` also serializes builds, because torch.export's tracing is not
    safe to run in several threads at once, and a second request for the same file waits for
    the first instead of building it again.
    """

    def __init__(self, max_bytes: int) -> None:
        self._max_bytes = max_bytes
        self._items: OrderedDict[ExportKey, tuple[bytes, str, str]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._build = threading.Lock()

    def get(self, key: ExportKey) -> tuple[bytes, str, str] | None:
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
            return item

    def _put(self, key: ExportKey, item: tuple[bytes, str, str]) -> None:
        if len(item[0]) > self._max_bytes:
            return  # larger than the whole budget: served, not kept
        with self._lock:
            for stale in [k for k in self._items if k[:2] == key[:2] and k[2] != key[2]]:
                self._bytes -= len(self._items.pop(stale)[0])  # an older checkpoint's files
            if key in self._items:
                return
            self._items[key] = item
            self._bytes += len(item[0])
            while self._bytes > self._max_bytes:
                self._bytes -= len(self._items.popitem(last=False)[1][0])

    def produce(self, key: ExportKey, build: Callable[[], tuple[bytes, str, str]]
                ) -> tuple[bytes, str, str]:
        """The cached (content, media type, extension), or `build()`'s, kept for next time."""
        item = self.get(key)
        if item is not None:
            return item
        with self._build:
            item = self.get(key)  # built by the request this one waited for
            if item is None:
                item = build()
                self._put(key, item)
        return item

    @property
    def size_bytes(self) -> int:
        return self._bytes
