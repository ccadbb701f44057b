"""A worker job with `device: cuda`, through run_job against SQLite. Skipped without CUDA;
scripts/gpu_check.sh runs it (`pytest -m cuda`)."""

from __future__ import annotations

import pytest
import torch
from sqlalchemy.orm import Session, sessionmaker

from models.db import repository as repo
from models.spec import JobSpec, Limits
from worker.training_run import RunContext, run_job

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_a_worker_job_with_device_cuda_trains_on_the_gpu(
        sessions: sessionmaker[Session]) -> None:
    spec = JobSpec.model_validate({
        "dataset": {"name": "digits"}, "device": "cuda",
        "network": {"conv": [8, 16], "pool": "max", "batchnorm": "before_activation"},
        "training": {"epochs": 2, "batch_size": 64, "split": "stratified"}})
    with sessions.begin() as session:
        row = repo.create_job(session, spec=spec.model_dump(mode="json"), name="gpu",
                              epochs_total=2, device="cuda")
        job_id = row.id
    ctx = RunContext(sessions=sessions, worker="gpu-test", limits=Limits())
    assert run_job(job_id, ctx) == "succeeded"
    with sessions() as session:
        done = repo.get_job(session, job_id=job_id)
        assert done is not None
        assert str(done.device).startswith("cuda")
        assert [r.epoch for r in repo.history(session, job_id=job_id)] == [1, 2]
