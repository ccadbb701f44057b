"""ASGI middleware: a request id on every response, and request bodies capped while streaming.

Both are plain ASGI (not BaseHTTPMiddleware), so streaming responses (Server-Sent Events) pass
through untouched and the body cap acts before any route, form parser or spooled file sees
the bytes.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from config.logging import log_context

REQUEST_ID_HEADER = b"x-request-id"
_CLIENT_ID = re.compile(rb"^[A-Za-z0-9._-]{1,128}$")


def request_id_of(scope: Scope) -> str | None:
    """The id RequestId gave this request (for error bodies and logs)."""
    state: dict[str, Any] = scope.get("state") or {}
    value = state.get("request_id")
    return str(value) if value is not None else None


class RequestId:
    """Every response carries `X-Request-ID`: the client's own if it sent a sane one (so a
    proxy's id follows the request through), else a fresh one."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sent = dict(scope.get("headers") or []).get(REQUEST_ID_HEADER, b"")
        rid = sent.decode() if _CLIENT_ID.match(sent) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", [])
                           if k.lower() != REQUEST_ID_HEADER]
                message["headers"] = [*headers, (REQUEST_ID_HEADER, rid.encode())]
            await send(message)

        # Every log line made while answering (the access line too) carries the id.
        with log_context(request_id=rid):
            await self.app(scope, receive, send_with_id)


class BodyLimit:
    """Refuse a request body over its limit with 413 before the application reads it: at once
    when Content-Length says so, else as soon as the streamed bytes pass the limit.

    `limit_for(path)` gives the cap in bytes (uploads get a larger one than JSON bodies).
    """

    def __init__(self, app: ASGIApp, limit_for: Callable[[str], int]) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _too_large(send, limit, scope)
            return
        seen = 0
        started = refused = False

        async def counting_receive() -> Message:
            # Past the limit: answer 413 now and tell the application the client went away,
            # so whatever reads the body (a form parser, a JSON decoder) stops there.
            nonlocal seen, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    refused = True
                    if not started:
                        await _too_large(send, limit, scope)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if refused:
                return  # the 413 is the response
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            if not refused:
                raise  # a refused request's app may fail on the cut body; the 413 stands


async def _too_large(send: Send, limit: int, scope: Scope) -> None:
    body = json.dumps({"error": "PayloadTooLarge", "detail": (
        f"the request body is over {limit:,} bytes: send less (CSV uploads: max_upload_bytes; "
        "JSON bodies: max_body_bytes)"), "request_id": request_id_of(scope)}).encode()
    await send({"type": "http.response.start", "status": 413, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
