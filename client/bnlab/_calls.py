"""Every API call, described once (path, parameters, body, parser) for both clients."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel

from bnlab._base import (
    Call,
    as_bytes,
    as_json,
    as_none,
    as_text,
    metrics_param,
    new_idempotency_key,
    rows_body,
    spec_body,
    upload_files,
)
from bnlab.types import Dataset, Prediction


def _key(idempotency_key: str | None) -> dict[str, str]:
    # One key per logical request, generated before the first attempt: every retry of it
    # carries the same key, so the server creates at most one job.
    return {"Idempotency-Key": idempotency_key or new_idempotency_key()}


# -- datasets --

def _content_type(content: bytes) -> str:
    if content[:2] == b"PK":  # .npz
        return "application/zip"
    return "application/octet-stream" if content[:2] in (b"\0\0", b"\x1f\x8b") else "text/csv"


def upload_dataset(source: Any, *, name: str | None, label_column: str | None,
                   filename: str | None, labels: Any = None) -> Call[Dataset]:
    """A CSV, an .npz (arrays x and y) or, with `labels`, an IDX images file and its labels
    file; only bytes are sent (the server reads the format from the content)."""
    fname, content = upload_files(source, filename)
    files = {"file": (fname, content, _content_type(content))}
    if labels is not None:
        lname, lcontent = upload_files(labels, None)
        files["labels"] = (lname, lcontent, "application/octet-stream")
    data = {k: v for k, v in (("name", name), ("label_column", label_column)) if v is not None}
    # Not idempotent on the server: retried only when it cannot have arrived.
    return Call("POST", "/v1/datasets", lambda r: Dataset.model_validate(r.json()),
                files=files, data=data, idempotent=False)


def get_dataset(dataset_id: str) -> Call[Dataset]:
    return Call("GET", f"/v1/datasets/{dataset_id}", lambda r: Dataset.model_validate(r.json()))


def list_datasets() -> Call[Any]:
    return Call("GET", "/v1/datasets", as_json)


# -- jobs --

def create_job(spec: BaseModel | Mapping[str, Any], idempotency_key: str | None) -> Call[Any]:
    return Call("POST", "/v1/jobs", as_json, json=spec_body(spec), headers=_key(idempotency_key))


def get_job(job_id: str) -> Call[Any]:
    return Call("GET", f"/v1/jobs/{job_id}", as_json)


def list_jobs(*, status: str | None, limit: int, cursor: str | None,
              experiment_id: str | None = None) -> Call[Any]:
    params = {k: v for k, v in (("status", status), ("limit", limit), ("cursor", cursor),
                                ("experiment_id", experiment_id)) if v is not None}
    return Call("GET", "/v1/jobs", as_json, params=params)


def cancel_job(job_id: str) -> Call[Any]:
    return Call("POST", f"/v1/jobs/{job_id}/cancel", as_json)


def delete_job(job_id: str) -> Call[None]:
    return Call("DELETE", f"/v1/jobs/{job_id}", as_none)


def history(job_id: str, *, since: int = 0) -> Call[Any]:
    return Call("GET", f"/v1/jobs/{job_id}/history", as_json, params={"since": since})


def history_csv(job_id: str) -> Call[str]:
    return Call("GET", f"/v1/jobs/{job_id}/history", as_text, params={"format": "csv"})


def curves(job_id: str, metrics: str | Sequence[str]) -> Call[bytes]:
    return Call("GET", f"/v1/jobs/{job_id}/curves.png", as_bytes,
                params={"metrics": metrics_param(metrics)})


def compare_curves(job_ids: Sequence[str], metrics: str | Sequence[str]) -> Call[bytes]:
    return Call("GET", "/v1/curves.png", as_bytes,
                params={"jobs": ",".join(job_ids), "metrics": metrics_param(metrics)})


def model(job_id: str) -> Call[Any]:
    return Call("GET", f"/v1/jobs/{job_id}/model", as_json)


def predict(job_id: str, rows: Any, checkpoint: str) -> Call[Prediction]:
    return Call("POST", f"/v1/jobs/{job_id}/predict",
                lambda r: Prediction.model_validate(r.json()), json=rows_body(rows, checkpoint))


EXPORT_FORMATS = ("onnx", "safetensors", "torch_export")
# What each format's file is called locally (the server's Content-Disposition agrees).
EXPORT_SUFFIXES = {"onnx": ".onnx", "safetensors": ".zip", "torch_export": ".pt2"}


def export(job_id: str, fmt: str, checkpoint: str, fold_bn: bool) -> Call[bytes]:
    return Call("GET", f"/v1/jobs/{job_id}/export", as_bytes,
                params={"format": fmt, "checkpoint": checkpoint,
                        "fold_bn": "true" if fold_bn else "false"})


# -- experiments --

def create_experiment(spec: BaseModel | Mapping[str, Any],
                      idempotency_key: str | None) -> Call[Any]:
    return Call("POST", "/v1/experiments", as_json, json=spec_body(spec),
                headers=_key(idempotency_key))


def get_experiment(experiment_id: str) -> Call[Any]:
    return Call("GET", f"/v1/experiments/{experiment_id}", as_json)


def list_experiments(*, limit: int, cursor: str | None) -> Call[Any]:
    params: dict[str, Any] = {"limit": limit}
    if cursor is not None:
        params["cursor"] = cursor
    return Call("GET", "/v1/experiments", as_json, params=params)


def cancel_experiment(experiment_id: str) -> Call[Any]:
    return Call("POST", f"/v1/experiments/{experiment_id}/cancel", as_json)


def _retried(response: Any) -> Any:
    body = response.json()  # {"retried": [job ids], "experiment": {...}}
    return body.get("experiment", body) if isinstance(body, dict) else body


def retry_experiment(experiment_id: str) -> Call[Any]:
    return Call("POST", f"/v1/experiments/{experiment_id}/retry", _retried)


def summary(experiment_id: str) -> Call[Any]:
    return Call("GET", f"/v1/experiments/{experiment_id}/summary", as_json)


def summary_csv(experiment_id: str) -> Call[str]:
    return Call("GET", f"/v1/experiments/{experiment_id}/summary", as_text,
                params={"format": "csv"})


def experiment_curves(experiment_id: str, metric: str) -> Call[bytes]:
    return Call("GET", f"/v1/experiments/{experiment_id}/curves.png", as_bytes,
                params={"metric": metric})


# -- studies --

STUDY_PRESETS = ("bn-claims",)
STUDY_CLAIMS = ("faster_convergence", "higher_learning_rates", "init_insensitivity",
                "regularization", "batch_size", "placement", "train_vs_inference")
REPORT_FORMATS = ("json", "md", "html")


def study_body(preset: str | BaseModel | Mapping[str, Any], *, base: Any, claims: Any,
               seeds: int | None, name: str | None, options: Mapping[str, Any]
               ) -> dict[str, Any]:
    """The POST /v1/studies body: a preset's name and the fields given (None: the server's
    default), or a whole spec (a dict or a StudySpec) as `preset`, which the keywords only
    complete."""
    whole = isinstance(preset, BaseModel | Mapping)
    body = spec_body(preset) if whole else {"preset": preset}  # type: ignore[arg-type]
    if isinstance(claims, str):
        claims = [c.strip() for c in claims.split(",") if c.strip()]
    given = {"name": name, "claims": list(claims) if claims is not None else None,
             "base": spec_body(base) if base is not None else None, "seeds": seeds,
             **options}
    for k, v in given.items():
        if v is not None and not (whole and k in body):
            body[k] = v
    copy: dict[str, Any] = json.loads(json.dumps(body))
    return copy


def create_study(body: Mapping[str, Any], idempotency_key: str | None) -> Call[Any]:
    return Call("POST", "/v1/studies", as_json, json=dict(body), headers=_key(idempotency_key))


def get_study(study_id: str) -> Call[Any]:
    return Call("GET", f"/v1/studies/{study_id}", as_json)


def list_studies(*, limit: int, cursor: str | None) -> Call[Any]:
    params: dict[str, Any] = {"limit": limit}
    if cursor is not None:
        params["cursor"] = cursor
    return Call("GET", "/v1/studies", as_json, params=params)


def page_items(page: Any) -> tuple[list[Any], str | None]:
    """A listing's items and next cursor: {"items": [...], "next_cursor": ...} or a list."""
    if isinstance(page, list):
        return page, None
    return list(page.get("items") or []), page.get("next_cursor")


def cancel_study(study_id: str) -> Call[Any]:
    return Call("POST", f"/v1/studies/{study_id}/cancel", as_json)


def _retried_study(response: Any) -> Any:
    body = response.json()  # the study, or {"retried": [...], "study": {...}}
    return body.get("study", body) if isinstance(body, dict) else body


def retry_study(study_id: str) -> Call[Any]:
    return Call("POST", f"/v1/studies/{study_id}/retry", _retried_study)


def study_report(study_id: str) -> Call[Any]:
    return Call("GET", f"/v1/studies/{study_id}/report", as_json)


def study_report_markdown(study_id: str) -> Call[str]:
    return Call("GET", f"/v1/studies/{study_id}/report.md", as_text,
                headers={"Accept": "text/markdown"})


def study_report_html(study_id: str) -> Call[str]:
    return Call("GET", f"/v1/studies/{study_id}/report.html", as_text,
                headers={"Accept": "text/html"})
