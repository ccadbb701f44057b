"""The FastAPI app: `create_app(settings)` builds it; `api.main:app` is the uvicorn entry point.

Migrations are not applied here: `bnlab serve` and the compose `migrate` service run them first.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from api import errors
from api.middleware import BodyLimit, RequestId
from api.predictors import PredictorCache
from api.queue import JobQueue
from api.routes import checkpoints, datasets, events, experiments, health, jobs, results
from api.settings import ApiSettings
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

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        queue.close()
        engine.dispose()

    app = FastAPI(title="bnlab", version="0.1.0", description=DESCRIPTION, lifespan=lifespan)
    app.state.settings = settings
    app.state.engine = engine
    app.state.sessions = session_factory(engine)
    app.state.queue = queue
    app.state.predictors = PredictorCache(settings.predictor_cache_size)
    errors.install(app)
    # Outermost last: RequestId wraps everything (a 413 carries an id too), CORS answers
    # preflights before the body cap looks at them.
    app.add_middleware(BodyLimit, limit_for=settings.body_limit)
    if settings.cors_origin_list:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origin_list,
                           allow_methods=["GET", "POST", "DELETE"],
                           allow_headers=["Authorization", "Content-Type", "Idempotency-Key",
                                          "If-None-Match", "Last-Event-ID"],
                           expose_headers=["ETag", "Location", "X-Request-ID", "Retry-After"])
    app.add_middleware(RequestId)
    app.include_router(health.router)
    app.include_router(jobs.router, prefix="/v1")
    app.include_router(events.router, prefix="/v1")
    app.include_router(results.router, prefix="/v1")
    app.include_router(results.compare_router, prefix="/v1")
    app.include_router(checkpoints.router, prefix="/v1")
    app.include_router(datasets.router, prefix="/v1")
    app.include_router(experiments.router, prefix="/v1")
    return app


def __getattr__(name: str) -> Any:
    # `uvicorn api.main:app` reads the attribute; building it lazily keeps `import api.main`
    # free of side effects (no settings read, no directories made) for tests and tools.
    if name == "app":
        globals()["app"] = application = create_app()
        return application
    raise AttributeError(name)
