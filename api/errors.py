"""Domain errors and the one translator that turns them into JSON.

Every error body is `{"error": <class name>, "detail": <message or list of messages>}`; nothing
from a traceback reaches a client. A database outage is a 503 DatabaseUnavailable with
Retry-After, wherever it is met (a route, or authentication's key lookup), never a 500.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.middleware import request_id_of
from models.datasets import DatasetError
from models.db.errors import driver_message, is_disk_full, is_transient
from models.spec import SpecError

log = logging.getLogger(__name__)


class ApiError(Exception):
    """Base of the errors routes raise; subclasses pick the status code."""

    status_code = 400

    def __init__(self, detail: str | list[str], *, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail if isinstance(detail, str) else "; ".join(detail))
        self.detail = detail
        self.headers = headers


class NotFound(ApiError):
    status_code = 404


class Conflict(ApiError):
    status_code = 409


class PayloadTooLarge(ApiError):
    status_code = 413


class InvalidInput(ApiError):
    """A well-formed request the domain refuses (unknown metric, bad inference rows, ...)."""

    status_code = 422


class NotReady(ApiError):
    status_code = 503


def error_body(error: str, detail: Any) -> dict[str, Any]:
    return {"error": error, "detail": detail}


def _json(status: int, error: str, detail: Any,
          headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(error, detail), status_code=status, headers=headers)


def _where(loc: tuple[Any, ...]) -> str:
    # ("body", "network", "layers", 0, "dense", "units") -> "body.network.layers[0].dense.units"
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def validation_messages(errors: Any) -> list[str]:
    """pydantic's error list as one readable line each, without echoing the input back."""
    return [f"{_where(tuple(e.get('loc', ())))}: {e.get('msg', 'invalid')}" for e in errors]


async def _api_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return _json(exc.status_code, type(exc).__name__, exc.detail, exc.headers)


async def _spec_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, SpecError)
    return _json(422, "SpecError", exc.errors)


async def _dataset_error(_: Request, exc: Exception) -> JSONResponse:
    return _json(422, "DatasetError", str(exc))


async def _request_validation(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return _json(422, "ValidationError", validation_messages(exc.errors()))


def _allowed_methods(request: Request) -> str:
    """Every method the API serves at this path, from its OpenAPI paths (Starlette's own 405
    names only the first matching route's, e.g. POST alone for GET + POST /v1/jobs)."""
    methods: set[str] = set()
    for template, operations in request.app.openapi().get("paths", {}).items():
        pattern = "^" + re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template)) + "$"
        if re.match(pattern, request.url.path):
            methods |= {m.upper() for m in operations if m != "parameters"}
    return ", ".join(sorted(methods))


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    names = {404: "NotFound", 405: "MethodNotAllowed"}
    headers = dict(getattr(exc, "headers", None) or {})
    if exc.status_code == 405:
        headers["Allow"] = _allowed_methods(request)
    return _json(exc.status_code, names.get(exc.status_code, "HTTPError"), exc.detail,
                 headers or None)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    # Logged with its traceback and request id here; the client only learns that it was not
    # its fault, and the id to quote. This handler runs outside the middleware stack, so the
    # X-Request-ID header is set here.
    rid = request_id_of(request.scope)
    # The request's log context has ended out here: its id goes on the record itself.
    log.exception("unhandled error on %s %s (request %s)", request.method, request.url.path,
                  rid, exc_info=exc, extra={"request_id": rid})
    body = {**error_body("InternalError", "the server failed to handle this request; it has "
                         "been logged under this request id"), "request_id": rid}
    return JSONResponse(body, status_code=500,
                        headers={"X-Request-ID": rid} if rid is not None else None)


# What a client is told to wait during a database outage: a restart or failover takes seconds.
DATABASE_RETRY_AFTER_S = 5


def database_unavailable(scope: Scope, exc: BaseException) -> JSONResponse:
    """The 503 for a database outage (507 when its disk is full): the driver's first line,
    never the SQL, its parameters or a traceback; logged as one warning line (an outage is not
    a bug to trace). Nothing was written: the transaction never committed."""
    rid = request_id_of(scope)
    reason = driver_message(exc)[:300]
    if is_disk_full(exc):
        status, error = 507, "InsufficientStorage"
        detail = (f"the server's disk is full ({reason}); nothing was stored: retry once "
                  "space is freed")
    else:
        status, error = 503, "DatabaseUnavailable"
        detail = f"the database is unreachable ({reason}); retry shortly"
    log.warning("%s on %s %s (request %s): %s", error, scope.get("method"), scope.get("path"),
                rid, reason, extra={"request_id": rid})
    return JSONResponse({**error_body(error, detail), "request_id": rid}, status_code=status,
                        headers={"Retry-After": str(DATABASE_RETRY_AFTER_S)})


class DatabaseOutage:
    """Plain ASGI: a transient database error raised below it (a route, a dependency, or a
    middleware such as authentication's key lookup) becomes the 503. Exception handlers
    cannot do that for middleware: an error raised there reaches only the server error handler,
    a 500 that is re-raised to the server, which logs its traceback. A response already
    under way (an event stream) cannot change its status: that error goes on as before."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watched_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watched_send)
        except DBAPIError as exc:
            if started or not is_transient(exc):
                raise  # a bad statement is a bug: the unexpected-error handler traces it
            await database_unavailable(scope, exc)(scope, receive, send)


class ErrorOut(BaseModel):
    """Every error body (and the schema /openapi.json documents for each error status)."""

    error: str = Field(description="the kind, e.g. NotFound, SpecError, RateLimited")
    detail: str | list[str] = Field(description="what to change, one message per problem")
    request_id: str | None = Field(default=None, description="on 5xx (and some 4xx): quote it")


SUBMISSIONS = ("/v1/jobs", "/v1/experiments", "/v1/studies", "/v1/datasets")


def document_errors(app: FastAPI) -> None:
    """Make /openapi.json document the errors each /v1 route really answers, with the ErrorOut
    body (FastAPI would document its own 422 shape, which this API never sends)."""
    default_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = default_openapi()
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components["ErrorOut"] = ErrorOut.model_json_schema()
        body = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorOut"}}}
        for path, operations in schema.get("paths", {}).items():
            if not path.startswith("/v1"):
                continue
            for method, op in operations.items():
                codes = {"422": "invalid parameters or body; `detail` lists what to change",
                         "500": "an unexpected failure; the body names the request id",
                         "503": "the database is unreachable (DatabaseUnavailable): retry "
                                "after Retry-After seconds"}
                if "{" in path or path == "/v1/curves.png":
                    codes["404"] = "no such id (or another key's)"
                if path.endswith(("/cancel", "/retry")) or method == "delete":
                    codes["409"] = "the object's state does not allow it; `detail` says why"
                if "requestBody" in op:
                    codes["400"] = "the body could not be parsed (not JSON, broken multipart)"
                submission = method == "post" and path in SUBMISSIONS
                if submission or path.endswith(("/predict", "/boundary", "/export")):
                    codes["429"] = ("rate limited (or, for submissions, too many active jobs): "
                                    "wait Retry-After seconds")
                responses = op.setdefault("responses", {})
                for code, text in codes.items():
                    doc = responses.setdefault(code, {"description": text})
                    doc["content"] = body
        for unused in ("HTTPValidationError", "ValidationError"):
            components.pop(unused, None)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def install(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(SpecError, _spec_error)
    app.add_exception_handler(DatasetError, _dataset_error)
    app.add_exception_handler(RequestValidationError, _request_validation)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
