"""The Celery names the API (producer) and the worker (consumer) agree on.

Plain strings, no torch and no Celery: api/ imports them without loading the trainer, and the
database's queue constraint (models.db.tables) checks the same names.
"""

from __future__ import annotations

from typing import Final

TRAIN_TASK: Final = "worker.train_job"
QUEUES: Final = ("cpu", "gpu")
