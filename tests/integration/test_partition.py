"""A worker cut off from the network while it trains (issue 18).

One worker runs in a network namespace of its own and reaches a private PostgreSQL and a
private Redis over a veth link; the API and a second worker stay in the host's namespace. The
test cuts that link while the job trains, for longer than the lease timeout: the job moves to
the second worker and finishes with each epoch once. When the link comes back, the cut-off
worker finds its lease gone, writes nothing more for that job (fenced) and takes work again.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from devtools.procs import HANG_S, Procs, free_port, wait_for_log
from tests.support.fault_stack import (
    RECOVERY_S,
    RESUMED,
    Stack,
    api_on,
    assert_exact_history,
    job_body,
    kill_group,
    redis_server,
)
from tests.support.netns import Link, namespace_link
from tests.support.pg_cluster import private_cluster

pytestmark = pytest.mark.integration


@dataclass
class Partitioned:
    stack: Stack
    link: Link
    far_env: dict[str, str]  # the namespace sees the servers at the host's end of the link


@pytest.fixture
def partitionable(tmp_path: Path) -> Iterator[Partitioned]:
    """The stack on servers that listen on loopback and on the host's end of the link."""
    with namespace_link() as link, \
            private_cluster(listen=("127.0.0.1", link.host_ip), trust=(link.net,)) as pg:
        servers = Procs(tmp_path)
        redis_port = free_port()
        redis_server(servers, "redis", redis_port, bind=("127.0.0.1", link.host_ip))
        try:
            with api_on(pg.url(), f"redis://127.0.0.1:{redis_port}/0", tmp_path / "home") as st:
                st.workers = Procs(tmp_path)
                far_env = {"BNLAB_DATABASE_URL": pg.url(host=link.host_ip),
                           "BNLAB_BROKER_URL": f"redis://{link.host_ip}:{redis_port}/0"}
                try:
                    yield Partitioned(st, link, far_env)
                finally:
                    st.workers.stop_all(grace=10)
                    print(st.workers.dump_logs())
        finally:
            servers.stop_all()


def test_partitioned_worker_is_fenced_and_its_job_moves(partitionable: Partitioned) -> None:
    stack, link = partitionable.stack, partitionable.link
    epochs = 30
    hold = stack.hold(3)
    far = stack.start_worker("far", hold=hold, env=partitionable.far_env, prefix=link.exec_prefix())
    job_id = stack.submit(job_body("partitioned", epochs))
    running = stack.wait_held(hold, job_id)
    assert stack.worker_of(running) is far
    near = stack.start_worker("near")
    wait_for_log(near, " ready.")

    link.down()
    try:
        hold.release(job_id)  # it trains on; its next writes meet the cut link
        # Only once its lease has timed out does the near worker's reaper hand the job over.
        moved = stack.wait_job(job_id, "to move to the near worker",
                               lambda j: str(j["worker"]).startswith("near-"),
                               timeout=RECOVERY_S)
        assert moved["attempts"] == 2, moved
    finally:
        link.up()
    wait_for_log(far, f"job {job_id}: lease of ")
    wait_for_log(far, "stopped without writing more")

    job = stack.wait_done(job_id, timeout=RECOVERY_S)
    assert job["status"] == "succeeded", (job, stack.logs())
    assert stack.worker_of(job) is near
    assert_exact_history(stack, job_id, epochs)  # nothing written twice, nothing missing
    resumed = [int(e) for j, e in RESUMED.findall(near.log_tail(10**8)) if j == job_id]
    assert resumed == [3], (resumed, stack.logs())  # from the far worker's last checkpoint

    # Back to work: with the near worker gone, the far one trains the next job.
    kill_group(near, signal.SIGTERM)
    assert near.popen.wait(HANG_S) == 0, near.log_tail()
    next_id = stack.submit(job_body("after", 5))
    hold.release(next_id)
    after = stack.wait_done(next_id, timeout=RECOVERY_S)
    assert after["status"] == "succeeded", (after, stack.logs())
    assert stack.worker_of(after) is far
    assert_exact_history(stack, next_id, 5)
