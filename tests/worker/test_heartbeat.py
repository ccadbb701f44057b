from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from worker.heartbeat import Periodic, clean_processed, worker_device


def test_clean_processed_deletes_only_old_message_files(tmp_path: Path) -> None:
    old, new, other = tmp_path / "1_a.cpu.msg", tmp_path / "2_b.cpu.msg", tmp_path / "keep.txt"
    for p in (old, new, other):
        p.write_bytes(b"{}")
    day_ago = time.time() - 2 * 86400
    os.utime(old, (day_ago, day_ago))
    os.utime(other, (day_ago, day_ago))

    assert clean_processed(tmp_path, older_than=86400) == 1
    assert not old.exists()
    assert new.exists()
    assert other.exists()


def test_periodic_survives_errors_and_stops() -> None:
    calls: list[int] = []
    twice = threading.Event()

    def flaky() -> None:
        calls.append(1)
        if len(calls) >= 2:
            twice.set()
        raise RuntimeError("database down")

    thread = Periodic("test", 0.01, flaky)
    thread.start()
    assert twice.wait(5), "the thread died on the first error"
    thread.stop()
    thread.join(5)
    assert not thread.is_alive()


def test_cpu_only_worker_advertises_cpu() -> None:
    assert worker_device(["cpu"]) == "cpu"
