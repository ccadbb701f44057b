"""Celery tasks: thin views over worker.training_run (torch is imported here, once per process)."""

from __future__ import annotations

import torch
from celery import Task

from models.queueing import TRAIN_TASK
from worker.celery_app import app, settings
from worker.db import sessions
from worker.hold import claim_hold, epoch_hold
from worker.signals import STOPPING, sigterm_stops_training
from worker.training_run import RunContext, run_job


@app.task(name=TRAIN_TASK, bind=True, acks_late=True, ignore_result=True)
def train_job(self: Task, job_id: str) -> str | None:
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    ctx = RunContext(sessions=sessions(settings.sqlalchemy_url),
                     worker=self.request.hostname or settings.node_name,
                     limits=settings.limits(), data_dir=settings.data_dir,
                     checkpoint_every=settings.checkpoint_every,
                     checkpoint_small_params=settings.checkpoint_small_params,
                     checkpoint_interval=settings.checkpoint_interval,
                     heartbeat_interval=settings.heartbeat_interval,
                     lease_timeout=settings.lease_timeout, db_retry=settings.db_retry,
                     max_stack=settings.max_stack,
                     stack_checkpoint_interval=settings.stack_checkpoint_interval,
                     small_checkpoint_interval=settings.small_checkpoint_interval,
                     write_interval=settings.epoch_write_interval,
                     stopping=STOPPING,
                     on_epoch_written=epoch_hold(settings.test_hold_dir,
                                                 settings.test_hold_epoch),
                     before_claim=claim_hold(settings.test_hold_dir,
                                             settings.test_hold_epoch))
    with sigterm_stops_training():
        return run_job(job_id, ctx)
