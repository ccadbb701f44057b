"""The SSE decoder and the typed events built from its messages."""

from __future__ import annotations

import pytest

from bnlab import EpochEvent, NotFound, StatusEvent
from bnlab._sse import Comment, Decoder, Message
from bnlab.types import DoneEvent, parse_event


def feed(text: str) -> list[Message | Comment]:
    decoder = Decoder()
    out = [decoder.feed(line) for line in text.split("\n")]
    return [item for item in out if item is not None]


def test_decoder_follows_the_wire_format() -> None:
    items = feed(": ping\n\nevent: epoch\ndata: {\"epoch\": 1,\ndata:  \"loss\": 0.5}\nid: 1\n"
                 "retry: 2000\n\ndata: plain\n\nevent: done\n\n")
    assert items[0] == Comment("ping")
    assert items[1] == Message("epoch", '{"epoch": 1,\n "loss": 0.5}', "1", 2000)
    # no id of its own: it carries the last one seen, as a browser's lastEventId does
    assert items[2] == Message("message", "plain", "1")
    assert len(items) == 3  # an event without data is not dispatched


def test_typed_events_from_job_and_experiment_streams() -> None:
    job = parse_event("epoch", '{"job_id": "j", "epoch": 3, "loss": 0.5, "val_loss": null}', "3")
    assert job == EpochEvent(id="3", epoch=3, job_id="j", metrics={"loss": 0.5,
                                                                     "val_loss": None})
    child = parse_event("epoch", '{"job_id": "c", "variant": "bn", "seed": 2, "epoch": 1, '
                                 '"metrics": {"val_accuracy": 0.75}}', "0:1")
    assert isinstance(child, EpochEvent)
    assert child.variant == "bn"
    assert child.seed == 2
    assert child.metrics == {"val_accuracy": 0.75}
    assert child.id == "0:1"
    status = parse_event("status", '{"job_id": "j", "status": "running", "epoch": 0, '
                                   '"epochs": 5, "error": null}', None)
    assert isinstance(status, StatusEvent)
    assert status.status == "running"
    assert status.epochs == 5
    done = parse_event("done", '{"id": "j", "status": "succeeded"}', "5")
    assert isinstance(done, DoneEvent)
    assert done.data["status"] == "succeeded"
    assert parse_event("something-new", "{}", None) is None
    with pytest.raises(NotFound, match="was deleted"):
        parse_event("error", '{"error": "NotFound", "detail": "job was deleted"}', None)
