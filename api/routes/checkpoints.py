"""Checkpoints (safetensors downloads) and eval-mode inference from a stored checkpoint."""

from __future__ import annotations

import base64
import binascii
import io
from typing import Any

import numpy as np
from fastapi import APIRouter, Response

from api.deps import MAX_EPOCH_NUMBER, JobDep, PredictorsDep, SessionDep, SettingsDep
from api.errors import InvalidInput, NotFound, PayloadTooLarge
from api.predictors import checkpoint_meta, no_checkpoint, predictor_for
from api.schemas import CheckpointOut, PredictRequest, PredictResponse
from models.db import repository as repo
from models.db.tables import Checkpoint, Job

router = APIRouter(prefix="/jobs", tags=["checkpoints"])

KINDS = ("best", "last")


def _out(job: Job, c: Checkpoint) -> CheckpointOut:
    return CheckpointOut(kind=c.kind, epoch=c.epoch, size=c.size, sha256=c.sha256,
                         metrics=c.metrics, created_at=c.created_at,
                         url=f"/v1/jobs/{job.id}/checkpoints/{c.kind}")


@router.get("/{job_id}/checkpoints", response_model=list[CheckpointOut])
def list_checkpoints(job: JobDep, session: SessionDep) -> list[CheckpointOut]:
    return [_out(job, c) for c in repo.list_checkpoints(session, job_id=job.id)]


@router.get("/{job_id}/checkpoints/{which}", response_class=Response,
            responses={200: {"content": {"application/octet-stream": {}},
                             "description": "safetensors file (weights, BN buffers, metadata)"}})
def download_checkpoint(job: JobDep, which: str, session: SessionDep) -> Response:
    """`which` is `best`, `last` or an epoch number that one of them holds."""
    ckpt = _find(session, job, which)
    filename = f"{job.name or 'job'}-{job.id}-{ckpt.kind}-epoch{ckpt.epoch}.safetensors"
    filename = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in filename)
    return Response(ckpt.content, media_type="application/octet-stream", headers={
        "Content-Disposition": f'attachment; filename="{filename}"',
        "ETag": f'"{ckpt.sha256}"', "X-Checkpoint-Epoch": str(ckpt.epoch)})


def _find(session: SessionDep, job: Job, which: str) -> Checkpoint:
    if which not in KINDS and not (which.isdigit() and int(which) <= MAX_EPOCH_NUMBER):
        raise InvalidInput([f"checkpoint '{which}': use 'best', 'last' or an epoch number"])
    ckpt = repo.get_checkpoint(session, job_id=job.id, which=which)
    if ckpt is not None:
        return ckpt
    if which in KINDS:
        raise no_checkpoint(job, which)
    kept = ", ".join(f"{c.kind} (epoch {c.epoch})"
                     for c in repo.list_checkpoints(session, job_id=job.id)) or "none yet"
    raise NotFound(f"job '{job.id}' keeps no checkpoint of epoch {which}; it keeps: {kept}")


def npy_array(text: str) -> np.ndarray:
    """The `npy` field: base64 of a .npy file with a numeric array; never unpickled."""
    try:
        raw = base64.b64decode(text, validate=True)
        array = np.load(io.BytesIO(raw), allow_pickle=False)
    except (binascii.Error, ValueError, OSError, EOFError) as exc:
        raise InvalidInput([f"npy: not base64 of a .npy array without pickled objects ({exc})"
                            ]) from None
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "biuf" or array.ndim < 2:
        kind = getattr(array, "dtype", type(array).__name__)
        raise InvalidInput([f"npy: need a numeric array shaped (n, *input_shape); got {kind} "
                            f"with shape {list(getattr(array, 'shape', []))}"])
    return array


@router.post("/{job_id}/predict", response_model=PredictResponse,
             responses={404: {"description": "no such job or checkpoint yet"},
                        413: {"description": "more rows than max_predict_rows"}})
def predict(job: JobDep, body: PredictRequest, session: SessionDep, settings: SettingsDep,
            predictors: PredictorsDep) -> PredictResponse:
    """Eval-mode predictions (BatchNorm uses its running statistics), so a row's output does
    not depend on the other rows. Works while the job runs, from its latest checkpoint.
    Images come as nested lists shaped like the dataset's or as a base64 `.npy` array."""
    inputs: Any = body.inputs if body.inputs is not None else npy_array(body.npy or "")
    if len(inputs) > settings.max_predict_rows:
        raise PayloadTooLarge(f"{len(inputs)} input rows; the limit (max_predict_rows) is "
                              f"{settings.max_predict_rows}: split the request")
    predictor, ref = predictor_for(session, job, checkpoint_meta(session, job, body.checkpoint),
                                   predictors)
    from models.inference import InferenceInputError  # torch on first use

    try:
        result = predictor.predict(inputs)
    except InferenceInputError as exc:
        raise InvalidInput([f"inputs: {exc}"]) from None
    # Built from values that already have the schema's types: validating 100k rows again
    # would cost more than the model (FastAPI serializes it straight to JSON).
    return PredictResponse.model_construct(
        classes=result.classes, probabilities=result.probabilities,
        class_names=result.class_names, checkpoint=ref,
    )
