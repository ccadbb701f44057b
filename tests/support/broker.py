"""What the API left in kombu's filesystem broker (the app under test has no worker)."""

from __future__ import annotations

import base64
import json
from typing import Any

from api.settings import ApiSettings


def queued_messages(settings: ApiSettings, queue: str = "cpu") -> list[dict[str, Any]]:
    """Messages the API left in the filesystem broker for `queue`: headers plus decoded body."""
    out = []
    for path in sorted((settings.broker_folder / "queue").glob(f"*.{queue}.msg")):
        raw = json.loads(path.read_text())
        body = json.loads(base64.b64decode(raw["body"]))
        out.append({"task": raw["headers"]["task"], "args": body[0], "kwargs": body[1]})
    return out
