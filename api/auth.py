"""API keys: who is calling, and whether they may.

Authentication is on when BNLAB_API_KEYS lists keys or once any key was made with
`bnlab keys create` (a revoked key still counts, so revoking the last one does not open the
server). Then every request under /v1 needs `Authorization: Bearer <key>`; the health checks,
the dashboard page and the API docs (/, /static, /docs, /openapi.json) stay public: they hold
no data, and the dashboard asks for the key itself.

A key's owner id (what its jobs, experiments and datasets are stored under) is the key row's
id, or "env:<first 8 hex of its sha256>" for a BNLAB_API_KEYS key: stable, and not the key.
With authentication off every request is "anonymous" and sees everything "anonymous" owns.

Only sha256(key) is stored or held: API keys are long random strings (256 bits from
`secrets`), so a fast unsalted hash is enough; a slow password hash defends low-entropy
secrets, which these are not, and would cost every request.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from typing import Any

import anyio
from fastapi.security import HTTPBearer
from sqlalchemy.orm import Session, sessionmaker
from starlette.types import ASGIApp, Receive, Scope, Send

from api.errors import InvalidInput
from api.middleware import request_id_of
from models.db import repository as repo
from models.db.tables import ANONYMOUS
from models.spec import JobSpec, UploadedDataset

KEY_PREFIX = "bnlab_"
PROTECTED_PREFIX = "/v1"


@dataclass(frozen=True)
class Principal:
    """The caller: `owner` is what it creates rows under and the only rows it can see."""

    owner: str
    key_id: str | None = None  # None: anonymous (auth off)


ANONYMOUS_PRINCIPAL = Principal(ANONYMOUS)


class AuthFailure(Exception):
    """Why a request is refused (401); the message says what to send."""


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    """A fresh API key: "bnlab_" and 43 url-safe characters (256 random bits)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def env_owner(key_hash: str) -> str:
    return f"env:{key_hash[:8]}"


def is_protected(path: str) -> bool:
    return path == PROTECTED_PREFIX or path.startswith(PROTECTED_PREFIX + "/")


class Authenticator:
    """Checks a request's Authorization header against BNLAB_API_KEYS (hashed at start) and
    the api_key table."""

    def __init__(self, env_keys: list[str], sessions: sessionmaker[Session]) -> None:
        self._env = {hash_key(k): env_owner(hash_key(k)) for k in env_keys}
        self._sessions = sessions
        self._db_keys_exist = False  # sticky: keys are revoked, never deleted

    def enabled(self, session: Session) -> bool:
        if self._env or self._db_keys_exist:
            return True
        self._db_keys_exist = repo.any_api_key(session)
        return self._db_keys_exist

    def authenticate(self, authorization: str | None) -> Principal:
        """The principal, or AuthFailure. Runs a query or two: call it off the event loop."""
        with self._sessions() as session:
            if not self.enabled(session):
                return ANONYMOUS_PRINCIPAL
            if not authorization:
                raise AuthFailure("this server requires an API key: send "
                                  "`Authorization: Bearer <key>`")
            scheme, _, key = authorization.strip().partition(" ")
            key = key.strip()
            if scheme.lower() != "bearer" or not key:
                raise AuthFailure("the Authorization header must be `Bearer <key>`")
            digest = hash_key(key)
            # Compare against every env key, each in constant time.
            owner = None
            for known, env in self._env.items():
                if hmac.compare_digest(known, digest):
                    owner = env
            if owner is not None:
                return Principal(owner, key_id=owner)
            row = repo.find_api_key(session, key_hash=digest)
            if row is not None and hmac.compare_digest(row.key_hash, digest):
                return Principal(row.id, key_id=row.id)
        raise AuthFailure("unknown or revoked API key")


class Authenticate:
    """Plain ASGI: every request under /v1 gets its principal in `scope["state"]`, or a 401
    before any route, body parser or rate limit sees it."""

    def __init__(self, app: ASGIApp, authenticator: Authenticator) -> None:
        self.app = app
        self.authenticator = authenticator

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_protected(scope["path"]):
            await self.app(scope, receive, send)
            return
        header = dict(scope.get("headers") or []).get(b"authorization")
        try:
            principal = await anyio.to_thread.run_sync(
                self.authenticator.authenticate,
                header.decode("latin-1") if header is not None else None)
        except AuthFailure as exc:
            await _unauthorized(send, scope, str(exc))
            return
        scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)


async def _unauthorized(send: Send, scope: Scope, detail: str) -> None:
    body = json.dumps({"error": "Unauthorized", "detail": detail + (
        " (keys come from BNLAB_API_KEYS or `bnlab keys create`)"),
        "request_id": request_id_of(scope)}).encode()
    await send({"type": "http.response.start", "status": 401, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"www-authenticate", b'Bearer realm="bnlab"')]})
    await send({"type": "http.response.body", "body": body})


def require_visible_dataset(session: Session, spec: JobSpec, owner: str) -> None:
    """A spec may only train on an upload its caller owns: another key's dataset id is
    answered exactly like a missing one."""
    ds = spec.dataset
    if isinstance(ds, UploadedDataset) and \
            repo.get_dataset(session, dataset_id=ds.id, owner=owner) is None:
        raise InvalidInput([f"dataset.id: dataset id '{ds.id}' not found: upload it with "
                            "POST /v1/datasets"])


# In the OpenAPI schema only (Authenticate does the checking): /docs gets an Authorize button
# and schema-driven clients know to send the header.
bearer_scheme = HTTPBearer(auto_error=False, scheme_name="ApiKey", description=(
    "an API key from BNLAB_API_KEYS or `bnlab keys create`; needed under /v1 when the "
    "server has keys"))
UNAUTHORIZED: dict[int | str, dict[str, Any]] = {
    401: {"description": "authentication is on and the API key is missing, unknown or revoked"}}
