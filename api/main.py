"""The FastAPI app: `create_app(settings)` builds it; `api.main:app` is the uvicorn entry point.

Migrations are not applied here: `bnlab serve` and the compose `migrate` service run them first.
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware

from api import errors
from api.auth import UNAUTHORIZED, Authenticate, Authenticator, bearer_scheme
from api.metrics import Metrics, RequestMetrics, RouteTemplates
from api.metrics import router as metrics_router
from api.middleware import BodyLimit, RequestId
from api.predictors import ExportCache, PredictorCache
from api.queue import JobQueue
from api.ratelimit import RateLimit, parse_rate
from api.routes import (
    checkpoints,
    dashboard,
    datasets,
    events,
    experiments,
    export,
    health,
    jobs,
    results,
    studies,
    visuals,
)
from api.settings import ApiSettings
from api.shared_buckets import limiters_for
from models.db import make_engine, session_factory

DESCRIPTION = """Train small PyTorch networks described as JSON, with BatchNorm wherever you
place it. Upload a CSV (`POST /v1/datasets`), submit a job (`POST /v1/jobs`), then read its
history, curves, model summary and checkpoints, and call its eval-mode model (`/predict`)."""


def create_app(settings: ApiSettings | None = None) -> FastAPI:
    settings = settings or ApiSettings()
    if settings.embedded:
        settings.prepare_dirs()
    engine = make_engine(settings.sqlalchemy_url)
    queue = JobQueue(settings)
    metrics = Metrics(session_factory(engine), settings)
    limiters = limiters_for(settings.redis_url, {kind: rate for kind, text in (
        ("submissions", settings.rate_limit_submissions),
        ("predictions", settings.rate_limit_predictions)) if (rate := parse_rate(text))})

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        queue.close()
        metrics.close()
        for limiter in limiters.values():
            limiter.close()
        engine.dispose()

    app = FastAPI(title="bnlab", version="0.1.0", description=DESCRIPTION, lifespan=lifespan)
    app.state.settings = settings
    app.state.engine = engine
    app.state.sessions = session_factory(engine)
    app.state.queue = queue
    app.state.metrics = metrics
    app.state.predictors = PredictorCache(settings.predictor_cache_size)
    app.state.exports = ExportCache(settings.export_cache_bytes)
    errors.install(app)
    # Outermost last: RequestId wraps everything (a 401, 413 or 429 carries an id too), CORS
    # answers preflights before authentication; a request is authenticated, then rate limited,
    # then its body capped, all before a route reads the body.
    app.add_middleware(BodyLimit, limit_for=settings.body_limit)
    app.add_middleware(RateLimit, limiters=limiters)
    app.add_middleware(Authenticate,
                       authenticator=Authenticator(settings.api_key_list, app.state.sessions))
    # Around authentication and the routes (both read the database), inside the layers below
    # that never do: an outage's 503 carries the request id, is counted, and has CORS headers.
    app.add_middleware(errors.DatabaseOutage)
    if settings.cors_origin_list:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origin_list,
                           allow_methods=["GET", "POST", "DELETE"],
                           allow_headers=["Authorization", "Content-Type", "Idempotency-Key",
                                          "If-None-Match", "Last-Event-ID"],
                           expose_headers=["ETag", "Location", "X-Request-ID", "Retry-After"])
    # Inside RequestId, so each access line and 401/413/429 is counted and carries the id.
    app.add_middleware(RequestMetrics, metrics=metrics, templates=RouteTemplates(app))
    app.add_middleware(RequestId)
    # Everything under /v1 needs the key when auth is on (Authenticate); this documents it.
    v1: dict[str, Any] = {"prefix": "/v1", "dependencies": [Depends(bearer_scheme)],
                          "responses": UNAUTHORIZED}
    app.include_router(health.router)
    app.include_router(metrics_router)
    app.include_router(jobs.router, **v1)
    app.include_router(events.router, **v1)
    app.include_router(results.router, **v1)
    app.include_router(results.compare_router, **v1)
    app.include_router(checkpoints.router, **v1)
    app.include_router(export.router, **v1)
    app.include_router(datasets.router, **v1)
    app.include_router(experiments.router, **v1)
    app.include_router(studies.router, **v1)
    app.include_router(visuals.router, **v1)
    app.include_router(dashboard.router)
    errors.document_errors(app)
    return app


def __getattr__(name: str) -> Any:
    # `uvicorn api.main:app` reads the attribute; building it lazily keeps `import api.main`
    # free of side effects (no settings read, no directories made) for tests and tools.
    if name == "app":
        globals()["app"] = application = create_app()
        # A server process: take what startup made (modules, the app) out of the collector's
        # sight. Otherwise every full collection walks those ~200k objects, a 120 ms pause
        # every few hundred requests and the p99 of the busier endpoints (4 ms once frozen).
        gc.collect()
        gc.freeze()
        return application
    raise AttributeError(name)
