"""Retries and typed errors against a real local HTTP server (a socket, no mocks)."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from bnlab import (
    AsyncClient,
    AuthenticationError,
    Client,
    Conflict,
    ConnectionError,
    NotFound,
    RateLimited,
    ServerError,
    ValidationError,
    WaitTimeout,
)
from devtools.procs import free_port

JOB: dict[str, Any] = {"id": "j1", "name": None, "status": "queued", "epoch": 0, "epochs": 3,
       "created_at": "2026-01-01T00:00:00Z", "spec": {}}
Reply = tuple[int, dict[str, str], Any]


@contextmanager
def server(replies: list[Reply]) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """Answers each request with the next reply (the last one repeats); records requests."""
    seen: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else b""
            seen.append({"method": self.command, "path": self.path,
                         "headers": dict(self.headers), "body": body})
            status, headers, payload = replies[min(len(seen), len(replies)) - 1]
            data = json.dumps(payload).encode()
            self.send_response(status)
            for k, v in {"content-type": "application/json", **headers}.items():
                self.send_header(k, v)
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = _answer

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", seen
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("bnlab._base.BACKOFF_BASE_S", 0.0)


UNAVAILABLE: Reply = (503, {}, {"error": "NotReady", "detail": "broker down"})


def test_503_twice_then_202_creates_one_job_with_one_key() -> None:
    with server([UNAVAILABLE, UNAVAILABLE, (202, {}, JOB)]) as (url, seen), \
            Client(url, api_key="k") as bn:
        job = bn.jobs.create({"dataset": {"name": "xor"}})
    assert job.id == "j1"
    assert job.status == "queued"
    assert [r["method"] for r in seen] == ["POST"] * 3
    keys = {r["headers"]["Idempotency-Key"] for r in seen}
    assert len(keys) == 1
    assert len(keys.pop()) == 36
    assert {r["headers"]["Authorization"] for r in seen} == {"Bearer k"}
    assert json.loads(seen[0]["body"]) == {"dataset": {"name": "xor"}}


def test_async_client_retries_the_same_way() -> None:
    async def go(url: str) -> str:
        async with AsyncClient(url) as bn:
            return (await bn.jobs.create({"name": "a"}, idempotency_key="mine")).id

    with server([UNAVAILABLE, UNAVAILABLE, (202, {}, JOB)]) as (url, seen):
        assert asyncio.run(go(url)) == "j1"
    assert [r["headers"]["Idempotency-Key"] for r in seen] == ["mine"] * 3


def test_429_honours_retry_after_then_gives_up_typed() -> None:
    limited: Reply = (429, {"Retry-After": "0"}, {"error": "RateLimited", "detail": "slow down"})
    with server([limited, (200, {}, JOB)]) as (url, seen), Client(url) as bn:
        assert bn.jobs.get("j1").id == "j1"
    assert len(seen) == 2
    with server([limited]) as (url, seen), Client(url, max_retries=1) as bn, \
            pytest.raises(RateLimited) as info:
        bn.jobs.get("j1")
    assert len(seen) == 2
    assert info.value.retry_after == 0.0


def test_errors_are_typed_and_carry_the_servers_message() -> None:
    cases: list[tuple[Reply, type[Exception], Callable[[Client], Any]]] = [
        ((404, {}, {"error": "NotFound", "detail": "no job with id 'x'"}), NotFound,
         lambda bn: bn.jobs.get("x")),
        ((422, {}, {"error": "SpecError", "detail": ["training.epochs: must be > 0", "b"]}),
         ValidationError, lambda bn: bn.jobs.create({})),
        ((409, {}, {"error": "Conflict", "detail": "already succeeded"}), Conflict,
         lambda bn: bn.jobs.cancel("x")),
        ((500, {}, {"error": "InternalError", "detail": "logged"}), ServerError,
         lambda bn: bn.jobs.get("x")),
    ]
    for reply, kind, call in cases:
        with server([reply]) as (url, seen), Client(url) as bn, pytest.raises(kind) as info:
            call(bn)
        assert info.value.detail == reply[2]["detail"]  # type: ignore[attr-defined]
        # 4xx are not retried; 5xx are, max_retries (2) times
        assert len(seen) == (3 if reply[0] >= 500 else 1), (reply, len(seen))
    with server([cases[1][0]]) as (url, _), Client(url) as bn, \
            pytest.raises(ValidationError) as v:
        bn.jobs.create({})
    assert v.value.messages == ["training.epochs: must be > 0", "b"]
    assert "training.epochs: must be > 0" in str(v.value)


def test_unreachable_server_is_a_connection_error() -> None:
    with Client(f"http://127.0.0.1:{free_port()}", max_retries=1) as bn, \
            pytest.raises(ConnectionError, match="ConnectError"):
        bn.jobs.get("x")


def test_base_url_and_key_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    with server([(200, {}, JOB)]) as (url, seen):
        monkeypatch.setenv("BNLAB_URL", url + "/")
        monkeypatch.setenv("BNLAB_API_KEY", "from-env")
        with Client() as bn:
            assert bn.base_url == url
            bn.jobs.get("j1")
    assert seen[0]["headers"]["Authorization"] == "Bearer from-env"


# -- a wait outlives an outage ----------------------------------------------------------------

# The API restarting, or its database: 503 "not now" with a Retry-After (0 here, to be quick).
OUTAGE: Reply = (503, {"Retry-After": "0"},
                 {"error": "DatabaseUnavailable", "detail": "the database is unreachable"})
SUCCEEDED: Reply = (200, {}, {**JOB, "status": "succeeded", "epoch": 0})
STUDY_DONE: Reply = (200, {}, {"id": "s1", "status": "succeeded"})


def test_wait_polls_through_an_outage_longer_than_the_retries() -> None:
    # 10 answers of 503: the event stream's 3 tries and then three polls' worth of the
    # client's retries (3 each), each of which alone would raise ServerError.
    with server([OUTAGE] * 10 + [SUCCEEDED]) as (url, seen), Client(url) as bn:
        job = bn.jobs.wait("j1", timeout=60, poll_interval=0)
    assert job.status == "succeeded"
    assert len(seen) == 11
    assert seen[0]["path"] == "/v1/jobs/j1/events"
    assert {r["path"] for r in seen[3:]} == {"/v1/jobs/j1"}


def test_async_wait_polls_through_an_outage_the_same_way() -> None:
    async def go(url: str) -> str:
        async with AsyncClient(url) as bn:
            return (await bn.jobs.wait("j1", timeout=60, poll_interval=0)).status

    with server([OUTAGE] * 10 + [SUCCEEDED]) as (url, seen):
        assert asyncio.run(go(url)) == "succeeded"
    assert len(seen) == 11


def test_wait_ends_at_its_timeout_and_says_what_it_met() -> None:
    with server([OUTAGE]) as (url, _), Client(url) as bn, \
            pytest.raises(WaitTimeout, match=r"not finished after 0\.3 s") as info:
        bn.jobs.wait("j1", timeout=0.3, poll_interval=0)
    assert isinstance(info.value.__context__, ServerError)
    assert info.value.__context__.error == "DatabaseUnavailable"


def test_wait_without_a_timeout_gives_up_after_the_outage_limit(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("bnlab._base.OUTAGE_MAX_S", 0.2)
    with server([OUTAGE]) as (url, seen), Client(url) as bn, \
            pytest.raises(ServerError, match="DatabaseUnavailable"):
        bn.jobs.wait("j1", poll_interval=0)
    assert len(seen) > 3  # it polled on past the first give-up of the retries


def test_wait_raises_at_once_what_waiting_cannot_fix() -> None:
    denied: Reply = (401, {}, {"error": "Unauthorized", "detail": "unknown API key"})
    with server([denied]) as (url, seen), Client(url) as bn, \
            pytest.raises(AuthenticationError, match="unknown API key"):
        bn.jobs.wait("j1", timeout=60, poll_interval=0)
    assert len(seen) == 1


def test_study_wait_polls_through_an_outage() -> None:
    with server([OUTAGE] * 4 + [STUDY_DONE]) as (url, seen), Client(url) as bn:
        study = bn.studies.wait("s1", timeout=60, poll_interval=0)
    assert study.done
    assert len(seen) == 5
