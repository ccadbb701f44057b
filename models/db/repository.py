"""Every data-access function in one namespace: `from models.db import repository as repo`.

All take keyword-only arguments with the session first, flush when they must, and never
commit: the caller (a request dependency, a task body) owns the transaction.
"""

from models.db.checkpoints_repo import get_checkpoint, list_checkpoints, put_checkpoint
from models.db.datasets_repo import (
    create_dataset,
    delete_dataset,
    get_dataset,
    get_dataset_content,
    list_datasets,
)
from models.db.epochs_repo import history, latest_epoch, record_epoch, truncate_after
from models.db.jobs_repo import (
    InvalidCursor,
    claim_job,
    create_job,
    delete_job,
    find_by_idempotency_key,
    finish_job,
    get_job,
    heartbeat,
    held_by,
    is_cancel_requested,
    list_jobs,
    make_due,
    queued_jobs,
    release_job,
    request_cancel,
    request_release,
    stale_jobs,
    stop_flags,
    touch_queued,
    update_progress,
)
from models.db.workers_repo import beat_worker, live_workers

__all__ = [
    "InvalidCursor",
    "beat_worker",
    "claim_job",
    "create_dataset",
    "create_job",
    "delete_dataset",
    "delete_job",
    "find_by_idempotency_key",
    "finish_job",
    "get_checkpoint",
    "get_dataset",
    "get_dataset_content",
    "get_job",
    "heartbeat",
    "held_by",
    "history",
    "is_cancel_requested",
    "latest_epoch",
    "list_checkpoints",
    "list_datasets",
    "list_jobs",
    "live_workers",
    "make_due",
    "put_checkpoint",
    "queued_jobs",
    "record_epoch",
    "release_job",
    "request_cancel",
    "request_release",
    "stale_jobs",
    "stop_flags",
    "touch_queued",
    "truncate_after",
    "update_progress",
]
