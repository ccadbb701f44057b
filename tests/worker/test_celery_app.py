"""The Celery configuration long training tasks rely on."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.queueing import QUEUES, TRAIN_TASK
from worker.celery_app import create_app
from worker.settings import WorkerSettings


@pytest.fixture
def embedded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> WorkerSettings:
    for var in ("BNLAB_DATABASE_URL", "BNLAB_BROKER_URL"):
        monkeypatch.delenv(var, raising=False)
    return WorkerSettings(home=tmp_path)


def test_long_task_settings(embedded: WorkerSettings) -> None:
    conf = create_app(embedded).conf
    assert conf.task_acks_late
    assert conf.task_reject_on_worker_lost
    assert conf.worker_prefetch_multiplier == 1
    assert conf.task_serializer == "json"
    assert list(conf.accept_content) == ["json"]
    assert conf.task_ignore_result
    assert not conf.task_always_eager
    assert {q.name for q in conf.task_queues} == set(QUEUES) == {"cpu", "gpu"}
    assert conf.worker_hijack_root_logger is False


def test_the_worker_registers_the_task_the_api_sends(embedded: WorkerSettings) -> None:
    from worker.tasks import train_job

    # the wire name: messages already in a broker carry it, so it is pinned here too
    assert train_job.name == TRAIN_TASK == "worker.train_job"
    assert create_app(embedded).conf.task_routes == {TRAIN_TASK: {"queue": "cpu"}}


def test_embedded_broker_lives_under_home(embedded: WorkerSettings, tmp_path: Path) -> None:
    conf = create_app(embedded).conf
    assert conf.broker_url == "filesystem://"
    options = conf.broker_transport_options
    for key in ("data_folder_in", "data_folder_out", "processed_folder", "control_folder"):
        assert Path(options[key]).is_relative_to(tmp_path), (key, options[key])
    assert options["data_folder_in"] == options["data_folder_out"]


def test_redis_broker_gets_visibility_timeout(tmp_path: Path) -> None:
    settings = WorkerSettings(home=tmp_path, broker_url="redis://127.0.0.1:6379/0",
                              visibility_timeout=7200)
    conf = create_app(settings).conf
    assert conf.broker_url == "redis://127.0.0.1:6379/0"
    assert conf.broker_transport_options == {"visibility_timeout": 7200}


def test_worker_settings_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BNLAB_WORKER_QUEUES", "gpu, cpu")
    monkeypatch.setenv("BNLAB_MAX_EPOCHS", "50")
    settings = WorkerSettings()
    assert settings.queues == ["gpu", "cpu"]
    assert settings.limits().max_epochs == 50
