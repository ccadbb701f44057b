"""What the sync and async clients share: settings, the requests each call makes, the retry
policy and error translation. The two clients only differ in how they wait for I/O."""

from __future__ import annotations

import email.utils
import io
import json
import os
import random
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import httpx
from pydantic import BaseModel

from bnlab.errors import (
    APIError,
    BnlabError,
    ConnectionError,
    Timeout,
    WaitTimeout,
    error_for,
)

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT = 30.0
# The server pings an idle event stream every 15 s; a read waiting longer means it is gone.
STREAM_READ_TIMEOUT = 60.0
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
BACKOFF_BASE_S = 0.5
BACKOFF_MAX_S = 8.0
RETRY_AFTER_MAX_S = 60.0
# "Not now" answers: a wait polls on through them (a restart of the API, its database or broker).
TRANSIENT_STATUSES = frozenset({429, 502, 503, 504})
# How long a wait without a timeout of its own rides out failures in a row before it gives up.
OUTAGE_MAX_S = 300.0
USER_AGENT = "bnlab-client/0.1"


def base_url_from(base_url: str | None) -> str:
    return (base_url or os.environ.get("BNLAB_URL") or DEFAULT_URL).rstrip("/")


def headers_for(api_key: str | None) -> dict[str, str]:
    key = api_key if api_key is not None else os.environ.get("BNLAB_API_KEY")
    headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return headers


def new_idempotency_key() -> str:
    return str(uuid.uuid4())


@dataclass(frozen=True)
class Call(Generic[T]):
    """One API request and how to read its answer. `idempotent`: safe to send again after the
    request may have reached the server (every GET; POSTs with an Idempotency-Key)."""

    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    params: Mapping[str, Any] | None = None
    json: Any = None
    files: Any = None
    data: Mapping[str, Any] | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    idempotent: bool = True


# -- the retry policy -------------------------------------------------------------------------

def retry_after_s(response: httpx.Response) -> float | None:
    """Retry-After as seconds (a number or an HTTP date), capped; None if absent."""
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    return min(max(seconds, 0.0), RETRY_AFTER_MAX_S)


def backoff_s(attempt: int) -> float:
    """Exponential with jitter: ~0.5, 1, 2, ... s, at most BACKOFF_MAX_S."""
    return min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2.0 ** attempt) * (0.5 + random.random() / 2)


def pause_s(response: httpx.Response | None, attempt: int) -> float:
    """The server's Retry-After when it sent one, else backoff_s(attempt)."""
    hint = retry_after_s(response) if response is not None else None
    return hint if hint is not None else backoff_s(attempt)


def response_delay(call: Call[Any], response: httpx.Response, attempt: int,
                   max_retries: int) -> float | None:
    """Seconds to wait before sending `call` again after `response`; None: do not retry."""
    if attempt >= max_retries or response.status_code not in RETRY_STATUSES:
        return None
    if not call.idempotent and response.status_code not in (429, 503):
        return None  # the server may have done it; only "not now" answers are safe to repeat
    return pause_s(response, attempt)


def transport_delay(call: Call[Any], exc: httpx.TransportError, attempt: int,
                    max_retries: int) -> float | None:
    if attempt >= max_retries:
        return None
    never_sent = isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)
    if not call.idempotent and not never_sent:
        return None
    return backoff_s(attempt)


def transport_error(exc: httpx.TransportError, url: str) -> ConnectionError:
    cls = Timeout if isinstance(exc, httpx.TimeoutException) else ConnectionError
    return cls(f"{type(exc).__name__} talking to {url}: {exc or 'no detail'}")


def checked(response: httpx.Response) -> httpx.Response:
    if response.status_code >= 400:
        raise error_for(response, retry_after_s(response))
    return response


# -- parsers ----------------------------------------------------------------------------------

def as_json(response: httpx.Response) -> Any:
    return response.json()


def as_text(response: httpx.Response) -> str:
    return response.text


def as_bytes(response: httpx.Response) -> bytes:
    return response.content


def as_none(_: httpx.Response) -> None:
    return None


# -- request bodies ---------------------------------------------------------------------------

def spec_body(spec: BaseModel | Mapping[str, Any]) -> dict[str, Any]:
    """A JobSpec / ExperimentSpec (validated, normalised) or a plain dict, as JSON."""
    if isinstance(spec, BaseModel):
        return spec.model_dump(mode="json", exclude_unset=False)
    copy: dict[str, Any] = json.loads(json.dumps(dict(spec)))  # and a clear error if not JSON
    return copy


def _default_name(content: bytes) -> str:
    if content[:2] == b"PK":
        return "data.npz"
    return "data.idx" if content[:2] in (b"\0\0", b"\x1f\x8b") else "data.csv"


def upload_files(source: Any, filename: str | None) -> tuple[str, bytes]:
    """A path, bytes (CSV, .npz or IDX), a file object or a pandas DataFrame ->
    (filename, bytes); the server tells the formats apart by their content."""
    if hasattr(source, "to_csv"):  # a DataFrame, without importing pandas
        buf = io.StringIO()
        source.to_csv(buf, index=False)
        return filename or "dataframe.csv", buf.getvalue().encode()
    if isinstance(source, bytes):
        return filename or _default_name(source), source
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        return filename or path.name, path.read_bytes()
    if hasattr(source, "read"):
        content = source.read()
        content = content.encode() if isinstance(content, str) else content
        name = filename or Path(getattr(source, "name", None) or _default_name(content)).name
        return name, content
    raise TypeError(f"upload a path, bytes, a file or a pandas DataFrame, not "
                    f"{type(source).__name__}")


def _floats(value: Any) -> Any:
    return [_floats(v) for v in value] if isinstance(value, list | tuple) else float(value)


def rows_body(rows: Any, checkpoint: str) -> dict[str, Any]:
    """Rows as a list of lists (a DataFrame or numpy array works too); images as nested lists
    or an array shaped (n, C, H, W) like the dataset's."""
    if hasattr(rows, "to_numpy"):
        rows = rows.to_numpy()
    if hasattr(rows, "tolist"):
        rows = rows.tolist()
    return {"inputs": [_floats(row) for row in rows], "checkpoint": checkpoint}


def history_frame(history: dict[str, list[Any]]) -> Any:
    try:
        import pandas as pd
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError("as_frame=True needs pandas: pip install pandas") from None
    return pd.DataFrame(history).set_index("epoch")


def metrics_param(metrics: str | Sequence[str]) -> str:
    return metrics if isinstance(metrics, str) else ",".join(metrics)


def check_deadline(deadline: float | None, timeout: float | None) -> None:
    if deadline is not None and time.monotonic() > deadline:
        raise WaitTimeout(f"not finished after {timeout} s")


def transient(exc: BnlabError) -> bool:
    """The server is unreachable or said "not now": worth asking again later."""
    if isinstance(exc, APIError):
        return exc.status_code in TRANSIENT_STATUSES
    return isinstance(exc, ConnectionError)


class Outage:
    """A waiter's run of failed polls. A wait (for a job, an experiment, a study) outlives the
    client's few quick retries: it polls on through transient failures until its own deadline,
    or for OUTAGE_MAX_S in a row when it has none, sleeping the server's Retry-After or a
    backoff in between. Anything else is the caller's to raise."""

    def __init__(self, deadline: float | None, timeout: float | None) -> None:
        self.deadline, self.timeout = deadline, timeout
        self.since: float | None = None
        self.failures = 0

    def over(self) -> None:
        """A poll went through: the outage (if any) is over; raises WaitTimeout past the
        deadline."""
        self.since, self.failures = None, 0
        check_deadline(self.deadline, self.timeout)

    def delay(self, exc: BnlabError) -> float:
        """Seconds to sleep before the next poll. Raises `exc` when it is no outage or has gone
        on too long, and WaitTimeout past the deadline (chained to `exc`, which says why)."""
        now = time.monotonic()
        self.since = now if self.since is None else self.since
        if not transient(exc) or (self.deadline is None and now - self.since > OUTAGE_MAX_S):
            raise exc
        check_deadline(self.deadline, self.timeout)
        wait = pause_s(exc.response if isinstance(exc, APIError) else None, self.failures)
        self.failures += 1
        return wait if self.deadline is None else max(0.0, min(wait, self.deadline - now))


STREAM_CALL: Call[None] = Call("GET", "", lambda _: None)  # the retry policy of a stream


def replace_model(model: M, fresh: M) -> M:
    """Update a handle in place (keeping its client) and return it."""
    object.__setattr__(model, "__dict__", fresh.__dict__)
    object.__setattr__(model, "__pydantic_extra__", fresh.__pydantic_extra__)
    object.__setattr__(model, "__pydantic_fields_set__", fresh.__pydantic_fields_set__)
    return model
