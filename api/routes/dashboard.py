"""The browser dashboard: `/` serves api/static/index.html, `/static/<path>` the files beside it.

Plain files, no build step: ES modules, CSS and the vendored uPlot. Everything the page shows
comes from the /v1 API, so these routes hold no logic. Responses carry an ETag and
`Cache-Control: no-cache`, so a browser revalidates (304) instead of running a stale page
after an upgrade.
"""

from __future__ import annotations

import hashlib
import mimetypes
from pathlib import Path

from fastapi import APIRouter, Request, Response

from api.errors import NotFound

router = APIRouter(include_in_schema=False)

STATIC = Path(__file__).resolve().parent.parent / "static"
# Set explicitly: some systems' mime tables map .js to text/plain, which browsers refuse for
# ES modules.
TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
         ".html": "text/html; charset=utf-8", ".svg": "image/svg+xml", ".png": "image/png",
         ".json": "application/json", ".txt": "text/plain; charset=utf-8"}


def _file(path: Path, request: Request) -> Response:
    data = path.read_bytes()  # a few small files: read per request, no cache to invalidate
    etag = f'"{hashlib.sha256(data).hexdigest()[:24]}"'
    headers = {"ETag": etag, "Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
    if etag in {t.strip() for t in request.headers.get("if-none-match", "").split(",")}:
        return Response(status_code=304, headers=headers)
    media = TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0] or \
        "application/octet-stream"
    return Response(data, media_type=media, headers=headers)


@router.get("/")
def index(request: Request) -> Response:
    page = STATIC / "index.html"
    if not page.is_file():  # an install that left package data out
        raise NotFound("the dashboard's files are not installed (api/static); the API is at /docs")
    return _file(page, request)


@router.get("/static/{path:path}")
def static(path: str, request: Request) -> Response:
    target = (STATIC / path).resolve()
    # resolve() folds any ".." away: anything outside STATIC (or a folder) is not ours to serve
    if not target.is_relative_to(STATIC) or not target.is_file():
        raise NotFound(f"no static file '{path}'")
    return _file(target, request)
