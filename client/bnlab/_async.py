"""The asyncio twin of `Client`: the same surface, awaited (`async for` for iterators)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
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


class AsyncJob(JobData):
    """A job as the server last reported it, with methods that talk to the server."""

    _client: AsyncClient = PrivateAttr()

    async def refresh(self) -> AsyncJob:
        return replace_model(self, await self._client.jobs.get(self.id))

    async def wait(self, *, progress: ProgressArg = False, timeout: float | None = None,
                   poll_interval: float = 1.0) -> AsyncJob:
        """Until the job finishes (live events; polling if they are unavailable)."""
        return replace_model(self, await self._client.jobs.wait(
            self.id, progress=progress, timeout=timeout, poll_interval=poll_interval))

    async def cancel(self) -> AsyncJob:
        return replace_model(self, await self._client.jobs.cancel(self.id))

    async def history(self, *, as_frame: bool = False) -> Any:
        return await self._client.jobs.history(self.id, as_frame=as_frame)

    async def predict(self, rows: Any, *, checkpoint: str = "last") -> Prediction:
        return await self._client.jobs.predict(self.id, rows, checkpoint=checkpoint)

    async def export(self, *, format: str = "onnx", checkpoint: str = "last",
                     fold_bn: bool = False, path: str | Path | None = None) -> bytes:
        return await self._client.jobs.export(self.id, format=format, checkpoint=checkpoint,
                                              fold_bn=fold_bn, path=path)

    def events(self, *, last_event_id: str | None = None) -> AsyncIterator[Event]:
        return self._client.jobs.events(self.id, last_event_id=last_event_id)


class AsyncExperiment(ExperimentData):
    """An experiment as the server last reported it, with methods that talk to the server."""

    _client: AsyncClient = PrivateAttr()

    async def refresh(self) -> AsyncExperiment:
        return replace_model(self, await self._client.experiments.get(self.id))

    async def wait(self, *, progress: ProgressArg = False, timeout: float | None = None,
                   poll_interval: float = 2.0) -> AsyncExperiment:
        return replace_model(self, await self._client.experiments.wait(
            self.id, progress=progress, timeout=timeout, poll_interval=poll_interval))

    async def summary(self) -> dict[str, Any]:
        return await self._client.experiments.summary(self.id)

    async def cancel(self) -> AsyncExperiment:
        return replace_model(self, await self._client.experiments.cancel(self.id))

    def events(self, *, last_event_id: str | None = None) -> AsyncIterator[Event]:
        return self._client.experiments.events(self.id, last_event_id=last_event_id)


class AsyncStudy(StudyData):
    """A study as the server last reported it, with methods that talk to the server."""

    _client: AsyncClient = PrivateAttr()

    async def refresh(self) -> AsyncStudy:
        return replace_model(self, await self._client.studies.get(self.id))

    async def wait(self, *, timeout: float | None = None, poll: float | None = None,
                   poll_interval: float = 2.0,
                   progress: StudyProgressArg = False) -> AsyncStudy:
        """Until every claim's experiment has finished (polling; `poll` is an alias of
        `poll_interval`)."""
        return replace_model(self, await self._client.studies.wait(
            self.id, timeout=timeout, poll=poll, poll_interval=poll_interval,
            progress=progress))

    async def cancel(self) -> AsyncStudy:
        return replace_model(self, await self._client.studies.cancel(self.id))

    async def retry(self) -> AsyncStudy:
        return replace_model(self, await self._client.studies.retry(self.id))

    async def report(self) -> dict[str, Any]:
        return await self._client.studies.report(self.id)

    async def report_markdown(self) -> str:
        return await self._client.studies.report_markdown(self.id)

    async def report_html(self) -> str:
        return await self._client.studies.report_html(self.id)


class AsyncDatasets:
    def __init__(self, client: AsyncClient) -> None:
        self._c = client

    async def upload(self, source: Any, *, name: str | None = None,
                     label_column: str | None = None, filename: str | None = None,
                     labels: Any = None) -> Dataset:
        """Upload a CSV (a path, bytes, an open file or a pandas DataFrame), an .npz with
        arrays x and y, or an IDX images file with its labels file as `labels` (MNIST's
        format, optionally .gz; stored as an .npz). Files are read here, synchronously."""
        return await self._c.run(calls.upload_dataset(
            source, name=name, label_column=label_column, filename=filename, labels=labels))

    async def get(self, dataset_id: str) -> Dataset:
        return await self._c.run(calls.get_dataset(dataset_id))

    async def list(self) -> list[Dataset]:
        page = await self._c.run(calls.list_datasets())
        return [Dataset.model_validate(d) for d in page["items"]]


class AsyncJobs:
    def __init__(self, client: AsyncClient) -> None:
        self._c = client

    def _job(self, data: Mapping[str, Any]) -> AsyncJob:
        job = AsyncJob.model_validate(data)
        job._client = self._c
        return job

    async def create(self, spec: BaseModel | Mapping[str, Any], *,
                     idempotency_key: str | None = None) -> AsyncJob:
        """Submit a job spec (a `models.spec.JobSpec` or a dict). Retries are safe: every
        attempt carries the same Idempotency-Key (a fresh one unless you pass one)."""
        return self._job(await self._c.run(calls.create_job(spec, idempotency_key)))

    async def get(self, job_id: str) -> AsyncJob:
        return self._job(await self._c.run(calls.get_job(job_id)))

    async def list(self, *, status: str | None = None, experiment_id: str | None = None,
                   page_size: int = 50, limit: int | None = None) -> AsyncIterator[AsyncJob]:
        """Newest first, fetching pages as you iterate; `limit` stops after that many."""
        cursor: str | None = None
        seen = 0
        while True:
            page = await self._c.run(calls.list_jobs(
                status=status, limit=page_size, cursor=cursor, experiment_id=experiment_id))
            for item in page["items"]:
                if limit is not None and seen >= limit:
                    return
                seen += 1
                yield self._job(item)
            cursor = page.get("next_cursor")
            if not cursor:
                return

    async def cancel(self, job_id: str) -> AsyncJob:
        return self._job(await self._c.run(calls.cancel_job(job_id)))

    async def delete(self, job_id: str) -> None:
        await self._c.run(calls.delete_job(job_id))

    async def history(self, job_id: str, *, since: int = 0, as_frame: bool = False) -> Any:
        """Keras's `history.history` dict, or a pandas DataFrame with `as_frame=True`."""
        history = await self._c.run(calls.history(job_id, since=since))
        return history_frame(history) if as_frame else history

    async def history_csv(self, job_id: str) -> str:
        return await self._c.run(calls.history_csv(job_id))

    async def curves(self, job_id: str, metrics: str | Sequence[str] = "loss,val_loss,"
                     "accuracy,val_accuracy") -> bytes:
        return await self._c.run(calls.curves(job_id, metrics))

    async def model(self, job_id: str) -> dict[str, Any]:
        return await self._c.run(calls.model(job_id))

    async def predict(self, job_id: str, rows: Any, *, checkpoint: str = "last") -> Prediction:
        return await self._c.run(calls.predict(job_id, rows, checkpoint))

    async def export(self, job_id: str, *, format: str = "onnx", checkpoint: str = "last",
               fold_bn: bool = False, path: str | Path | None = None) -> bytes:
        """The eval-mode model as a file: `onnx`, `safetensors` (a zip: weights, a JSON sidecar
        that rebuilds them, a README) or `torch_export` (.pt2). `fold_bn` folds BatchNorm into
        the adjacent dense layers. Written to `path` too when given."""
        content = await self._c.run(calls.export(job_id, format, checkpoint, fold_bn))
        if path is not None:
            Path(path).write_bytes(content)
        return content

    async def events(self, job_id: str, *,
                     last_event_id: str | None = None) -> AsyncIterator[Event]:
        """Live events: StatusEvent, EpochEvent (each epoch once), then DoneEvent."""
        async for event in self._c.events(f"/v1/jobs/{job_id}/events", last_event_id):
            if event is not None:
                yield event

    async def wait(self, job_id: str, *, progress: ProgressArg = False,
                   timeout: float | None = None, poll_interval: float = 1.0) -> AsyncJob:
        data = await self._c.wait(f"/v1/jobs/{job_id}/events", calls.get_job(job_id),
                                  progress=progress, timeout=timeout,
                                  poll_interval=poll_interval, done=job_done, history_of=job_id)
        return self._job(data)


class AsyncExperiments:
    def __init__(self, client: AsyncClient) -> None:
        self._c = client

    def _experiment(self, data: Mapping[str, Any]) -> AsyncExperiment:
        exp = AsyncExperiment.model_validate(data)
        exp._client = self._c
        return exp

    async def create(self, spec: BaseModel | Mapping[str, Any], *,
                     idempotency_key: str | None = None) -> AsyncExperiment:
        return self._experiment(await self._c.run(calls.create_experiment(spec,
                                                                          idempotency_key)))

    async def get(self, experiment_id: str) -> AsyncExperiment:
        return self._experiment(await self._c.run(calls.get_experiment(experiment_id)))

    async def list(self, *, page_size: int = 50,
                   limit: int | None = None) -> AsyncIterator[AsyncExperiment]:
        cursor: str | None = None
        seen = 0
        while True:
            page = await self._c.run(calls.list_experiments(limit=page_size, cursor=cursor))
            for item in page["items"]:
                if limit is not None and seen >= limit:
                    return
                seen += 1
                yield self._experiment(item)
            cursor = page.get("next_cursor")
            if not cursor:
                return

    async def cancel(self, experiment_id: str) -> AsyncExperiment:
        return self._experiment(await self._c.run(calls.cancel_experiment(experiment_id)))

    async def retry(self, experiment_id: str) -> AsyncExperiment:
        return self._experiment(await self._c.run(calls.retry_experiment(experiment_id)))

    async def summary(self, experiment_id: str) -> dict[str, Any]:
        return await self._c.run(calls.summary(experiment_id))

    async def summary_csv(self, experiment_id: str) -> str:
        return await self._c.run(calls.summary_csv(experiment_id))

    async def curves(self, experiment_id: str, metric: str = "val_accuracy") -> bytes:
        return await self._c.run(calls.experiment_curves(experiment_id, metric))

    async def events(self, experiment_id: str, *,
                     last_event_id: str | None = None) -> AsyncIterator[Event]:
        async for event in self._c.events(f"/v1/experiments/{experiment_id}/events",
                                          last_event_id):
            if event is not None:
                yield event

    async def wait(self, experiment_id: str, *, progress: ProgressArg = False,
                   timeout: float | None = None,
                   poll_interval: float = 2.0) -> AsyncExperiment:
        data = await self._c.wait(f"/v1/experiments/{experiment_id}/events",
                                  calls.get_experiment(experiment_id), progress=progress,
                                  timeout=timeout, poll_interval=poll_interval,
                                  done=experiment_done)
        return self._experiment(data)


class AsyncStudies:
    """The seed's claims about BatchNorm, tested on your data (see `Client.studies`)."""

    def __init__(self, client: AsyncClient) -> None:
        self._c = client

    def _study(self, data: Mapping[str, Any]) -> AsyncStudy:
        study = AsyncStudy.model_validate(data)
        study._client = self._c
        return study

    async def create(self, preset: str | BaseModel | Mapping[str, Any] = "bn-claims", *,
                     base: BaseModel | Mapping[str, Any] | None = None,
                     claims: str | Sequence[str] | None = None, seeds: int | None = 20,
                     name: str | None = None, idempotency_key: str | None = None,
                     **options: Any) -> AsyncStudy:
        body = calls.study_body(preset, base=base, claims=claims, seeds=seeds, name=name,
                                options=options)
        return self._study(await self._c.run(calls.create_study(body, idempotency_key)))

    async def get(self, study_id: str) -> AsyncStudy:
        return self._study(await self._c.run(calls.get_study(study_id)))

    async def list(self, *, page_size: int = 50,
                   limit: int | None = None) -> AsyncIterator[AsyncStudy]:
        cursor: str | None = None
        seen = 0
        while True:
            items, cursor = calls.page_items(await self._c.run(calls.list_studies(
                limit=page_size, cursor=cursor)))
            for item in items:
                if limit is not None and seen >= limit:
                    return
                seen += 1
                yield self._study(item)
            if not cursor:
                return

    async def cancel(self, study_id: str) -> AsyncStudy:
        return self._study(await self._c.run(calls.cancel_study(study_id)))

    async def retry(self, study_id: str) -> AsyncStudy:
        return self._study(await self._c.run(calls.retry_study(study_id)))

    async def report(self, study_id: str) -> dict[str, Any]:
        return await self._c.run(calls.study_report(study_id))

    async def report_markdown(self, study_id: str) -> str:
        return await self._c.run(calls.study_report_markdown(study_id))

    async def report_html(self, study_id: str) -> str:
        return await self._c.run(calls.study_report_html(study_id))

    async def wait(self, study_id: str, *, timeout: float | None = None,
                   poll: float | None = None, poll_interval: float = 2.0,
                   progress: StudyProgressArg = False) -> AsyncStudy:
        report = study_progress_callback(progress)
        interval = poll if poll is not None else poll_interval
        deadline = None if timeout is None else time.monotonic() + timeout
        get = calls.get_study(study_id)
        etag: str | None = None
        outage = Outage(deadline, timeout)
        while True:
            try:
                response = checked(await self._c.send(
                    get, {"If-None-Match": etag} if etag else None))
                if response.status_code != 304:
                    study, etag = self._study(response.json()), response.headers.get("etag")
                    report(study)
                    if study.done:
                        return study
            except BnlabError as exc:
                await asyncio.sleep(outage.delay(exc))
                continue
            outage.over()
            await asyncio.sleep(interval)


class AsyncClient:
    """The asyncio twin of `Client` (same arguments, same environment variables)."""

    def __init__(self, base_url: str | None = None, *, api_key: str | None = None,
                 timeout: float = DEFAULT_TIMEOUT, max_retries: int = 2,
                 http_client: httpx.AsyncClient | None = None) -> None:
        self.base_url = base_url_from(base_url)
        self.timeout = timeout
        self.max_retries = max_retries
        self._headers = headers_for(api_key)
        self._owns_http = http_client is None
        self._http = http_client or httpx.AsyncClient(base_url=self.base_url, timeout=timeout)
        self.datasets = AsyncDatasets(self)
        self.jobs = AsyncJobs(self)
        self.experiments = AsyncExperiments(self)
        self.studies = AsyncStudies(self)

    async def close(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def curves(self, job_ids: Sequence[str],
                     metrics: str | Sequence[str] = "val_accuracy") -> bytes:
        return await self.run(calls.compare_curves(job_ids, metrics))

    # -- the machinery (see Client) --------------------------------------------------------

    async def send(self, call: Call[Any],
                   headers: Mapping[str, str] | None = None) -> httpx.Response:
        attempt = 0
        while True:
            try:
                response = await self._http.request(
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
            await asyncio.sleep(delay)
            attempt += 1

    async def run(self, call: Call[T]) -> T:
        return call.parse(checked(await self.send(call)))

    async def sse(self, path: str, last_event_id: str | None
                  ) -> AsyncIterator[Message | Comment]:
        failures = 0
        last = last_event_id
        timeout = httpx.Timeout(self.timeout, read=STREAM_READ_TIMEOUT)
        while True:
            headers = {**self._headers, "Accept": "text/event-stream"}
            if last is not None:
                headers["Last-Event-ID"] = last
            try:
                async with self._http.stream("GET", path, headers=headers,
                                             timeout=timeout) as resp:
                    if resp.status_code >= 400:
                        await resp.aread()
                        delay = response_delay(STREAM_CALL, resp, failures, self.max_retries)
                        if delay is None:
                            checked(resp)
                        await asyncio.sleep(delay or 0.0)
                        failures += 1
                        continue
                    decoder = Decoder()
                    decoder.last_id = last
                    async for line in resp.aiter_lines():
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
            await asyncio.sleep(backoff_s(failures))
            failures += 1

    async def events(self, path: str, last_event_id: str | None
                     ) -> AsyncIterator[Event | None]:
        async for item in self.sse(path, last_event_id):
            yield parse_event(item.event, item.data, item.id) if isinstance(item, Message) \
                else None

    async def wait(self, events_path: str, get: Call[Any], *, progress: ProgressArg,
                   timeout: float | None, poll_interval: float,
                   done: Callable[[dict[str, Any]], bool],
                   history_of: str | None = None) -> dict[str, Any]:
        report = progress_callback(progress)
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            async for event in self.events(events_path, None):
                if event is not None:
                    report(event)
                if isinstance(event, DoneEvent):
                    return event.data
                check_deadline(deadline, timeout)
        except NotFound:
            await self.run(get)  # raises NotFound itself when the resource does not exist
        except BnlabError as exc:
            if not transient(exc):  # e.g. 401: no wait helps; an outage: poll through it
                raise
        etag: str | None = None
        status, epoch = None, 0
        outage = Outage(deadline, timeout)
        while True:
            try:
                response = checked(await self.send(
                    get, {"If-None-Match": etag} if etag else None))
                if response.status_code != 304:  # 304: nothing changed, nothing to read
                    data = response.json()
                    if data.get("status") != status:
                        status = data.get("status")
                        report(status_event(data))
                    if history_of is not None and data.get("epoch", 0) > epoch:
                        h = await self.run(calls.history(history_of, since=epoch))
                        for event in epoch_events(history_of, h):
                            report(event)
                            epoch = event.epoch
                    if done(data):
                        report(DoneEvent(data=data))
                        return data  # type: ignore[no-any-return]
                    etag = response.headers.get("etag")  # once all of it is read
            except BnlabError as exc:
                await asyncio.sleep(outage.delay(exc))
                continue
            outage.over()
            await asyncio.sleep(poll_interval)
