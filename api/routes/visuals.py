"""What the dashboard draws beyond curves: a job's decision boundary and its BN layers over epochs.

The boundary is one eval-mode forward pass over a grid, through the predictor cache that
`/predict` fills (same key, same predictor), so redrawing while a job trains reloads weights
only when a newer checkpoint exists. The BN series are read from the epoch rows' extras, where
the trainer leaves each BN layer's summary every epoch; no checkpoint is opened for them.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.orm import Session

from api.deps import JobDep, PredictorsDep, SessionDep
from api.errors import InvalidInput, NotFound
from api.resolve import uploaded_table
from api.routes.checkpoints import checkpoint_meta, predictor_for
from api.routes.jobs import job_etag, not_modified
from api.routes.results import finite
from api.schemas import CheckpointRef
from models.datasets import Table, generate
from models.db import repository as repo
from models.db.tables import Job
from models.spec import JobSpec, UploadedDataset
from models.splits import split

router = APIRouter(prefix="/jobs", tags=["visuals"])

MAX_POINTS = 2000  # data points sent with the boundary; a fixed subsample beyond
PADDING = 0.1  # of each axis's data range, on both sides
STATS = ("running_mean", "running_var", "gamma", "beta")


# ---------------------------------------------------------------------------- response shapes


class PointsOut(BaseModel):
    x: list[float]
    y: list[float]
    label: list[int]  # class index
    split: list[Literal["train", "val"]]


class BoundaryOut(BaseModel):
    checkpoint: CheckpointRef
    features: list[str]
    classes: list[str]
    x: list[float]
    y: list[float]
    probabilities: list[list[float | None]] | None = None  # binary only: P(class index 1)
    predicted: list[list[int]]
    confidence: list[list[float | None]]
    points: PointsOut


class Series(BaseModel):
    mean: list[float | None]
    min: list[float | None]
    max: list[float | None]


class BnLayerOut(BaseModel):
    name: str
    module: int
    epochs: list[int]
    running_mean: Series | None
    running_var: Series | None
    gamma: Series | None  # null without affine parameters
    beta: Series | None


class BnOut(BaseModel):
    layers: list[BnLayerOut]


# ---------------------------------------------------------------------------- boundary


def _table(session: Session, job: Job, spec: JobSpec) -> Table:
    ds = spec.dataset
    if not isinstance(ds, UploadedDataset):
        return generate(ds)  # pure; cheap next to the forward pass for the row limits we allow
    row = repo.get_dataset(session, dataset_id=ds.id)
    if row is None:
        raise NotFound(f"job '{job.id}' trained on dataset '{ds.id}', which was deleted: "
                       "its decision boundary cannot be drawn without the data")
    return uploaded_table(session, row, ds.label_column)


def _axis(values: np.ndarray, n: int) -> np.ndarray:
    lo, hi = float(values.min()), float(values.max())
    pad = (hi - lo) * PADDING or 1.0  # a constant feature still gets a visible range
    return np.linspace(lo - pad, hi + pad, n, dtype=np.float64)


def _grid(a: np.ndarray) -> list[Any]:
    """Rounded to 4 decimals (pixels need no more); NaN/inf (a diverged model) -> null."""
    a = np.round(a.astype(np.float64), 4)
    if np.isfinite(a).all():
        return a.tolist()  # type: ignore[no-any-return]
    return [[v if math.isfinite(v) else None for v in row] for row in a.tolist()]


def _points(table: Table, spec: JobSpec) -> dict[str, list[Any]]:
    t = spec.training
    _, val_idx = split(table.y, validation_split=t.validation_split, how=t.split, seed=t.seed)
    is_val = np.zeros(table.n_rows, dtype=bool)
    is_val[val_idx] = True
    rows = np.arange(table.n_rows)
    if table.n_rows > MAX_POINTS:  # the same rows on every request
        rows = np.sort(np.random.default_rng(0).choice(table.n_rows, MAX_POINTS, replace=False))
    return {"x": table.X[rows, 0].astype(np.float64).tolist(),
            "y": table.X[rows, 1].astype(np.float64).tolist(),
            "label": table.y[rows].tolist(),
            "split": ["val" if v else "train" for v in is_val[rows]]}


@router.get("/{job_id}/boundary", response_class=JSONResponse, responses={
    200: {"model": BoundaryOut},
    304: {"description": "If-None-Match holds the current ETag (same checkpoint)"},
    404: {"description": "no such job, no such checkpoint yet, or its dataset was deleted"},
    422: {"description": "the dataset does not have exactly 2 features"}})
def get_boundary(
    job: JobDep, session: SessionDep, predictors: PredictorsDep, request: Request,
    checkpoint: Annotated[Literal["best", "last"], Query(
        description="'last' follows training; 'best' is the best epoch so far")] = "last",
    resolution: Annotated[int, Query(ge=10, le=200, description="grid points per axis")] = 80,
) -> Response:
    """Eval-mode class probabilities on a resolution x resolution grid over the data's bounding
    box (+10% each side), with the data points (train/val) to draw on top. Grids are indexed
    [row = y][col = x]. `probabilities` (P of class index 1) is sent for 2 classes only;
    `predicted` and `confidence` (max probability) always."""
    spec = JobSpec.model_validate(job.spec)
    table = _table(session, job, spec)  # uploads come from the parsed-table cache
    if table.n_features != 2:
        raise InvalidInput([f"the decision boundary needs 2 features; this dataset has "
                            f"{table.n_features}"])
    meta = checkpoint_meta(session, job, checkpoint)
    # Checkpoint and data are immutable: the tag names everything the body depends on.
    etag = f'"{meta.sha256[:32]}-{resolution}"'
    if (unchanged := not_modified(request, etag)) is not None:
        return unchanged
    import torch  # on first use, as in /predict

    from models.network import apply_head

    predictor, ref = predictor_for(session, job, meta, predictors)
    etag = f'"{ref.sha256[:32]}-{resolution}"'

    xs, ys = _axis(table.X[:, 0], resolution), _axis(table.X[:, 1], resolution)
    gx, gy = np.meshgrid(xs, ys)  # (rows = y, cols = x)
    grid = np.stack([gx.ravel(), gy.ravel()], axis=1).astype(np.float32)
    with torch.inference_mode():  # one batched pass; eval mode, so rows are independent
        probs = apply_head(predictor.model(torch.from_numpy(grid).to(predictor.device)))
        probs_np = probs.cpu().numpy().reshape(resolution, resolution, -1)
    body: dict[str, Any] = {
        "checkpoint": ref.model_dump(), "features": list(table.feature_names),
        "classes": list(predictor.classes), "x": xs.tolist(), "y": ys.tolist()}
    if probs_np.shape[2] == 2:
        body["probabilities"] = _grid(probs_np[:, :, 1])
    body["predicted"] = probs_np.argmax(axis=2).tolist()
    body["confidence"] = _grid(probs_np.max(axis=2))
    body["points"] = _points(table, spec)
    return JSONResponse(body, headers={"ETag": etag, "Cache-Control": "no-cache"})


# ---------------------------------------------------------------------------- batchnorm



@router.get("/{job_id}/bn", response_model=BnOut,
            responses={304: {"description": "If-None-Match holds the current ETag"}})
def get_bn(job: JobDep, session: SessionDep, request: Request, response: Response) -> Any:
    """Per BN layer, over epochs: mean/min/max across channels of its running mean and
    variance, and of gamma and beta (null without affine parameters). Empty without BN."""
    etag = job_etag(job, "bn")
    if (unchanged := not_modified(request, etag)) is not None:
        return unchanged
    layers: dict[int, dict[str, Any]] = {}  # by module index, in first-seen order
    present: set[tuple[int, str]] = set()  # (module, statistic) recorded at least once
    for row in repo.history(session, job_id=job.id):
        for entry in (row.extras or {}).get("bn") or []:
            layer = layers.setdefault(int(entry["module"]), {
                "name": entry["name"], "module": int(entry["module"]), "epochs": [],
                **{s: {"mean": [], "min": [], "max": []} for s in STATS}})
            layer["epochs"].append(row.epoch)
            for s in STATS:
                summary = entry.get(s) or {}
                if summary:
                    present.add((layer["module"], s))
                for key in ("mean", "min", "max"):
                    layer[s][key].append(finite(summary.get(key)))
    for layer in layers.values():
        for s in STATS:  # a statistic the layer never had (gamma/beta without affine)
            if (layer["module"], s) not in present:
                layer[s] = None
    response.headers["ETag"] = etag
    response.headers["Cache-Control"] = "no-cache"
    return BnOut.model_validate({"layers": list(layers.values())})
