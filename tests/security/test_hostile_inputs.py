"""The hostile-input catalogue of issue 8, against the HTTP API with auth on: each input gets its
expected status AND a key phrase of its message, and the server keeps serving afterwards.

Many of these checks also exist closer to the code (tests/api, tests/models); this file is the
one place that lists them all as a client would send them.
"""

from __future__ import annotations

import json
import os
import pickle
import select
import socket
import subprocess
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from kombu.connection import Connection
from kombu.entity import Exchange, Queue
from kombu.exceptions import ContentDisallowed
from kombu.messaging import Consumer, Producer

from api.settings import ApiSettings
from devtools.procs import PYTHON, Procs, clean_env, free_port, wait_ready
from models.queueing import TRAIN_TASK
from tests.support.security import API_KEY, MAX_PREDICT_ROWS, TINY_JOB, make_settings
from worker.celery_app import create_app as create_celery
from worker.settings import WorkerSettings

JSON = {"content-type": "application/json"}


def rss_bytes(pid: int | str = "self") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def spec(network: dict[str, Any] | None = None, **training: Any) -> dict[str, Any]:
    return {**TINY_JOB, "network": network or TINY_JOB["network"],
            "training": {**TINY_JOB["training"], **training}}


def detail(r: Any) -> str:
    body = r.json()
    return json.dumps(body["detail"]) if not isinstance(body["detail"], str) else body["detail"]


# ------------------------------------------------------------------------------- specs

BN = {"hidden": [4], "batchnorm": "after_activation"}
SPECS: list[tuple[str, dict[str, Any], str]] = [
    ("10^4 layers", spec({"hidden": [2] * 10_000}), "the limit is 64"),
    ("lr negative", spec(optimizer={"name": "adam", "lr": -1}), "optimizer.lr"),
    ("lr zero", spec(optimizer={"name": "adam", "lr": 0}), "optimizer.lr"),
    ("epochs zero", spec(epochs=0), "training.epochs"),
    ("epochs negative", spec(epochs=-5), "training.epochs"),
    ("epochs over limit", spec(epochs=10**9), "epochs"),
    ("batch_size zero", spec(batch_size=0), "training.batch_size"),
    ("batch_size negative", spec(batch_size=-32), "training.batch_size"),
    ("momentum negative", spec(optimizer={"name": "sgd", "lr": 0.1, "momentum": -0.5}),
     "optimizer.momentum"),
    ("BN momentum zero", spec({"layers": [
        {"type": "dense", "units": 4}, {"type": "batchnorm", "momentum": 0},
        {"type": "dense", "units": 1}]}), "batchnorm.momentum"),
    ("BN eps negative", spec({"layers": [
        {"type": "dense", "units": 4}, {"type": "batchnorm", "eps": -1e-5},
        {"type": "dense", "units": 1}]}), "batchnorm.eps"),
    ("validation_split 1.0", spec(validation_split=1.0), "validation_split"),
    ("validation_split negative", spec(validation_split=-0.1), "validation_split"),
    ("batch size 1 with BN", spec(BN, batch_size=1), "at least 2 when BatchNorm trains"),
]


@pytest.mark.parametrize(("body", "phrase"), [(b, p) for _, b, p in SPECS],
                         ids=[n for n, _, _ in SPECS])
def test_spec_refused(api: TestClient, body: dict[str, Any], phrase: str) -> None:
    r = api.post("/v1/jobs", json=body)
    assert r.status_code == 422, r.text
    assert phrase in detail(r)


# NaN is not JSON, but Python's and many clients' encoders write it; the parser accepts it.
@pytest.mark.parametrize(("field", "phrase"), [
    ('"lr": 0.001', "optimizer.lr"), ('"validation_split": 0.2', "validation_split"),
    ('"momentum": 0.9', "optimizer.momentum")])
def test_nan_hyperparameters_refused(api: TestClient, field: str, phrase: str) -> None:
    body = spec(optimizer={"name": "sgd", "lr": 0.001, "momentum": 0.9})
    raw = json.dumps(body).replace(field, field.split(":")[0] + ": NaN")
    assert "NaN" in raw
    r = api.post("/v1/jobs", content=raw, headers=JSON)
    assert r.status_code == 422, r.text
    assert phrase in detail(r)


@pytest.mark.parametrize("network", [
    {"layers": [{"type": "dense", "units": 10**9, "activation": "relu"}]},
    {"hidden": [10**9, 10**9]}], ids=["layers", "hidden"])
def test_huge_layer_refused_before_allocation(api: TestClient, network: dict[str, Any]) -> None:
    # A 10^9-unit layer would need gigabytes; refusing it must not allocate any of them.
    before = rss_bytes()
    start = time.perf_counter()
    r = api.post("/v1/jobs", json=spec(network))
    elapsed_ms = (time.perf_counter() - start) * 1000
    grown = rss_bytes() - before
    print(f"10^9-unit layer refused in {elapsed_ms:.1f} ms, RSS +{grown / 2**20:.1f} MiB")
    assert r.status_code == 422, r.text
    assert "1000000000 units; the limit is 65536" in detail(r)
    assert grown < 32 * 2**20


# ------------------------------------------------------------------------------- CSVs

CSVS: list[tuple[str, bytes, str]] = [
    ("text", b"x,y,class\n1,2,0\n3,abc,1\n", "line 3, column 'y': 'abc' is not a number"),
    ("blank", b"x,y,class\n1,2,0\n3,,1\n", "line 3, column 'y': the value is missing"),
    ("nan", b"x,y,class\n1,nan,0\n3,4,1\n", "line 2, column 'y'"),
    ("one class", b"x,y,class\n1,2,0\n3,4,0\n", "single class"),
    ("label only", b"class\n0\n1\n", "the only column is the label"),
    ("duplicate columns", b"x,x,class\n1,2,0\n3,4,1\n", "duplicate column names ['x']"),
    ("gzip named .csv", __import__("gzip").compress(b"x,y,class\n1,2,0\n3,4,1\n"),
     "not UTF-8 text"),
    ("empty", b"", "the file is empty"),
]


@pytest.mark.parametrize(("content", "phrase"), [(c, p) for _, c, p in CSVS],
                         ids=[n for n, _, _ in CSVS])
def test_csv_refused(api: TestClient, content: bytes, phrase: str) -> None:
    r = api.post("/v1/datasets", files={"file": ("data.csv", content, "text/csv")})
    assert r.status_code == 422, r.text
    assert phrase in detail(r)


def test_upload_filename_is_only_a_name(api: TestClient, sec_settings: ApiSettings) -> None:
    r = api.post("/v1/datasets", files={"file": ("../../../../tmp/bnlab-escape.csv",
                                                 b"x,y,class\n1,2,0\n3,4,1\n", "text/csv")})
    assert r.status_code == 201, r.text
    assert not Path("/tmp/bnlab-escape.csv").exists()
    assert not any(p.name == "bnlab-escape.csv" for p in sec_settings.home.rglob("*"))


# ------------------------------------------------------------------------------- predict

PREDICT: list[tuple[str, str, int, str]] = [
    ("NaN", '{"inputs": [[NaN, 1.0]]}', 422, "is nan: inputs must be finite"),
    ("inf", '{"inputs": [[Infinity, 1.0]]}', 422, "is inf: inputs must be finite"),
    ("-inf", '{"inputs": [[1.0, -Infinity]]}', 422, "inputs must be finite"),
    ("too wide", '{"inputs": [[1, 2, 3]]}', 422, "each row needs 2 features"),
    ("too narrow", '{"inputs": [[1]]}', 422, "each row needs 2 features"),
    ("ragged", '{"inputs": [[1, 2], [1]]}', 422, "lists of 2 numbers"),
    ("text", '{"inputs": [["a", 1]]}', 422, "lists of 2 numbers"),
    ("no rows", '{"inputs": []}', 422, "at least 1 item"),
    ("rows over max_predict_rows",
     json.dumps({"inputs": [[0, 0]] * (MAX_PREDICT_ROWS + 1)}), 413,
     f"the limit (max_predict_rows) is {MAX_PREDICT_ROWS}"),
    ("10^6 rows", '{"inputs": [' + ",".join(["[0,0]"] * 10**6) + "]}", 413,
     "max_body_bytes"),
]


@pytest.mark.parametrize(("raw", "status", "phrase"), [(r, s, p) for _, r, s, p in PREDICT],
                         ids=[n for n, _, _, _ in PREDICT])
def test_predict_refused(api: TestClient, trained_job: str, raw: str, status: int,
                         phrase: str) -> None:
    r = api.post(f"/v1/jobs/{trained_job}/predict", content=raw, headers=JSON)
    assert r.status_code == status, r.text[:500]
    assert phrase in detail(r)


# ------------------------------------------------------------------------------- ids

TRAVERSAL = ["../../etc/passwd", "..%2f..%2fetc%2fpasswd", "%2e%2e%2f", "..\\..\\windows",
             "a\x00b", "....//....//etc/passwd", "/etc/passwd", "~root", "%00"]
ID_PATHS = ["/v1/jobs/{x}", "/v1/jobs/{x}/history", "/v1/jobs/{x}/model", "/v1/jobs/{x}/bn",
            "/v1/jobs/{x}/checkpoints", "/v1/jobs/{x}/checkpoints/best",
            "/v1/jobs/{x}/curves.png", "/v1/jobs/{x}/events", "/v1/jobs/{x}/boundary",
            "/v1/jobs/{x}/validation",
            "/v1/datasets/{x}", "/v1/datasets/{x}/scatter.png", "/v1/experiments/{x}",
            "/v1/experiments/{x}/summary", "/v1/experiments/{x}/curves.png",
            "/v1/experiments/{x}/events"]
POST_ID_PATHS = ["/v1/jobs/{x}/cancel", "/v1/experiments/{x}/cancel",
                 "/v1/experiments/{x}/retry"]


@pytest.mark.parametrize("bad", TRAVERSAL)
def test_traversal_in_every_id_position(api: TestClient, trained_job: str, bad: str) -> None:
    x = quote(bad, safe="")
    answers: list[tuple[str, int]] = []
    for path in ID_PATHS:
        answers.append((path, api.get(path.format(x=x)).status_code))
    for path in POST_ID_PATHS:
        answers.append((path, api.post(path.format(x=x)).status_code))
    answers.append(("DELETE /v1/jobs/{x}", api.delete(f"/v1/jobs/{x}").status_code))
    answers.append(("predict", api.post(f"/v1/jobs/{x}/predict",
                                        json={"inputs": [[0, 0]]}).status_code))
    # the checkpoint `which` of a real job, and ids in query strings
    r = api.get(f"/v1/jobs/{trained_job}/checkpoints/{x}")
    # httpx resolves dot segments ("%2e%2e%2f" -> "../") before sending: the path that arrives
    # is the job itself, never a file
    normalised = r.status_code == 200 and r.json().get("id") == trained_job
    answers.append(("which", 404 if normalised else r.status_code))
    answers.append(("curves?jobs", api.get("/v1/curves.png", params={
        "jobs": bad, "metrics": "val_accuracy"}).status_code))
    answers.append(("cursor", api.get("/v1/jobs", params={"cursor": bad}).status_code))
    bad_answers = [(p, s) for p, s in answers if s not in (404, 422)]
    assert not bad_answers, bad_answers
    r = api.get("/v1/jobs", params={"experiment_id": bad})  # a filter: nothing matches
    assert r.status_code == 200
    assert r.json()["items"] == []


def test_huge_checkpoint_epoch_is_not_a_500(api: TestClient, trained_job: str) -> None:
    r = api.get(f"/v1/jobs/{trained_job}/checkpoints/{'9' * 30}")
    assert r.status_code in (404, 422), r.text


def test_huge_resume_ids_are_refused_before_the_stream(api: TestClient, trained_job: str
                                                        ) -> None:
    r = api.get(f"/v1/jobs/{trained_job}/events", params={"last_event_id": "9" * 23})
    assert r.status_code == 422
    assert "not an epoch number" in r.text
    r = api.get(f"/v1/jobs/{trained_job}/history", params={"since": 2**70})
    assert r.status_code == 422, r.text


def test_server_still_serves_after_the_catalogue(api: TestClient) -> None:
    assert api.get("/healthz").status_code == 200
    r = api.post("/v1/jobs", json=TINY_JOB)
    assert r.status_code == 202, r.text


def test_the_catalogue_ran_with_auth_on(api: TestClient) -> None:
    r = api.get("/v1/jobs", headers={"Authorization": ""})
    assert r.status_code == 401, r.text
    assert r.headers["www-authenticate"].startswith("Bearer")


# ------------------------------------------------------------------------------- 50 MB upload


def test_50mb_upload_refused_before_it_is_read(tmp_path: Path) -> None:
    """Against a live uvicorn: the 413 arrives while most of the 50 MB is still unsent, and
    the server's memory does not grow by anything like 50 MB."""
    settings = make_settings(tmp_path / "home")
    port = free_port()
    procs = Procs(tmp_path)
    env = clean_env(BNLAB_HOME=str(settings.home), BNLAB_API_KEYS=API_KEY)
    server = procs.start("uvicorn", [PYTHON, "-m", "uvicorn", "api.main:app", "--host",
                                     "127.0.0.1", "--port", str(port)], env)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_ready(base, procs)
        rss_before = rss_bytes(server.popen.pid)
        total = 50 * 2**20
        boundary = "hostileboundary"
        head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
                f"filename=\"big.csv\"\r\nContent-Type: text/csv\r\n\r\n").encode()
        for declared in (True, False):  # Content-Length given, and chunked (no length)
            with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
                lines = ["POST /v1/datasets HTTP/1.1", f"Host: 127.0.0.1:{port}",
                         f"Authorization: Bearer {API_KEY}",
                         f"Content-Type: multipart/form-data; boundary={boundary}"]
                lines.append(f"Content-Length: {total}" if declared
                             else "Transfer-Encoding: chunked")
                sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
                sent, reply = _send_until_answer(sock, head, total, chunked=not declared)
            print(f"declared={declared}: answered after {sent / 2**20:.1f} MiB of 50 MiB")
            assert reply.startswith(b"HTTP/1.1 413"), reply[:300]
            assert b"max_upload_bytes" in reply
            assert sent < total  # the server answered before the client finished sending
        grown = rss_bytes(server.popen.pid) - rss_before
        print(f"server RSS +{grown / 2**20:.1f} MiB")
        assert grown < 25 * 2**20
        assert subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                               f"{base}/healthz"], capture_output=True, text=True,
                              check=False).stdout == "200"
    finally:
        procs.stop_all()


def _send_until_answer(sock: socket.socket, head: bytes, total: int, *,
                       chunked: bool) -> tuple[int, bytes]:
    """Send `head` then 1 MiB pieces of CSV rows up to `total` bytes, pausing after each
    piece to see whether the server has answered; returns (bytes sent, the answer)."""
    piece = b"1.0,2.0,0\n" * (2**20 // 10)
    data, sent = head, 0
    while sent < total:
        data = data[: total - sent]
        try:
            sock.sendall(b"%x\r\n%s\r\n" % (len(data), data) if chunked else data)
        except (BrokenPipeError, ConnectionResetError):
            break  # the server answered and closed
        sent += len(data)
        data = piece
        if select.select([sock], [], [], 0.2)[0]:
            break
    sock.settimeout(30)
    reply = b""
    try:
        while part := sock.recv(65536):
            reply += part
            if b"\r\n\r\n" in reply and reply.rstrip().endswith(b"}"):
                break
    except (ConnectionResetError, TimeoutError):
        pass
    return sent, reply


# ------------------------------------------------------------------------------- Celery


class _Canary:
    """Unpickling this would run `touch <path>`: proof that a pickled message was loaded."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.path}",))


def test_worker_refuses_a_pickled_message(tmp_path: Path) -> None:
    """A pickled task put on the worker's own queue (filesystem broker) is refused by the
    worker app's serializer whitelist before anything is unpickled."""
    settings = WorkerSettings(home=tmp_path, database_url=None, broker_url=None)
    settings.prepare_dirs()
    conf = create_celery(settings).conf
    assert list(conf.accept_content) == ["json"]
    canary = tmp_path / "unpickled"
    # A queue of its own, so nothing the API published earlier in this process (to "cpu") is
    # drained here instead of the hand-made message.
    queue = Queue("hostile", Exchange("hostile", type="direct"), routing_key="hostile")
    with Connection(conf.broker_url, transport_options=conf.broker_transport_options) as conn:
        channel = conn.channel()
        producer = Producer(channel, exchange=queue.exchange, routing_key="hostile")
        producer.publish(pickle.dumps(((_Canary(canary),), {}, {})), declare=[queue],
                         content_type="application/x-python-serialize",
                         content_encoding="binary",
                         headers={"task": TRAIN_TASK, "id": "hostile"})
        seen: list[BaseException] = []

        def on_decode_error(message: Any, exc: BaseException) -> None:
            seen.append(exc)
            message.reject()

        with Consumer(channel, queues=[queue], accept=conf.accept_content,
                      callbacks=[lambda body, _message: pytest.fail(f"decoded: {body!r}")],
                      on_decode_error=on_decode_error):
            conn.drain_events(timeout=10)
    assert len(seen) == 1, seen
    assert isinstance(seen[0], ContentDisallowed), seen
    assert "pickle" in str(seen[0])
    assert not canary.exists()
