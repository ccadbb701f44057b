"""A job's checkpoint as a portable file: ONNX, safetensors + JSON sidecar, or torch.export.

The route is a plain `def`, so FastAPI runs it in its thread pool: a first export (seconds for
ONNX) never blocks the event loop, and the result is cached per checkpoint digest.
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Literal

from fastapi import APIRouter, Header, Query, Response

from api.deps import ExportsDep, JobDep, SessionDep
from api.errors import Conflict, ErrorOut
from api.predictors import ExportKey
from api.presenters import class_names
from models.db import repository as repo
from models.db.tables import Job

router = APIRouter(prefix="/jobs", tags=["checkpoints"])

_FILES = {
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    "application/zip": {"schema": {"type": "string", "format": "binary"}},
}


def _filename(job: Job, kind: str, epoch: int, fold_bn: bool, extension: str) -> str:
    name = f"{job.name or 'job'}-{job.id}-{kind}-epoch{epoch}{'-folded' if fold_bn else ''}"
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name) + extension


@router.get("/{job_id}/export", response_class=Response, responses={
    200: {"content": _FILES, "description": (
        "onnx: an ONNX model (input `input` (batch, n_features) float32 -> `probabilities`); "
        "safetensors: a zip of model.safetensors, model.json (the sidecar that rebuilds it) "
        "and README.txt; torch_export: a torch.export program (.pt2, torch.export.load)")},
    304: {"description": "If-None-Match matched: the same file as before"},
    409: {"model": ErrorOut, "description": "the job has no such checkpoint yet"}})
def export_job(job: JobDep, session: SessionDep, exports: ExportsDep,
               format: Annotated[Literal["onnx", "safetensors", "torch_export"], Query(
                   description="onnx, safetensors (zip with a JSON sidecar) or torch_export")
               ] = "onnx",
               checkpoint: Annotated[Literal["best", "last"], Query()] = "last",
               fold_bn: Annotated[bool, Query(description=(
                   "fold each BatchNorm into the adjacent dense layer (the serving form: same "
                   "outputs, fewer ops); false keeps the BN layers as trained"))] = False,
               if_none_match: Annotated[str | None, Header()] = None) -> Response:
    """The eval-mode model of the job's `best` or `last` checkpoint as a file; the same
    checkpoint, format and fold always give the same bytes (cached, with an ETag)."""
    meta = next((c for c in repo.list_checkpoints(session, job_id=job.id)
                 if c.kind == checkpoint), None)
    if meta is None:
        raise Conflict(f"job '{job.id}' has no '{checkpoint}' checkpoint to export yet (status "
                       f"{job.status}, {job.epochs_done} epochs done): the worker writes one "
                       "as epochs finish")
    classes = class_names(session, job)
    key: ExportKey = (job.id, checkpoint, meta.sha256, format, fold_bn,
                      tuple(classes) if classes is not None else None)
    etag = '"' + hashlib.sha256(repr(key).encode()).hexdigest()[:32] + '"'
    headers = {"ETag": etag, "X-Checkpoint-Epoch": str(meta.epoch)}
    if if_none_match is not None and etag in {t.strip() for t in if_none_match.split(",")}:
        return Response(status_code=304, headers=headers)

    def build() -> tuple[bytes, str, str]:
        from models.export import Source, export  # torch on first use

        ckpt = repo.get_checkpoint(session, job_id=job.id, which=checkpoint)
        if ckpt is None or ckpt.sha256 != meta.sha256:  # replaced between the two reads
            raise Conflict(f"job '{job.id}''s '{checkpoint}' checkpoint changed while it was "
                           "being exported: ask again")
        art = export(ckpt.content, format, fold_bn=fold_bn, classes=classes,
                     source=Source(job.id, ckpt.kind, ckpt.epoch, ckpt.sha256))
        return art.content, art.media_type, art.extension

    content, media_type, extension = exports.produce(key, build)
    filename = _filename(job, checkpoint, meta.epoch, fold_bn, extension)
    headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    return Response(content, media_type=media_type, headers=headers)
