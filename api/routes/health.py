"""Liveness (the process answers) and readiness (database and broker reachable, and room on the
disk that holds a SQLite database or the embedded broker's folder)."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.engine import make_url

from api.schemas import Health
from api.settings import ApiSettings

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    return Health(status="ok")


def _check_database(request: Request) -> None:
    with request.app.state.engine.connect() as conn:
        conn.execute(text("SELECT 1"))


def _check_broker(request: Request) -> None:
    request.app.state.queue.check(request.app.state.settings.ready_timeout_s)


def local_folders(settings: ApiSettings) -> list[Path]:
    """Where this deployment writes to a local disk: the SQLite file's folder, the embedded
    broker's queue. A PostgreSQL + Redis deployment has none."""
    url = make_url(settings.sqlalchemy_url)
    folders = []
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        folders.append(Path(url.database).expanduser().parent)
    if settings.embedded:
        folders.append(settings.broker_folder)
    return folders


def _check_disk(request: Request) -> None:
    settings: ApiSettings = request.app.state.settings
    need = settings.ready_min_free_mb
    for folder in local_folders(settings):
        free = shutil.disk_usage(folder).free / 2**20
        if free < need:
            # Reads still work; jobs pause their writes (and submissions get 507) until then.
            raise OSError(f"the disk is full: {free:.1f} MiB free under {folder}, fewer than "
                          f"{need:g} MiB; free space there")


@router.get("/readyz", response_model=Health, responses={503: {"model": Health}})
async def readyz(request: Request) -> JSONResponse:
    checks: dict[str, str] = {}
    settings: ApiSettings = request.app.state.settings
    timeout = settings.ready_timeout_s
    probes: list[tuple[str, Callable[[Request], None]]] = [
        ("database", _check_database), ("broker", _check_broker)]
    if local_folders(settings):
        probes.append(("disk", _check_disk))
    for name, check in probes:
        try:
            # In a thread with a deadline, so a hung dependency cannot hang the probe.
            await asyncio.wait_for(asyncio.to_thread(check, request), timeout=timeout + 1)
            checks[name] = "ok"
        except Exception as exc:  # any failure means "not ready"; the reason goes to the body
            checks[name] = f"{type(exc).__name__}: {exc}"[:300] or type(exc).__name__
    ok = all(v == "ok" for v in checks.values())
    body = Health(status="ok" if ok else "unavailable", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ok else 503)
