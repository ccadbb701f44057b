"""The blocking client: `Client(...).jobs.create(spec).wait()`."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, PrivateAttr

from bnlab import _calls as calls
from bnlab._base import (
    DEFAULT_TIMEOUT,
    STREAM_CALL,
    STREAM_READ_TIMEOUT,
    Call,
    Outage,
    backoff_s,
    base_url_from,
    check_deadline,
    checked,
    headers_for,
    history_frame,
    replace_model,
    response_delay,
    transient,
    transport_delay,
    transport_error,
)
from bnlab._sse import Comment, Decoder, Message
from bnlab.errors import BnlabError, ConnectionError, NotFound
from bnlab.progress import (
    ProgressArg,
    StudyProgressArg,
    progress_callback,
    study_progress_callback,
)
from bnlab.types import (
    Dataset,
    DoneEvent,
    Event,
    ExperimentData,
    JobData,
    Prediction,
    StudyData,
    epoch_events,
    experiment_done,
    job_done,
    parse_event,
    status_event,
)

T = TypeVar("T")
class Job(JobData):
    """A job as the server last reported it, with methods that talk to the server."""

    _client: Client = PrivateAttr()

    def refresh(self) -> Job:
        return replace_model(self, self._client.jobs.get(self.id))

    def wait(self, *, progress: ProgressArg = False, timeout: float | None = None,
             poll_interval: float = 1.0) -> Job:
        """Block until the job finishes (live events; polling if they are unavailable)."""
        return replace_model(self, self._client.jobs.wait(
            self.id, progress=progress, timeout=timeout, poll_interval=poll_interval))

    def cancel(self) -> Job:
        return replace_model(self, self._client.jobs.cancel(self.id))

    def history(self, *, as_frame: bool = False) -> Any:
        return self._client.jobs.history(self.id, as_frame=as_frame)

    def predict(self, rows: Any, *, checkpoint: str = "last") -> Prediction:
        return self._client.jobs.predict(self.id, rows, checkpoint=checkpoint)

    def export(self, *, format: str = "onnx", checkpoint: str = "last", fold_bn: bool = False,
               path: str | Path | None = None) -> bytes:
        return self._client.jobs.export(self.id, format=format, checkpoint=checkpoint,
                                        fold_bn=fold_bn, path=path)

    def events(self, *, last_event_id: str | None = None) -> Iterator[Event]:
        return self._client.jobs.events(self.id, last_event_id=last_event_id)


class Experiment(ExperimentData):
    """An experiment as the server last reported it, with methods that talk to the server."""

    _client: Client = PrivateAttr()

    def refresh(self) -> Experiment:
        return replace_model(self, self._client.experiments.get(self.id))

    def wait(self, *, progress: ProgressArg = False, timeout: float | None = None,
             poll_interval: float = 2.0) -> Experiment:
        return replace_model(self, self._client.experiments.wait(
            self.id, progress=progress, timeout=timeout, poll_interval=poll_interval))

    def summary(self) -> dict[str, Any]:
        return self._client.experiments.summary(self.id)

    def cancel(self) -> Experiment:
        return replace_model(self, self._client.experiments.cancel(self.id))

    def events(self, *, last_event_id: str | None = None) -> Iterator[Event]:
        return self._client.experiments.events(self.id, last_event_id=last_event_id)


class Study(StudyData):
    """A study as the server last reported it, with methods that talk to the server."""

    _client: Client = PrivateAttr()

    def refresh(self) -> Study:
        return replace_model(self, self._client.studies.get(self.id))

    def wait(self, *, timeout: float | None = None, poll: float | None = None,
             poll_interval: float = 2.0, progress: StudyProgressArg = False) -> Study:
        """Block until every claim's experiment has finished (polling; `poll` is an alias of
        `poll_interval`). `progress`: True for a line per change on stderr, or a callable
        given the Study at each change."""
        return replace_model(self, self._client.studies.wait(
            self.id, timeout=timeout, poll=poll, poll_interval=poll_interval,
            progress=progress))

    def cancel(self) -> Study:
        return replace_model(self, self._client.studies.cancel(self.id))

    def retry(self) -> Study:
        return replace_model(self, self._client.studies.retry(self.id))

    def report(self) -> dict[str, Any]:
        return self._client.studies.report(self.id)

    def report_markdown(self) -> str:
        return self._client.studies.report_markdown(self.id)

    def report_html(self) -> str:
        return self._client.studies.report_html(self.id)


class Datasets:
    def __init__(self, client: Client) -> None:
        self._c = client

    def upload(self, source: Any, *, name: str | None = None, label_column: str | None = None,
               filename: str | None = None, labels: Any = None) -> Dataset:
        """Upload a CSV (a path, bytes, an open file or a pandas DataFrame), an .npz with
        arrays x and y, or an IDX images file with its labels file as `labels` (MNIST's
        format, optionally .gz; stored as an .npz)."""
        return self._c.run(calls.upload_dataset(source, name=name, label_column=label_column,
                                                filename=filename, labels=labels))

    def get(self, dataset_id: str) -> Dataset:
        return self._c.run(calls.get_dataset(dataset_id))

    def list(self) -> list[Dataset]:
        return [Dataset.model_validate(d) for d in self._c.run(calls.list_datasets())["items"]]


class Jobs:
    def __init__(self, client: Client) -> None:
        self._c = client

    def _job(self, data: Mapping[str, Any]) -> Job:
        job = Job.model_validate(data)
        job._client = self._c
        return job

    def create(self, spec: BaseModel | Mapping[str, Any], *,
               idempotency_key: str | None = None) -> Job:
        """Submit a job spec (a `models.spec.JobSpec` or a dict). Retries are safe: every
        attempt carries the same Idempotency-Key (a fresh one unless you pass one)."""
        return self._job(self._c.run(calls.create_job(spec, idempotency_key)))

    def get(self, job_id: str) -> Job:
        return self._job(self._c.run(calls.get_job(job_id)))

    def list(self, *, status: str | None = None, experiment_id: str | None = None,
             page_size: int = 50, limit: int | None = None) -> Iterator[Job]:
        """Newest first, fetching pages as you iterate; `limit` stops after that many."""
        cursor: str | None = None
        seen = 0
        while True:
            page = self._c.run(calls.list_jobs(status=status, limit=page_size, cursor=cursor,
                                               experiment_id=experiment_id))
            for item in page["items"]:
                if limit is not None and seen >= limit:
                    return
                seen += 1
                yield self._job(item)
            cursor = page.get("next_cursor")
            if not cursor:
                return

    def cancel(self, job_id: str) -> Job:
        return self._job(self._c.run(calls.cancel_job(job_id)))

    def delete(self, job_id: str) -> None:
        self._c.run(calls.delete_job(job_id))

    def history(self, job_id: str, *, since: int = 0, as_frame: bool = False) -> Any:
        """Keras's `history.history` dict ({"epoch": [...], "loss": [...], ...}), or a pandas
        DataFrame indexed by epoch with `as_frame=True`."""
        history = self._c.run(calls.history(job_id, since=since))
        return history_frame(history) if as_frame else history

    def history_csv(self, job_id: str) -> str:
        return self._c.run(calls.history_csv(job_id))

    def curves(self, job_id: str, metrics: str | Sequence[str] = "loss,val_loss,accuracy,"
               "val_accuracy") -> bytes:
        """The job's curves as PNG bytes."""
        return self._c.run(calls.curves(job_id, metrics))

    def model(self, job_id: str) -> dict[str, Any]:
        return self._c.run(calls.model(job_id))

    def predict(self, job_id: str, rows: Any, *, checkpoint: str = "last") -> Prediction:
        """Eval-mode predictions for rows of features (lists, a numpy array or a DataFrame)."""
        return self._c.run(calls.predict(job_id, rows, checkpoint))

    def export(self, job_id: str, *, format: str = "onnx", checkpoint: str = "last",
               fold_bn: bool = False, path: str | Path | None = None) -> bytes:
        """The eval-mode model as a file: `onnx`, `safetensors` (a zip: weights, a JSON sidecar
        that rebuilds them, a README) or `torch_export` (.pt2). `fold_bn` folds BatchNorm into
        the adjacent dense layers. Written to `path` too when given."""
        content = self._c.run(calls.export(job_id, format, checkpoint, fold_bn))
        if path is not None:
            Path(path).write_bytes(content)
        return content

    def events(self, job_id: str, *, last_event_id: str | None = None) -> Iterator[Event]:
        """Live events: StatusEvent, EpochEvent (each epoch once), then DoneEvent; reconnects
        after a dropped connection from the last event received."""
        return (e for e in self._c.events(f"/v1/jobs/{job_id}/events", last_event_id)
                if e is not None)

    def wait(self, job_id: str, *, progress: ProgressArg = False, timeout: float | None = None,
             poll_interval: float = 1.0) -> Job:
        data = self._c.wait(f"/v1/jobs/{job_id}/events", calls.get_job(job_id),
                            progress=progress, timeout=timeout, poll_interval=poll_interval,
                            done=job_done, history_of=job_id)
        return self._job(data)


class Experiments:
    def __init__(self, client: Client) -> None:
        self._c = client

    def _experiment(self, data: Mapping[str, Any]) -> Experiment:
        exp = Experiment.model_validate(data)
        exp._client = self._c
        return exp

    def create(self, spec: BaseModel | Mapping[str, Any], *,
               idempotency_key: str | None = None) -> Experiment:
        """Submit an experiment (a `models.experiment.ExperimentSpec` or a dict)."""
        return self._experiment(self._c.run(calls.create_experiment(spec, idempotency_key)))

    def get(self, experiment_id: str) -> Experiment:
        return self._experiment(self._c.run(calls.get_experiment(experiment_id)))

    def list(self, *, page_size: int = 50, limit: int | None = None) -> Iterator[Experiment]:
        cursor: str | None = None
        seen = 0
        while True:
            page = self._c.run(calls.list_experiments(limit=page_size, cursor=cursor))
            for item in page["items"]:
                if limit is not None and seen >= limit:
                    return
                seen += 1
                yield self._experiment(item)
            cursor = page.get("next_cursor")
            if not cursor:
                return

    def cancel(self, experiment_id: str) -> Experiment:
        return self._experiment(self._c.run(calls.cancel_experiment(experiment_id)))

    def retry(self, experiment_id: str) -> Experiment:
        """Run the failed and cancelled children again."""
        return self._experiment(self._c.run(calls.retry_experiment(experiment_id)))

    def summary(self, experiment_id: str) -> dict[str, Any]:
        """Per variant and metric: per-epoch mean/std/CI, final and best values, epochs to
        the threshold; and paired comparisons between variants."""
        return self._c.run(calls.summary(experiment_id))

    def summary_csv(self, experiment_id: str) -> str:
        return self._c.run(calls.summary_csv(experiment_id))

    def curves(self, experiment_id: str, metric: str = "val_accuracy") -> bytes:
        return self._c.run(calls.experiment_curves(experiment_id, metric))

    def events(self, experiment_id: str, *,
               last_event_id: str | None = None) -> Iterator[Event]:
        """Every child's epochs (EpochEvent with job_id, variant, seed) and statuses, then
        DoneEvent with the final experiment."""
        return (e for e in self._c.events(f"/v1/experiments/{experiment_id}/events",
                                          last_event_id) if e is not None)

    def wait(self, experiment_id: str, *, progress: ProgressArg = False,
             timeout: float | None = None, poll_interval: float = 2.0) -> Experiment:
        data = self._c.wait(f"/v1/experiments/{experiment_id}/events",
                            calls.get_experiment(experiment_id), progress=progress,
                            timeout=timeout, poll_interval=poll_interval, done=experiment_done)
        return self._experiment(data)


class Studies:
    """The seed's claims about BatchNorm, each tested as an experiment on your data and
    network, with a verdict per claim (`report`)."""

    def __init__(self, client: Client) -> None:
        self._c = client

    def _study(self, data: Mapping[str, Any]) -> Study:
        study = Study.model_validate(data)
        study._client = self._c
        return study

    def create(self, preset: str | BaseModel | Mapping[str, Any] = "bn-claims", *,
               base: BaseModel | Mapping[str, Any] | None = None,
               claims: str | Sequence[str] | None = None, seeds: int | None = 20,
               name: str | None = None, idempotency_key: str | None = None,
               **options: Any) -> Study:
        """Start a study: `preset` (or a whole spec as a dict / `models.study.StudySpec`),
        `base` a partial job spec (dataset, network, training), `claims` a subset of the
        preset's; `options` are the spec's other fields (alpha, confidence, learning_rates,
        init_scales, batch_sizes, threshold_fraction). Retries carry one Idempotency-Key."""
        body = calls.study_body(preset, base=base, claims=claims, seeds=seeds, name=name,
                                options=options)
        return self._study(self._c.run(calls.create_study(body, idempotency_key)))

    def get(self, study_id: str) -> Study:
        return self._study(self._c.run(calls.get_study(study_id)))

    def list(self, *, page_size: int = 50, limit: int | None = None) -> Iterator[Study]:
        """Newest first, fetching pages as you iterate; `limit` stops after that many."""
        cursor: str | None = None
        seen = 0
        while True:
            items, cursor = calls.page_items(self._c.run(calls.list_studies(
                limit=page_size, cursor=cursor)))
            for item in items:
                if limit is not None and seen >= limit:
                    return
                seen += 1
                yield self._study(item)
            if not cursor:
                return

    def cancel(self, study_id: str) -> Study:
        """Cancel every child of every claim that has not finished."""
        return self._study(self._c.run(calls.cancel_study(study_id)))

    def retry(self, study_id: str) -> Study:
        """Run the failed children again (Conflict if none failed)."""
        return self._study(self._c.run(calls.retry_study(study_id)))

    def report(self, study_id: str) -> dict[str, Any]:
        """Per claim: verdict, reason, measure, the paired test and its Holm-adjusted p
        (`bnlab.StudyReport.model_validate(...)` for typed access)."""
        return self._c.run(calls.study_report(study_id))

    def report_markdown(self, study_id: str) -> str:
        return self._c.run(calls.study_report_markdown(study_id))

    def report_html(self, study_id: str) -> str:
        return self._c.run(calls.study_report_html(study_id))

    def wait(self, study_id: str, *, timeout: float | None = None, poll: float | None = None,
             poll_interval: float = 2.0, progress: StudyProgressArg = False) -> Study:
        """Poll (with If-None-Match) until the study is done; raises WaitTimeout after
        `timeout` seconds."""
        report = study_progress_callback(progress)
        interval = poll if poll is not None else poll_interval
        deadline = None if timeout is None else time.monotonic() + timeout
        get = calls.get_study(study_id)
        etag: str | None = None
        outage = Outage(deadline, timeout)
        while True:
            try:
                response = checked(self._c.send(get, {"If-None-Match": etag} if etag else None))
                if response.status_code != 304:
                    study, etag = self._study(response.json()), response.headers.get("etag")
                    report(study)
                    if study.done:
                        return study
            except BnlabError as exc:
                time.sleep(outage.delay(exc))
                continue
            outage.over()
            time.sleep(interval)


class Client:
    """bnlab's API. `base_url` defaults to $BNLAB_URL (else http://127.0.0.1:8000), `api_key`
    to $BNLAB_API_KEY (sent as `Authorization: Bearer`). Connection errors, 429 (after its
    Retry-After) and 5xx are retried `max_retries` times with exponential backoff."""

    def __init__(self, base_url: str | None = None, *, api_key: str | None = None,
                 timeout: float = DEFAULT_TIMEOUT, max_retries: int = 2,
                 http_client: httpx.Client | None = None) -> None:
        self.base_url = base_url_from(base_url)
        self.timeout = timeout
        self.max_retries = max_retries
        self._headers = headers_for(api_key)
        self._owns_http = http_client is None
        self._http = http_client or httpx.Client(base_url=self.base_url, timeout=timeout)
        self.datasets = Datasets(self)
        self.jobs = Jobs(self)
        self.experiments = Experiments(self)
        self.studies = Studies(self)

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def curves(self, job_ids: Sequence[str], metrics: str | Sequence[str] = "val_accuracy"
               ) -> bytes:
        """Several jobs' curves overlaid on one PNG (the notebook's final plot)."""
        return self.run(calls.compare_curves(job_ids, metrics))

    # -- the machinery --------------------------------------------------------------------

    def send(self, call: Call[Any], headers: Mapping[str, str] | None = None) -> httpx.Response:
        """Send with retries; the last response, whatever its status."""
        attempt = 0
        while True:
            try:
                response = self._http.request(
                    call.method, call.path, params=call.params, json=call.json,
                    files=call.files, data=call.data,
                    headers={**self._headers, **call.headers, **(headers or {})})
            except httpx.TransportError as exc:
                delay = transport_delay(call, exc, attempt, self.max_retries)
                if delay is None:
                    raise transport_error(exc, self.base_url) from exc
            else:
                delay = response_delay(call, response, attempt, self.max_retries)
                if delay is None:
                    return response
            time.sleep(delay)
            attempt += 1

    def run(self, call: Call[T]) -> T:
        return call.parse(checked(self.send(call)))

    def sse(self, path: str, last_event_id: str | None) -> Iterator[Message | Comment]:
        """The raw stream until its `done` (or `error`) message, reconnecting from the last
        event id after a dropped connection or a stream that ended early."""
        failures = 0
        last = last_event_id
        timeout = httpx.Timeout(self.timeout, read=STREAM_READ_TIMEOUT)
        while True:
            headers = {**self._headers, "Accept": "text/event-stream"}
            if last is not None:
                headers["Last-Event-ID"] = last
            try:
                with self._http.stream("GET", path, headers=headers, timeout=timeout) as resp:
                    if resp.status_code >= 400:
                        resp.read()
                        delay = response_delay(STREAM_CALL, resp, failures, self.max_retries)
                        if delay is None:
                            checked(resp)
                        time.sleep(delay or 0.0)
                        failures += 1
                        continue
                    decoder = Decoder()
                    decoder.last_id = last
                    for line in resp.iter_lines():
                        item = decoder.feed(line)
                        if item is None:
                            continue
                        if isinstance(item, Message):
                            failures, last = 0, decoder.last_id
                        yield item
                        if isinstance(item, Message) and item.event in ("done", "error"):
                            return
            except httpx.TransportError as exc:
                if failures >= self.max_retries:
                    raise transport_error(exc, self.base_url) from exc
            else:
                if failures >= self.max_retries:
                    raise ConnectionError(f"the event stream {path} kept ending early")
            time.sleep(backoff_s(failures))
            failures += 1

    def events(self, path: str, last_event_id: str | None) -> Iterator[Event | None]:
        """Typed events; None for a keep-alive (so a waiter can check its clock)."""
        for item in self.sse(path, last_event_id):
            yield parse_event(item.event, item.data, item.id) if isinstance(item, Message) \
                else None

    def wait(self, events_path: str, get: Call[Any], *, progress: ProgressArg,
             timeout: float | None, poll_interval: float, done: Callable[[dict[str, Any]], bool],
             history_of: str | None = None) -> dict[str, Any]:
        """Follow the event stream to its `done`; poll `get` (with If-None-Match) when the
        server has no stream or it keeps failing. Returns the final resource's JSON."""
        report = progress_callback(progress)
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            for event in self.events(events_path, None):
                if event is not None:
                    report(event)
                if isinstance(event, DoneEvent):
                    return event.data
                check_deadline(deadline, timeout)
        except NotFound:
            self.run(get)  # raises NotFound itself when the resource does not exist
        except BnlabError as exc:
            if not transient(exc):  # e.g. 401: no wait helps; an outage: poll through it
                raise
        return self._poll(get, report, deadline, timeout, poll_interval, done, history_of)

    def _poll(self, get: Call[Any], report: Callable[[Event], Any], deadline: float | None,
              timeout: float | None, interval: float, done: Callable[[dict[str, Any]], bool],
              history_of: str | None) -> dict[str, Any]:
        etag: str | None = None
        status, epoch = None, 0
        outage = Outage(deadline, timeout)
        while True:
            try:
                response = checked(self.send(get, {"If-None-Match": etag} if etag else None))
                if response.status_code != 304:  # 304: nothing changed, nothing to read
                    data = response.json()
                    if data.get("status") != status:
                        status = data.get("status")
                        report(status_event(data))
                    if history_of is not None and data.get("epoch", 0) > epoch:
                        h = self.run(calls.history(history_of, since=epoch))
                        for event in epoch_events(history_of, h):
                            report(event)
                            epoch = event.epoch
                    if done(data):
                        report(DoneEvent(data=data))
                        return data  # type: ignore[no-any-return]
                    etag = response.headers.get("etag")  # once all of it is read
            except BnlabError as exc:
                time.sleep(outage.delay(exc))
                continue
            outage.over()
            time.sleep(interval)
