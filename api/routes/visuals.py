"""What the dashboard draws beyond curves: a job's decision boundary, its validation predictions
(confusion matrix, image tiles) and its BN layers over epochs.

The boundary is one eval-mode forward pass over a grid, through the predictor cache that
`/predict` fills (same key, same predictor), so redrawing while a job trains reloads weights
only when a newer checkpoint exists. /validation is one eval-mode pass over the job's
validation rows (the trainer's split, recomputed from the spec), through the same cache. The BN
series are read from the epoch rows' extras, where the trainer leaves each BN layer's summary
every epoch; no checkpoint is opened for them.
"""

from __future__ import annotations

import base64
import math
import struct
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.orm import Session

from api.deps import JobDep, PredictorsDep, SessionDep, SettingsDep
from api.errors import InvalidInput, NotFound
from api.http_cache import job_etag, not_modified
from api.predictors import checkpoint_meta, predictor_for
from api.presenters import finite
from api.resolve import uploaded_table
from api.schemas import CheckpointRef
from models.datasets import DatasetError, Table, generate, load_table
from models.db import repository as repo
from models.db.tables import Job
from models.spec import DataDirDataset, JobSpec, UploadedDataset
from models.splits import split

if TYPE_CHECKING:  # torch loads on the first forward pass, not at import
    from models.inference import Predictor

router = APIRouter(prefix="/jobs", tags=["visuals"])

MAX_POINTS = 2000  # data points sent with the boundary; a fixed subsample beyond
PADDING = 0.1  # of each axis's data range, on both sides
STATS = ("running_mean", "running_var", "gamma", "beta")
MAX_IMAGES = 256  # validation images one /validation answer may carry
CHUNK_VALUES = 1 << 20  # input values per forward pass over the validation rows


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


class ValidationImage(BaseModel):
    row: int  # the row's index in the dataset
    label: int  # true class index
    predicted: int  # eval-mode argmax
    confidence: float | None  # its probability
    png: str  # base64 PNG: W x H grey (one channel), RGB (three), else channels side by side


class ValidationImages(BaseModel):
    shape: list[int]  # one image's [C, H, W]
    layout: Literal["grey", "rgb", "channels"]
    scale: list[float]  # [lo, hi]: the raw values drawn as 0 and 255 (the dataset's range)
    items: list[ValidationImage]


class ValidationOut(BaseModel):
    checkpoint: CheckpointRef
    classes: list[str]
    input_shape: list[int]
    is_image: bool
    n_val: int
    correct: int
    accuracy: float
    confusion: list[list[int]]  # [true class][predicted class]
    images: ValidationImages | None  # image datasets only


class Series(BaseModel):
    mean: list[float | None]
    min: list[float | None]
    max: list[float | None]
    # ?values=true: per epoch, each channel's (feature's) value; null for an epoch or a layer
    # with more than 64 channels (the trainer keeps summaries only)
    values: list[list[float | None] | None] | None = None


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


def _table(session: Session, job: Job, spec: JobSpec, data_dir: Path | None = None,
           what: str = "its decision boundary cannot be drawn") -> Table:
    ds = spec.dataset
    if isinstance(ds, DataDirDataset):
        try:
            return load_table(ds, content=None, data_dir=data_dir)
        except DatasetError as exc:
            raise NotFound(f"job '{job.id}' trained on '{ds.name}' from the data directory, "
                           f"which cannot be read now ({exc}): {what} without the data") from None
    if not isinstance(ds, UploadedDataset):
        return generate(ds)  # pure; cheap next to the forward pass for the row limits we allow
    row = repo.get_dataset(session, dataset_id=ds.id)
    if row is None:
        raise NotFound(f"job '{job.id}' trained on dataset '{ds.id}', which was deleted: "
                       f"{what} without the data")
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
    settings: SettingsDep,
    checkpoint: Annotated[Literal["best", "last"], Query(
        description="'last' follows training; 'best' is the best epoch so far")] = "last",
    resolution: Annotated[int, Query(ge=10, le=200, description="grid points per axis")] = 80,
) -> Response:
    """Eval-mode class probabilities on a resolution x resolution grid over the data's bounding
    box (+10% each side), with the data points (train/val) to draw on top. Grids are indexed
    [row = y][col = x]. `probabilities` (P of class index 1) is sent for 2 classes only;
    `predicted` and `confidence` (max probability) always."""
    spec = JobSpec.model_validate(job.spec)
    table = _table(session, job, spec, settings.data_dir)  # uploads: the parsed-table cache
    if table.is_image:
        shape = " x ".join(map(str, table.input_shape))
        raise InvalidInput([f"the decision boundary needs 2 features; this dataset holds "
                            f"images ({shape})"])
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


# ---------------------------------------------------------------------------- validation


def _png(pixels: np.ndarray) -> bytes:
    """uint8 (H, W) grey or (H, W, 3) RGB as a PNG file (no filter, zlib): tiles are tiny."""
    h, w = pixels.shape[:2]
    kind = 2 if pixels.ndim == 3 else 0  # colour type: truecolour or greyscale
    rows = np.concatenate([np.zeros((h, 1), np.uint8), pixels.reshape(h, -1)], axis=1)

    def chunk(tag: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + tag + data
                + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, kind, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows.tobytes(), 6)) + chunk(b"IEND", b""))


def _tile(image: np.ndarray, lo: float, hi: float) -> str:
    """One (C, H, W) image, min/max-scaled to uint8 with the dataset's range, as base64 PNG."""
    scaled = (image.astype(np.float64) - lo) / (hi - lo) if hi > lo else np.zeros(image.shape)
    u8 = np.clip(np.rint(scaled * 255.0), 0, 255).astype(np.uint8)
    c = u8.shape[0]
    if c == 1:
        pixels = u8[0]
    elif c == 3:
        pixels = np.ascontiguousarray(u8.transpose(1, 2, 0))
    else:  # channels side by side, left to right
        pixels = np.ascontiguousarray(u8.transpose(1, 0, 2).reshape(u8.shape[1], -1))
    return base64.b64encode(_png(pixels)).decode("ascii")


def _forward(predictor: Predictor, X: np.ndarray) -> np.ndarray:
    """Eval-mode class probabilities (n, k) of raw rows, in chunks of bounded size."""
    import torch

    from models.network import apply_head

    per_row = max(1, int(np.prod(X.shape[1:])))
    step = max(1, min(4096, CHUNK_VALUES // per_row))
    out = []
    with torch.inference_mode():
        for s in range(0, len(X), step):
            xb = torch.from_numpy(np.ascontiguousarray(X[s:s + step], dtype=np.float32))
            out.append(apply_head(predictor.model(xb.to(predictor.device))).cpu().numpy())
    return np.concatenate(out).astype(np.float64)


def _val_rows(table: Table, spec: JobSpec, seed: int) -> np.ndarray:
    """The trainer's validation rows (models.training_state.ModelState: the same split call)."""
    t = spec.training
    _, val_idx = split(table.y, validation_split=t.validation_split, how=t.split, seed=seed)
    return val_idx


@router.get("/{job_id}/validation", response_class=JSONResponse, responses={
    200: {"model": ValidationOut},
    304: {"description": "If-None-Match holds the current ETag (same checkpoint)"},
    404: {"description": "no such job, no such checkpoint yet, or its dataset is gone"},
    422: {"description": "the job has no validation rows (validation_split 0)"}})
def get_validation(
    job: JobDep, session: SessionDep, predictors: PredictorsDep, request: Request,
    settings: SettingsDep,
    checkpoint: Annotated[Literal["best", "last"], Query(
        description="'last' follows training; 'best' is the best epoch so far")] = "last",
    limit: Annotated[int, Query(ge=0, le=MAX_IMAGES, description=(
        "image datasets: how many validation images to send (the first ones, in row order)"
    ))] = 64,
    only: Annotated[Literal["all", "mistakes"], Query(
        description="'mistakes': the first `limit` misclassified validation images")] = "all",
) -> Response:
    """Eval-mode predictions over the job's validation rows (the split the trainer used):
    the confusion matrix (rows = true class, columns = predicted) and accuracy, which for
    `last` is the job's final val_accuracy. Image datasets also get the first `limit`
    validation images as PNG tiles (min/max-scaled with the dataset's range) with their true
    and predicted classes; `images` is null for tables."""
    spec = JobSpec.model_validate(job.spec)
    meta = checkpoint_meta(session, job, checkpoint)
    # Checkpoint and data are immutable: the tag names everything the body depends on.
    def tag(sha: str) -> str:
        return f'"{sha[:32]}-val-{limit}-{only}"'

    if (unchanged := not_modified(request, tag(meta.sha256))) is not None:
        return unchanged
    table = _table(session, job, spec, settings.data_dir,
                   what="its validation predictions cannot be computed")
    predictor, ref = predictor_for(session, job, meta, predictors)
    seed = int(predictor.meta.get("seed", spec.training.seed))
    val = _val_rows(table, spec, seed)
    if len(val) == 0:
        raise InvalidInput([f"job '{job.id}' has no validation rows (training.validation_split "
                            f"{spec.training.validation_split} of {table.n_rows} rows)"])
    probs = _forward(predictor, table.X[val])
    predicted = probs.argmax(axis=1)
    truth = table.y[val]
    k = max(len(predictor.classes), probs.shape[1], int(truth.max()) + 1)
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (truth, predicted), 1)
    correct = int(np.trace(confusion))
    body: dict[str, Any] = {
        "checkpoint": ref.model_dump(), "classes": list(predictor.classes),
        "input_shape": list(table.input_shape), "is_image": table.is_image,
        "n_val": len(val), "correct": correct, "accuracy": correct / len(val),
        "confusion": confusion.tolist(), "images": None}
    if table.is_image:
        picks = np.arange(len(val)) if only == "all" else np.flatnonzero(predicted != truth)
        picks = picks[:limit]
        lo, hi = float(table.X.min()), float(table.X.max())
        c = table.input_shape[0]
        body["images"] = {
            "shape": list(table.input_shape),
            "layout": "grey" if c == 1 else "rgb" if c == 3 else "channels",
            "scale": [lo, hi],
            "items": [{"row": int(val[i]), "label": int(truth[i]), "predicted": int(predicted[i]),
                       "confidence": finite(probs[i, predicted[i]]),
                       "png": _tile(table.X[val[i]], lo, hi)} for i in picks]}
    return JSONResponse(body, headers={"ETag": tag(ref.sha256), "Cache-Control": "no-cache"})


# ---------------------------------------------------------------------------- batchnorm



@router.get("/{job_id}/bn", response_model=BnOut,
            responses={304: {"description": "If-None-Match holds the current ETag"}})
def get_bn(job: JobDep, session: SessionDep, request: Request, response: Response,
           values: Annotated[bool, Query(description=(
               "also each channel's (feature's) value per epoch, for layers of <= 64 channels"
           ))] = False) -> Any:
    """Per BN layer, over epochs: mean/min/max across channels of its running mean and
    variance, and of gamma and beta (null without affine parameters). Empty without BN.
    `values=true` adds `values`: per epoch, one number per channel (null where the trainer
    kept summaries only: more than 64 channels)."""
    etag = job_etag(job, "bn", values)
    if (unchanged := not_modified(request, etag)) is not None:
        return unchanged
    layers: dict[int, dict[str, Any]] = {}  # by module index, in first-seen order
    present: set[tuple[int, str]] = set()  # (module, statistic) recorded at least once
    for row in repo.history(session, job_id=job.id):
        for entry in (row.extras or {}).get("bn") or []:
            layer = layers.setdefault(int(entry["module"]), {
                "name": entry["name"], "module": int(entry["module"]), "epochs": [],
                **{s: {"mean": [], "min": [], "max": [], "values": []} for s in STATS}})
            layer["epochs"].append(row.epoch)
            for s in STATS:
                summary = entry.get(s) or {}
                if summary:
                    present.add((layer["module"], s))
                for key in ("mean", "min", "max"):
                    layer[s][key].append(finite(summary.get(key)))
                per_channel = summary.get("values") if values else None
                layer[s]["values"].append(None if per_channel is None else
                                          [_short(v) for v in per_channel])
    for layer in layers.values():
        for s in STATS:  # a statistic the layer never had (gamma/beta without affine)
            if (layer["module"], s) not in present:
                layer[s] = None
            elif not values or all(v is None for v in layer[s]["values"]):
                layer[s]["values"] = None
    response.headers["ETag"] = etag
    response.headers["Cache-Control"] = "no-cache"
    return BnOut.model_validate({"layers": list(layers.values())})


def _short(v: Any) -> float | None:
    """A per-channel value for a chart: 6 significant digits (a third of the JSON)."""
    f = finite(v)
    return None if f is None else float(f"{f:.6g}")
