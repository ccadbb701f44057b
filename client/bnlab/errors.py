"""Typed errors: one class per kind of failure, each carrying what the server said."""

from __future__ import annotations

import builtins
from typing import Any

import httpx


class BnlabError(Exception):
    """Base of every error the client raises."""


# Shadows the builtin inside this package on purpose: `bnlab.ConnectionError` is the name users
# expect; it is not a subclass of the builtin (that would catch socket errors from elsewhere).
class ConnectionError(BnlabError):
    """The server could not be reached, or the connection broke (after the retries)."""


class Timeout(ConnectionError):
    """No answer within the client's timeout (after the retries)."""


class WaitTimeout(BnlabError, builtins.TimeoutError):
    """`wait(timeout=...)` ran out before the job or experiment finished."""


class APIError(BnlabError):
    """The server answered with an error status. `detail` is its message (a string, or a list
    of one message per problem for validation errors); `error` its kind (e.g. "SpecError")."""

    status_code: int = 0

    def __init__(self, status_code: int, error: str, detail: Any,
                 response: httpx.Response | None = None) -> None:
        self.status_code = status_code
        self.error = error
        self.detail = detail
        self.response = response
        super().__init__(f"{status_code} {error}: {self.message}")

    @property
    def messages(self) -> list[str]:
        if isinstance(self.detail, list):
            return [str(d) for d in self.detail]
        return [str(self.detail)]

    @property
    def message(self) -> str:
        return "; ".join(self.messages)


class BadRequest(APIError):
    """400."""


class AuthenticationError(APIError):
    """401 or 403: check BNLAB_API_KEY."""


class NotFound(APIError):
    """404: no such job, dataset, experiment or checkpoint."""


class Conflict(APIError):
    """409: e.g. cancelling a finished job, an Idempotency-Key reused with another body."""


class PayloadTooLarge(APIError):
    """413: an upload over the server's limit."""


class ValidationError(APIError):
    """422: the request cannot run; `messages` lists what to change, one per problem."""


class RateLimited(APIError):
    """429 (after the retries); `retry_after` is the server's hint in seconds, if it gave one."""

    def __init__(self, status_code: int, error: str, detail: Any,
                 response: httpx.Response | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(status_code, error, detail, response)
        self.retry_after = retry_after


class ServerError(APIError):
    """5xx (after the retries)."""


_BY_STATUS: dict[int, type[APIError]] = {
    400: BadRequest, 401: AuthenticationError, 403: AuthenticationError, 404: NotFound,
    409: Conflict, 413: PayloadTooLarge, 422: ValidationError, 429: RateLimited,
}


def error_for(response: httpx.Response, retry_after: float | None = None) -> APIError:
    """The typed error for an error response (`{"error": ..., "detail": ...}` bodies)."""
    code = response.status_code
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and "detail" in body:
        error, detail = str(body.get("error") or "HTTPError"), body["detail"]
    else:
        error, detail = "HTTPError", response.text[:500] or response.reason_phrase
    if code == 429:
        return RateLimited(code, error, detail, response, retry_after)
    cls = _BY_STATUS.get(code, ServerError if code >= 500 else APIError)
    return cls(code, error, detail, response)
