"""What a job produced so far: Keras-shaped history (JSON/CSV), curves PNG, model summary."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response

from api import plots
from api.deps import (
    MAX_EPOCH_NUMBER,
    JobDep,
    JobId,
    PrincipalDep,
    SessionDep,
    SettingsDep,
    get_job_or_404,
    one_hop,
)
from api.errors import InvalidInput, NotFound
from api.http_cache import history_cache, job_etag, not_modified
from api.plots import PNG
from api.presenters import COLUMNS, EXTRA_SERIES, PLOTTABLE, finite
from api.resolve import dataset_shape
from api.schemas import CheckpointRef, ModelOut
from models.db import repository as repo
from models.db.tables import Job
from models.image_data import builtin_classes
from models.resolution import resolve_network
from models.spec import JobSpec, UploadedDataset

router = APIRouter(prefix="/jobs", tags=["results"])


def history_of(session: SessionDep, job: Job, since: int = 0) -> dict[str, list[Any]]:
    """{"epoch": [...], "loss": [...], ...}; NaN/inf become None (JSON null)."""
    rows = repo.history_values(session, job_id=job.id, since=since, extras=EXTRA_SERIES)
    out: dict[str, list[Any]] = {"epoch": [r[0] for r in rows]}
    for i, col in enumerate(COLUMNS, start=1):  # COLUMNS follow epoch in each row
        out[col] = [finite(r[i]) for r in rows]
    for i, name in enumerate(EXTRA_SERIES, start=1 + len(COLUMNS)):
        values = [r[i] for r in rows]
        if any(v is not None for v in values):
            out[name] = [finite(v) for v in values]
    return out


@router.get("/{job_id}/history", responses={
    200: {"content": {"text/csv": {}}},
    304: {"description": "If-None-Match holds the current ETag"}})
def get_history(
    job_id: JobId, request: Request,
    since: Annotated[int, Query(ge=0, le=MAX_EPOCH_NUMBER,
                                description="only epochs after this one")] = 0,
    format: Annotated[Literal["json", "csv"], Query()] = "json",
) -> Any:
    """Keras's `history.history` shape, one list per metric indexed like `epoch` (1-based)."""
    # One threadpool hop with its own session (see deps.one_hop), the JSON encoded here
    # (json.dumps of the lists, not FastAPI's jsonable_encoder walk over every float).
    cache = history_cache(request)
    with one_hop(request) as (session, principal):
        job = get_job_or_404(job_id, session, principal)
        # Every stored (or truncated) epoch moves the job row's updated_at: the tag is known
        # before the rows are read.
        etag = job_etag(job, since, format)
        if (unchanged := not_modified(request, etag)) is not None:
            return unchanged
        headers = {"ETag": etag, "Cache-Control": "no-cache"}
        if format == "json" and (body := cache.get(etag)) is not None:
            return Response(body, media_type="application/json", headers=headers)
        history = history_of(session, job, since)
    if format == "json":
        body = json.dumps(history, separators=(",", ":"), allow_nan=False).encode()
        cache.put(etag, body)
        return Response(body, media_type="application/json", headers=headers)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    keys = list(history)
    writer.writerow(keys)
    for row in zip(*(history[k] for k in keys), strict=True):
        writer.writerow(["" if v is None else v for v in row])
    return Response(buf.getvalue(), media_type="text/csv", headers={
        **headers, "Content-Disposition": f'attachment; filename="{job.id}-history.csv"'})


def parse_metrics(metrics: str) -> list[str]:
    names = [m.strip() for m in metrics.split(",") if m.strip()]
    allowed = PLOTTABLE + EXTRA_SERIES
    unknown = [m for m in names if m not in allowed]
    if unknown or not names:
        raise InvalidInput([f"metrics: unknown metric(s) {unknown or [metrics]}; choose from "
                            f"{', '.join(allowed)} (comma-separated)"])
    return names


@router.get("/{job_id}/curves.png", response_class=Response, responses=PNG)
def get_curves(
    job: JobDep, session: SessionDep,
    metrics: Annotated[str, Query(description="comma-separated")] =
        "loss,val_loss,accuracy,val_accuracy",
) -> Response:
    """Training curves as a PNG (one panel per metric family)."""
    names = parse_metrics(metrics)
    history = history_of(session, job)
    label = job.name or job.id
    png = plots.curves_png({label: (history["epoch"], history)}, names)
    return Response(png, media_type="image/png")


compare_router = APIRouter(tags=["results"])


@compare_router.get("/curves.png", response_class=Response, responses=PNG)
def compare_curves(
    session: SessionDep, principal: PrincipalDep,
    jobs: Annotated[str, Query(description="comma-separated job ids (up to 20), e.g. the "
                                           "notebook's plain and bn jobs")],
    metrics: Annotated[str, Query(description="comma-separated")] = "val_accuracy",
) -> Response:
    """Several jobs' curves overlaid on one figure, labelled by job name."""
    names = parse_metrics(metrics)
    ids = [j.strip() for j in jobs.split(",") if j.strip()]
    if not ids or len(ids) > 20:
        raise InvalidInput(["jobs: give 1 to 20 comma-separated job ids"])
    series: dict[str, tuple[list[int], dict[str, list[Any]]]] = {}
    for job_id in ids:
        job = repo.get_job(session, job_id=job_id, owner=principal.owner)
        if job is None:
            raise NotFound(f"no job with id '{job_id}': list jobs with GET /v1/jobs")
        history = history_of(session, job)
        label = job.name or job.id
        if label in series:
            label = f"{label} ({job.id})"
        series[label] = (history["epoch"], history)
    return Response(plots.curves_png(series, names), media_type="image/png")


def spec_summary(session: SessionDep, job: Job, data_dir: Path | None = None
                 ) -> dict[str, Any]:
    """The summary from the spec alone (no torch): what the model is before a checkpoint."""
    spec = JobSpec.model_validate(job.spec)
    input_shape, n_classes, _, dataset = dataset_shape(session, spec, data_dir=data_dir)
    net = resolve_network(spec.network, input_shape=input_shape, n_classes=n_classes)
    rows = net.summary()
    trainable = sum(r.trainable for r in rows)
    non_trainable = sum(r.non_trainable for r in rows)
    # Built-in data: generators' class ids are the names; the real datasets have theirs.
    classes: list[str] | None = None
    if not isinstance(spec.dataset, UploadedDataset):
        classes = builtin_classes(spec.dataset, data_dir)
    if dataset is not None:
        same_label = getattr(spec.dataset, "label_column", None) in (None, dataset.label_column)
        classes = list(dataset.classes) if same_label else None
    return {
        "layers": [{"name": r.name, "type": r.type, "output_shape": list(r.output_shape),
                    "trainable": r.trainable, "non_trainable": r.non_trainable} for r in rows],
        "totals": {"total": trainable + non_trainable, "trainable": trainable,
                   "non_trainable": non_trainable},
        "head": net.head, "loss": net.loss, "classes": classes,
    }


@router.get("/{job_id}/model", response_model=ModelOut)
def get_model(job: JobDep, session: SessionDep, settings: SettingsDep) -> ModelOut:
    """Layers, output shapes, trainable and non-trainable counts, and each BN layer's running
    statistics from the best checkpoint (else the last). Before the first checkpoint the
    summary comes from the spec and `checkpoint` is null."""
    ckpt = repo.get_checkpoint(session, job_id=job.id, which="best") or \
        repo.get_checkpoint(session, job_id=job.id, which="last")
    if ckpt is None:
        return ModelOut(checkpoint=None, **spec_summary(session, job, settings.data_dir))
    from models.inference import model_report  # torch loads on first use, not at import

    report = model_report(ckpt.content)
    report.pop("kind", None)
    report.pop("epoch", None)  # both are in `checkpoint`
    ref = CheckpointRef(kind=ckpt.kind, epoch=ckpt.epoch, sha256=ckpt.sha256)
    return ModelOut(checkpoint=ref, **report)
