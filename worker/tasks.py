"""Celery tasks: thin views over worker.training_run (torch is imported here, once per process)."""

from __future__ import annotations

import torch
from celery import Task

from worker.celery_app import app, settings
from worker.db import sessions
from worker.training_run import RunContext, run_job


@app.task(name="worker.train_job", bind=True, acks_late=True, ignore_result=True)
def train_job(self: Task, job_id: str) -> str | None:
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    ctx = RunContext(sessions=sessions(settings.sqlalchemy_url),
                     worker=self.request.hostname or settings.node_name,
                     limits=settings.limits(), checkpoint_every=settings.checkpoint_every)
    return run_job(job_id, ctx)
