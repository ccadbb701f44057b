"""Studies from the client and the CLI.

Two halves: the contract (a scripted server behind httpx.MockTransport: the request bodies and
headers the client sends, how it waits, what the CLI prints and its exit codes), and the real
app in-process (SQLite, filesystem broker) with the worker's own `run_job` training the
children in a thread: a tiny study (two claims, two seeds, two epochs) from creation to its
report. The second half skips while the app has no /v1/studies route.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from typer.testing import CliRunner

import cli.client_commands as commands
from api.settings import ApiSettings
from bnlab import AsyncClient, Client, Conflict, Study, StudyReport, WaitTimeout
from bnlab._calls import STUDY_CLAIMS
from cli.main import app as cli_app

CLAIMS = ["regularization", "placement"]
TEXT = {"regularization": "BatchNorm acts as a regulariser",
        "placement": "BatchNorm works best placed before the activation"}
TINY_BASE = {"dataset": {"name": "concentric_circles", "n_samples": 120, "noise": 0.05},
             "network": {"hidden": [4], "batchnorm": "after_activation"},
             "training": {"epochs": 2, "batch_size": 16}}


# ----------------------------------------------------------------------------- the contract


def _counts(succeeded: int, total: int, failed: int = 0) -> dict[str, int]:
    return {"queued": total - succeeded - failed, "running": 0, "succeeded": succeeded,
            "failed": failed, "cancelled": 0}


def _verdict(claim: str, verdict: str) -> dict[str, Any]:
    return {"claim": claim, "text": TEXT[claim], "verdict": verdict,
            "reason": f"{verdict} at alpha 0.05", "measure": "final val_accuracy",
            "comparison": "b - a, paired by seed (t)", "rule": "supported if ...",
            "test": {"n": 2, "mean": 0.125, "median": 0.125, "ci_low": -0.5, "ci_high": 0.75,
                     "effect_size": 0.8, "p_two_sided": 0.2, "test": "t"},
            "adjusted_p": 0.4, "details": {}, "partial": False, "experiment_id": f"e-{claim}",
            "firm_up": {"text": f"{claim}: about 12 seeds would settle it", "seeds": 12}
            if verdict == "inconclusive" else None}


class FakeServer:
    """The studies API as the contract describes it: a study's children finish one poll at a
    time (`fail`: the last child of the last claim fails)."""

    def __init__(self, *, per_claim: int = 4, fail: bool = False) -> None:
        self.per_claim, self.fail = per_claim, fail
        self.requests: list[httpx.Request] = []
        self.bodies: list[dict[str, Any]] = []
        self.polls = 0
        self.claims = list(CLAIMS)

    def study(self) -> dict[str, Any]:
        done = min(self.polls, self.per_claim)
        claims = []
        for i, claim in enumerate(self.claims):
            failed = int(self.fail and i == len(self.claims) - 1 and done == self.per_claim)
            counts = _counts(done - failed, self.per_claim, failed)
            status = ("queued" if done == 0 else "running" if done < self.per_claim
                      else "failed" if failed else "succeeded")
            claims.append({"claim": claim, "text": TEXT.get(claim), "experiment_id": f"e-{claim}",
                           "status": status, "counts": counts, "a_newer_field": 1})
        statuses = {c["status"] for c in claims}
        status = ("failed" if "failed" in statuses else "succeeded" if statuses == {"succeeded"}
                  else "running" if done else "queued")
        return {"id": "s1", "name": "tiny", "status": status,
                "created_at": "2026-01-01T00:00:00Z", "spec": {"seeds": 2}, "claims": claims,
                "cost": {"children": self.per_claim * len(self.claims), "estimated_seconds": None,
                         "note": "no timing yet"}, "unknown": {"kept": True}}

    def report(self) -> dict[str, Any]:
        return {"id": "s1", "name": "tiny", "status": self.study()["status"], "partial": False,
                "alpha": 0.05, "seeds": 2,
                "claims": [_verdict("regularization", "supported"),
                           _verdict("placement", "inconclusive")]}

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path, method = request.url.path, request.method
        if method == "POST" and path == "/v1/studies":
            body = json.loads(request.content)
            self.bodies.append(body)
            self.claims = body.get("claims") or list(CLAIMS)
            return httpx.Response(202, json=self.study())
        if path == "/v1/studies":
            return httpx.Response(200, json={"items": [self.study()], "next_cursor": None})
        if path == "/v1/studies/s1":
            self.polls += 1
            return httpx.Response(200, json=self.study())
        if path == "/v1/studies/s1/report":
            return httpx.Response(200, json=self.report())
        if path == "/v1/studies/s1/report.md":
            return httpx.Response(200, text="# Study tiny\n\n| claim | verdict | p |\n"
                                  "|---|---|---|\n| regularization | supported | 0.4 |\n",
                                  headers={"content-type": "text/markdown"})
        if path == "/v1/studies/s1/report.html":
            return httpx.Response(200, text="<html><body><table></table></body></html>",
                                  headers={"content-type": "text/html"})
        if path in ("/v1/studies/s1/cancel", "/v1/studies/s1/retry"):
            data = {**self.study(), "status": "cancelled", "cancel_requested": True}
            return httpx.Response(200, json=data if path.endswith("cancel")
                                  else {"retried": ["j1"], "study": self.study()})
        return httpx.Response(404, json={"error": "NotFound", "detail": f"no {path}"})


@pytest.fixture
def fake() -> FakeServer:
    return FakeServer()


@pytest.fixture
def fake_bn(fake: FakeServer) -> Iterator[Client]:
    with httpx.Client(transport=httpx.MockTransport(fake), base_url="http://fake") as http, \
            Client(http_client=http) as bn:
        yield bn


def test_create_sends_the_spec_and_one_idempotency_key(fake: FakeServer, fake_bn: Client
                                                       ) -> None:
    study = fake_bn.studies.create("bn-claims", base=TINY_BASE, claims="regularization,placement",
                                   seeds=2, name="tiny", alpha=0.1)
    assert isinstance(study, Study)
    assert study.id == "s1"
    assert study.status == "queued"
    assert fake.bodies[-1] == {"preset": "bn-claims", "base": TINY_BASE, "claims": CLAIMS,
                               "seeds": 2, "name": "tiny", "alpha": 0.1}
    assert fake.requests[-1].headers["idempotency-key"]
    fake_bn.studies.create(idempotency_key="k-1")
    assert fake.bodies[-1] == {"preset": "bn-claims", "seeds": 20}
    assert fake.requests[-1].headers["idempotency-key"] == "k-1"
    # a whole spec: the keywords only fill in what it lacks
    fake_bn.studies.create({"preset": "bn-claims", "seeds": 3, "claims": ["placement"]},
                           name="whole")
    assert fake.bodies[-1] == {"preset": "bn-claims", "seeds": 3, "claims": ["placement"],
                               "name": "whole"}
    # the server's extra fields are kept; the typed ones parse
    assert study.claims[0].experiment_id == "e-regularization"
    assert study.claims[0].total == 4
    assert study.model_extra == {"unknown": {"kept": True}}
    assert study.cost is not None
    assert study.cost.children == 8
    assert not study.done


def test_wait_polls_until_every_claim_is_done(fake: FakeServer, fake_bn: Client) -> None:
    study = fake_bn.studies.create(claims=CLAIMS, seeds=2)
    seen: list[tuple[str, list[int]]] = []
    assert study.wait(poll=0, progress=lambda s: seen.append(
        (s.status, [c.succeeded for c in s.claims]))) is study
    assert study.done
    assert study.succeeded
    assert study.counts["succeeded"] == 8
    assert seen[0] == ("running", [1, 1])
    assert seen[-1] == ("succeeded", [4, 4])
    assert study.refresh().status == "succeeded"
    report = study.report()
    assert [c["verdict"] for c in report["claims"]] == ["supported", "inconclusive"]
    typed = StudyReport.model_validate(report)
    assert typed.claims[0].test.p_two_sided == 0.2
    assert typed.claims[1].firm_up is not None
    assert study.report_markdown().startswith("# Study")
    assert "<table>" in fake_bn.studies.report_html("s1")
    assert [s.id for s in fake_bn.studies.list()] == ["s1"]
    assert study.retry().id == "s1"
    assert fake_bn.studies.cancel("s1").cancel_requested
    fake.polls = -100
    with pytest.raises(WaitTimeout):
        fake_bn.studies.wait("s1", timeout=0.01, poll=0.005)


def test_async_client_mirrors_the_sync_one(fake: FakeServer) -> None:
    async def run() -> tuple[str, str, int]:
        async with httpx.AsyncClient(transport=httpx.MockTransport(fake),
                                     base_url="http://fake") as http, \
                AsyncClient(http_client=http) as bn:
            study = await bn.studies.create(claims=CLAIMS, seeds=2)
            await study.wait(poll=0)
            listed = [s.id async for s in bn.studies.list()]
            md = await study.report_markdown()
            return study.status, md, len((await study.report())["claims"]) + len(listed)

    status, md, n = asyncio.run(run())
    assert status == "succeeded"
    assert "| claim |" in md
    assert n == 3


def test_dataset_option_names_a_builtin_or_an_upload() -> None:
    from models.spec import BuiltinDataset

    names = {n for cls in get_args(BuiltinDataset)
             for n in get_args(cls.model_fields["name"].annotation)}
    assert names == set(commands.BUILTIN_DATASETS)  # the CLI's copy agrees with the server
    assert commands.dataset_ref("concertriccir2") == {"name": "concertriccir2"}
    assert commands.dataset_ref("ds_3f2a") == {"id": "ds_3f2a"}
    assert commands.dataset_ref('{"name": "moons", "n_samples": 50}') == {
        "name": "moons", "n_samples": 50}
    assert set(STUDY_CLAIMS) == {"faster_convergence", "higher_learning_rates",
                                 "init_insensitivity", "regularization", "batch_size",
                                 "placement", "train_vs_inference"}


def _use(monkeypatch: pytest.MonkeyPatch, http: httpx.Client | TestClient) -> None:
    monkeypatch.setattr(commands, "Client", lambda *_, **__: Client(http_client=http))


def test_cli_run_watch_against_the_contract(fake: FakeServer, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    with httpx.Client(transport=httpx.MockTransport(fake), base_url="http://fake") as http:
        _use(monkeypatch, http)
        run = CliRunner().invoke(cli_app, [
            "study", "run", "bn-claims", "--dataset", "concertriccir2", "--seeds", "2",
            "--claims", "regularization,placement", "--epochs", "3", "--watch", "--poll", "0"])
        assert run.exit_code == 0, run.output
        assert fake.bodies[-1] == {"preset": "bn-claims", "seeds": 2, "claims": CLAIMS,
                                   "base": {"dataset": {"name": "concertriccir2"},
                                            "training": {"epochs": 3}}}
        assert "submitted study s1: 2 claims, 8 jobs" in run.output
        assert "supported" in run.stdout
        assert "inconclusive" in run.stdout
        assert "about 12 seeds would settle it" in run.stdout

        quiet = CliRunner().invoke(cli_app, ["study", "run", "--dataset", "ds_1", "--seeds", "2"])
        assert quiet.exit_code == 0
        assert quiet.stdout == "s1\n"
        assert fake.bodies[-1]["base"] == {"dataset": {"id": "ds_1"}}

        out = tmp_path / "report.md"
        rep = CliRunner().invoke(cli_app, ["study", "report", "s1", "--format", "md",
                                           "--output", str(out)])
        assert rep.exit_code == 0, rep.output
        assert "| claim | verdict |" in out.read_text()
        as_json = CliRunner().invoke(cli_app, ["study", "report", "s1", "--format", "json"])
        assert json.loads(as_json.stdout)["alpha"] == 0.05
        show = CliRunner().invoke(cli_app, ["study", "show", "s1"])
        assert show.exit_code == 0
        assert "e-placement" in show.stdout
        assert "8 jobs" in show.stdout
        cancel = CliRunner().invoke(cli_app, ["study", "cancel", "s1"])
        assert cancel.exit_code == 0
        assert "cancel requested" in cancel.output

        bad = CliRunner().invoke(cli_app, ["study", "run", "--claims", "speed"])
        assert bad.exit_code == 2
        assert "speed" in bad.output
        assert CliRunner().invoke(cli_app, ["study", "report", "s1", "-f", "pdf"]).exit_code == 2


def test_cli_watch_exits_1_when_a_run_failed(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeServer(fail=True)
    with httpx.Client(transport=httpx.MockTransport(fake), base_url="http://fake") as http:
        _use(monkeypatch, http)
        run = CliRunner().invoke(cli_app, ["study", "run", "--seeds", "2", "--watch", "--poll",
                                           "0", "--json"])
    assert run.exit_code == 1, run.output
    body = json.loads(run.stdout)
    assert body["study"]["status"] == "failed"
    assert len(body["report"]["claims"]) == 2


# ----------------------------------------------------------------------------- the real app


@pytest.fixture
def worker(settings: ApiSettings) -> Iterator[None]:
    """The worker's run_job in a thread: trains every queued job, oldest first."""
    from models.db import make_engine, session_factory
    from models.db.tables import Job, JobStatus
    from models.spec import Limits
    from worker.training_run import RunContext, run_job

    engine = make_engine(settings.sqlalchemy_url)
    ctx = RunContext(sessions=session_factory(engine), worker="test-worker", limits=Limits())
    stop = threading.Event()
    errors: list[BaseException] = []

    def loop() -> None:
        try:
            while not stop.is_set():
                with ctx.sessions() as session:
                    ids = list(session.scalars(select(Job.id).where(
                        Job.status == JobStatus.queued).order_by(Job.created_at)))
                for job_id in ids:
                    run_job(job_id, ctx)
                stop.wait(0.05)
        except BaseException as exc:  # surfaced by the test, not lost in the thread
            errors.append(exc)

    thread = threading.Thread(target=loop, name="test-worker", daemon=True)
    thread.start()
    yield
    stop.set()
    thread.join(60)
    engine.dispose()
    if errors:
        raise errors[0]


@pytest.mark.usefixtures("worker")
def test_tiny_study_end_to_end(app_client: TestClient) -> None:
    with Client(http_client=app_client) as bn:
        study = bn.studies.create("bn-claims", base=TINY_BASE, claims=CLAIMS, seeds=2,
                                  name="tiny", idempotency_key="tiny-1")
        assert study.status in ("queued", "running")
        assert study.name == "tiny"
        assert [c.claim for c in study.claims] == CLAIMS
        assert all(c.experiment_id for c in study.claims)
        again = bn.studies.create("bn-claims", base=TINY_BASE, claims=CLAIMS, seeds=2,
                                  name="tiny", idempotency_key="tiny-1")
        assert again.id == study.id  # the same key: the same study
        assert study.id in [s.id for s in bn.studies.list()]

        study.wait(timeout=240, poll=0.1)
        assert study.done, study.model_dump()
        assert study.status == "succeeded", study.model_dump()
        # regularization: bn, none and none + dropout; placement: before, after (2 seeds)
        assert [(c.succeeded, c.total) for c in study.claims] == [(6, 6), (4, 4)]

        report = study.report()
        assert {"id", "name", "status", "partial", "alpha", "seeds", "claims"} <= set(report)
        assert report["id"] == study.id
        assert report["partial"] is False
        assert [c["claim"] for c in report["claims"]] == CLAIMS
        for c in report["claims"]:
            assert {"claim", "text", "verdict", "reason", "measure", "comparison", "rule",
                    "test", "adjusted_p", "details", "partial", "experiment_id"} <= set(c)
            assert c["verdict"] in ("supported", "contradicted", "inconclusive")
            assert {"n", "mean", "ci_low", "ci_high", "p_two_sided"} <= set(c["test"])
        StudyReport.model_validate(report)

        md = study.report_markdown()
        assert "| claim | verdict |" in md, md
        assert "|---|---|" in md, md
        assert all(f"`{c}`" in md for c in CLAIMS)
        assert "<html" in study.report_html().lower()
        with pytest.raises(Conflict):  # nothing failed: nothing to retry
            study.retry()
        assert study.cancel().cancel_requested
        assert study.id == again.id


@pytest.mark.usefixtures("worker")
def test_cli_study_run_watch_and_report(app_client: TestClient, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    _use(monkeypatch, app_client)
    run = CliRunner().invoke(cli_app, [
        "study", "run", "bn-claims", "--dataset", "concentric_circles", "--seeds", "2",
        "--claims", ",".join(CLAIMS), "--epochs", "2", "--watch", "--poll", "0.1"])
    assert run.exit_code == 0, run.output
    verdicts = [line for line in run.stdout.splitlines()
                if any(c in line for c in CLAIMS)]
    for claim in CLAIMS:
        line = next(v for v in verdicts if claim in v)
        assert any(v in line for v in ("supported", "contradicted", "inconclusive")), line

    with Client(http_client=app_client) as bn:
        study_id = next(iter(bn.studies.list(limit=1))).id
    out = tmp_path / "report.md"
    rep = CliRunner().invoke(cli_app, ["study", "report", study_id, "--format", "md",
                                       "--output", str(out)])
    assert rep.exit_code == 0, rep.output
    assert "| claim | verdict |" in out.read_text()
    show = CliRunner().invoke(cli_app, ["study", "show", study_id, "--json"])
    assert show.exit_code == 0
    assert json.loads(show.stdout)["status"] == "succeeded"
