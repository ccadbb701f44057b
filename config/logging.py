"""Process-wide logging for the API and the worker: JSON lines or text, with the ids of what a
line is about (request_id on API logs, job_id and experiment_id on worker logs).

The ids live in one context variable, so they follow the request or task through `await`s and
into FastAPI's threadpool (anyio copies the context); a thread started with
`threading.Thread` does not inherit them. Entry points (`bnlab serve`, the Celery worker) call
`configure_logging`; the app and the task code only bind ids with `log_context`.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Literal, TextIO

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

LogFormat = Literal["auto", "json", "text"]
LOG_IDS = ("request_id", "job_id", "experiment_id")

# Each binding sets a new dict (never mutated in place), so a reset restores the outer one.
_ids: ContextVar[dict[str, str] | None] = ContextVar("bnlab_log_ids", default=None)


def _bound() -> dict[str, str]:
    return _ids.get() or {}


@contextmanager
def log_context(**ids: str | None) -> Iterator[None]:
    """Bind ids (None ones skipped) to every log record made inside the block, in this task or
    thread; they are unbound at its end, with whatever `add_log_context` added inside it."""
    token = _ids.set({**_bound(), **{k: v for k, v in ids.items() if v is not None}})
    try:
        yield
    finally:
        _ids.reset(token)


def add_log_context(**ids: str | None) -> None:
    """Bind more ids until the enclosing `log_context` block ends (e.g. the experiment, once the
    job's row is read)."""
    _ids.set({**_bound(), **{k: v for k, v in ids.items() if v is not None}})


class ContextFilter(logging.Filter):
    """Copies the bound ids onto each record (an id passed in `extra=` wins)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in _bound().items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


class TextFormatter(logging.Formatter):
    """`time LEVEL logger: message [job_id=... request_id=...]` for people at a terminal."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        ids = " ".join(f"{k}={v}" for k in LOG_IDS if (v := getattr(record, k, None)))
        if not ids:
            return text
        head, sep, tail = text.partition("\n")  # after the message, before any traceback
        return f"{head} [{ids}]{sep}{tail}"


def json_formatter() -> logging.Formatter:
    """One JSON object per line: time (ISO 8601, UTC), level, logger, message, the bound ids,
    any `extra=` fields, and exc_info as text."""
    return JsonFormatter("%(levelname)s %(name)s %(message)s",
                         rename_fields={"levelname": "level", "name": "logger"},
                         timestamp="time",
                         # uvicorn's copy of the message with terminal colour codes
                         reserved_attrs=[*RESERVED_ATTRS, "color_message", "taskName"])


def resolve_format(fmt: LogFormat, stream: TextIO) -> Literal["json", "text"]:
    """auto: text for a person at a terminal, JSON for everything else (containers, systemd,
    files), which is where logs get collected and parsed."""
    if fmt != "auto":
        return fmt
    isatty = getattr(stream, "isatty", None)
    return "text" if isatty is not None and isatty() else "json"


def configure_logging(fmt: LogFormat = "auto", level: str | int = "INFO",
                      stream: TextIO | None = None) -> logging.Handler:
    """Send every logger's records to one handler on the root logger, formatted as `fmt`.

    Idempotent: a handler installed by an earlier call is replaced, other handlers (pytest's
    capture, a user's own) are left alone. uvicorn's and Celery's loggers are made to
    propagate here instead of printing in their own format. Returns the handler.
    """
    stream = stream or sys.stderr
    handler = logging.StreamHandler(stream)
    handler.set_name("bnlab")
    handler.addFilter(ContextFilter())
    resolved = resolve_format(fmt, stream)
    handler.setFormatter(json_formatter() if resolved == "json" else TextFormatter())
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == "bnlab"]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "celery"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    return handler
