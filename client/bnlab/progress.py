"""The default `progress=True` of `wait()`: one line per job on a stream, updated in place on
a terminal. (The CLI draws rich progress bars instead; any callable taking an event works.)"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TextIO

from bnlab.types import DoneEvent, EpochEvent, Event, StatusEvent, StudyData

SHOWN = ("loss", "accuracy", "val_loss", "val_accuracy")
ProgressArg = bool | Callable[[Event], Any]


def fmt_metrics(metrics: dict[str, float | None]) -> str:
    return "  ".join(f"{k} {metrics[k]:.4f}" for k in SHOWN if metrics.get(k) is not None)


class TextProgress:
    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.epochs: dict[str | None, int | None] = {}

    def __call__(self, event: Event) -> None:
        if isinstance(event, StatusEvent):
            self.epochs[event.job_id] = event.epochs
            self._line(f"{event.job_id or ''} {event.status}".strip(), final=not self.tty)
        elif isinstance(event, EpochEvent):
            total = self.epochs.get(event.job_id)
            if not self.tty and total and event.epoch != total \
                    and event.epoch % max(1, total // 10):
                return  # a log, not a terminal: about ten lines per job
            who = f"{event.variant} seed={event.seed} " if event.variant is not None else ""
            text = f"{who}epoch {event.epoch}{f'/{total}' if total else ''}  " \
                   f"{fmt_metrics(event.metrics)}"
            self._line(text, final=not self.tty)
        elif isinstance(event, DoneEvent):
            data = event.data
            error = f": {data['error']}" if data.get("error") else ""
            self._line(f"{data.get('id', '')} {data.get('status', 'done')}{error}", final=True)

    def _line(self, text: str, *, final: bool) -> None:
        if self.tty:
            self.stream.write("\r\x1b[2K" + text + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()


def progress_callback(progress: ProgressArg) -> Callable[[Event], Any]:
    if callable(progress):
        return progress
    return TextProgress() if progress else (lambda _: None)


StudyProgressArg = bool | Callable[[StudyData], Any]


class StudyTextProgress:
    """A line per change of a study: its status and each claim's succeeded/total children."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.last = ""

    def __call__(self, study: StudyData) -> None:
        claims = "  ".join(f"{c.claim} {c.succeeded}/{c.total}"
                           + (f" ({c.counts['failed']} failed)" if c.counts.get("failed") else "")
                           for c in study.claims)
        text = f"study {study.id} {study.status}  {claims}".rstrip()
        if text != self.last:
            self.last = text
            self.stream.write(text + "\n")
            self.stream.flush()


def study_progress_callback(progress: StudyProgressArg) -> Callable[[StudyData], Any]:
    if callable(progress):
        return progress
    return StudyTextProgress() if progress else (lambda _: None)
