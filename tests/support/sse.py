"""Reading a finished server-sent event stream back as events."""

from __future__ import annotations

import json
from typing import Any


def sse(text: str) -> list[dict[str, Any]]:
    """Parse a finished event stream into [{"event", "id", "data"}] (comments dropped)."""
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        fields: dict[str, Any] = {}
        for line in block.splitlines():
            if line.startswith(":") or ":" not in line:
                continue
            key, _, value = line.partition(":")
            fields[key] = value[1:] if value.startswith(" ") else value
        if "event" in fields or "data" in fields:
            fields["data"] = json.loads(fields["data"]) if "data" in fields else None
            events.append(fields)
    return events
