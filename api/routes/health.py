"""Liveness (the process answers) and readiness (database and broker reachable)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text

from api.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    return Health(status="ok")


def _check_database(request: Request) -> None:
    with request.app.state.engine.connect() as conn:
        conn.execute(text("SELECT 1"))


def _check_broker(request: Request) -> None:
    request.app.state.queue.check(request.app.state.settings.ready_timeout_s)


@router.get("/readyz", response_model=Health, responses={503: {"model": Health}})
async def readyz(request: Request) -> JSONResponse:
    checks: dict[str, str] = {}
    timeout = request.app.state.settings.ready_timeout_s
    for name, check in (("database", _check_database), ("broker", _check_broker)):
        try:
            # In a thread with a deadline, so a hung dependency cannot hang the probe.
            await asyncio.wait_for(asyncio.to_thread(check, request), timeout=timeout + 1)
            checks[name] = "ok"
        except Exception as exc:  # any failure means "not ready"; the reason goes to the body
            checks[name] = f"{type(exc).__name__}: {exc}"[:300] or type(exc).__name__
    ok = all(v == "ok" for v in checks.values())
    body = Health(status="ok" if ok else "unavailable", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ok else 503)
