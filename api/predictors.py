"""Eval-mode predictors cached per process, keyed by (job, checkpoint kind, sha256), and
`predictor_for`, which finds a job's checkpoint and fills the cache; exported files likewise.

A newer checkpoint has a new sha256, so it misses the cache and the stale entry ages out of the
small LRU. torch is imported only when the first predictor is built.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session

from api.errors import NotFound
from api.presenters import class_names
from api.schemas import CheckpointRef
from models.db import repository as repo
from models.db.tables import Checkpoint, Job

if TYPE_CHECKING:  # torch loads on the first prediction, not at import
    from models.inference import Predictor

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


def no_checkpoint(job: Job, which: str) -> NotFound:
    return NotFound(f"job '{job.id}' has no '{which}' checkpoint yet (status {job.status}, "
                    f"{job.epochs_done} epochs done): the worker writes one as epochs finish")


def checkpoint_meta(session: Session, job: Job, kind: str) -> Checkpoint:
    """The job's `kind` checkpoint row without its content (404 when there is none yet)."""
    meta = next((c for c in repo.list_checkpoints(session, job_id=job.id) if c.kind == kind),
                None)
    if meta is None:
        raise no_checkpoint(job, kind)
    return meta


def predictor_for(session: Session, job: Job, meta: Checkpoint, predictors: PredictorCache
                  ) -> tuple[Predictor, CheckpointRef]:
    """The eval-mode model of a checkpoint, from the cache (keyed by its sha256) or loaded
    once; and the checkpoint actually used (a newer one may have landed since `meta`)."""
    from models.inference import load_predictor  # torch on first use

    ref = CheckpointRef(kind=meta.kind, epoch=meta.epoch, sha256=meta.sha256)
    predictor = predictors.get((job.id, ref.kind, ref.sha256))
    if predictor is None:
        ckpt = repo.get_checkpoint(session, job_id=job.id, which=ref.kind)
        if ckpt is None:  # deleted between the two reads
            raise no_checkpoint(job, ref.kind)
        ref = CheckpointRef(kind=ckpt.kind, epoch=ckpt.epoch, sha256=ckpt.sha256)
        predictor = load_predictor(ckpt.content, classes=class_names(session, job))
        predictors.put((job.id, ref.kind, ref.sha256), predictor)
    return predictor, ref


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
