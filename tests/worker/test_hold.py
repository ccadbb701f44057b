"""The test seam that holds a job after one epoch (worker.hold): off unless configured, and
when on it waits for its go file, however long that takes."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from worker.hold import counted_sweeps, epoch_hold, go_file, held_file, sweeps_file
from worker.settings import WorkerSettings


def test_off_by_default(tmp_path: Path) -> None:
    settings = WorkerSettings(home=tmp_path)
    assert settings.test_hold_epoch is None
    assert settings.test_hold_dir is None
    assert epoch_hold(settings.test_hold_dir, settings.test_hold_epoch) is None
    assert epoch_hold(tmp_path, None) is None
    assert epoch_hold(None, 3) is None


def test_holds_at_its_epoch_until_the_go_file_exists(tmp_path: Path) -> None:
    hold = epoch_hold(tmp_path, 2, poll_s=0.005)
    assert hold is not None
    hold("j", 1)  # other epochs pass at once
    hold("j", 3)
    assert not list(tmp_path.iterdir())
    done = threading.Event()

    def train() -> None:
        hold("j", 2)
        done.set()

    worker = threading.Thread(target=train)
    worker.start()
    held = held_file(tmp_path, "j", 2)
    while not held.exists():  # the hold says it is holding ...
        assert worker.is_alive()
        worker.join(0.005)
    assert not done.is_set()  # ... and holds: nothing but the go file releases it
    go_file(tmp_path, "j", 2).touch()
    worker.join(60)
    assert done.is_set()
    hold("j", 2)  # a go file already there: no wait


def test_sweeps_are_counted_only_with_the_seam_on(tmp_path: Path) -> None:
    calls: list[int] = []

    def sweep() -> int:
        calls.append(1)
        return len(calls)

    assert counted_sweeps(None, sweep) is sweep  # off: the reaper's own method, untouched
    counted = counted_sweeps(tmp_path, sweep)
    assert counted() == 1
    assert counted() == 2
    (path,) = tmp_path.iterdir()
    assert path == sweeps_file(tmp_path, os.getpid())
    assert path.read_text() == "2"
