"""The API process's settings: the shared ones (spec limits included) plus request bounds."""

from __future__ import annotations

from pydantic import Field, field_validator

from api.ratelimit import parse_rate
from config.settings import BaseBnlabSettings


class ApiSettings(BaseBnlabSettings):
    # Authentication is on when this lists keys (comma-separated raw keys, e.g. compose's .env)
    # or once any key was made with `bnlab keys create`; then /v1 needs `Authorization: Bearer`.
    api_keys: str = Field(default="", repr=False)  # never in a logged repr
    # Per key: "N/second|minute|hour", or "" for no limit. With a Redis broker the buckets are
    # in Redis and the limit holds across API processes; embedded, per (the one) process.
    # Submissions: POST /v1/jobs, /v1/experiments, /v1/datasets.
    rate_limit_submissions: str = "60/minute"
    # Predictions: POST /v1/jobs/{id}/predict and GET /v1/jobs/{id}/boundary.
    rate_limit_predictions: str = "600/minute"
    # Queued + running jobs one key may have (experiment children count); checked at submission.
    max_active_jobs_per_key: int = Field(default=2048, ge=1)
    # Request bodies: JSON (specs, predict rows) and, separately, CSV uploads; both refused
    # with 413 while streaming, before a route reads them.
    max_body_bytes: int = Field(default=2 * 1024 * 1024, ge=1024)
    # Browsers may call the API from these origins (comma-separated, exact; empty: CORS off).
    cors_origins: str = ""
    # Uploads: checked while reading, before parsing.
    max_upload_bytes: int = Field(default=16 * 1024 * 1024, ge=1)
    max_csv_columns: int = Field(default=1_025, ge=2)
    # .npz and IDX uploads: feature values (rows x values per row), checked on the headers
    # before any array is read; rows count against max_csv_rows, bytes against max_upload_bytes.
    max_upload_values: int = Field(default=20_000_000, ge=1)
    # Experiments: variants x seeds.
    max_experiment_children: int = Field(default=1_024, ge=1)
    # Studies: every claim's experiment's children together (BNLAB_MAX_STUDY_CHILDREN).
    max_study_children: int = Field(default=2_048, ge=1)
    # Inference.
    max_predict_rows: int = Field(default=10_000, ge=1)
    predictor_cache_size: int = Field(default=16, ge=1)
    # Built export files (ONNX, .pt2, zip) kept per API process, LRU by size.
    export_cache_bytes: int = Field(default=128 * 1024 * 1024, ge=0)
    # A GPU worker counts as alive if it beat within this many seconds (device "auto").
    worker_alive_within_s: float = Field(default=60.0, gt=0)
    # /readyz gives up on the broker after this long ...
    ready_timeout_s: float = Field(default=2.0, gt=0)
    # ... and says not ready when the disk under a SQLite database or the embedded broker has
    # less free space than this (MiB).
    ready_min_free_mb: float = Field(default=8.0, ge=0)

    @field_validator("rate_limit_submissions", "rate_limit_predictions")
    @classmethod
    def _rate(cls, value: str) -> str:
        parse_rate(value)  # raises ValueError with what is expected
        return value

    @property
    def api_key_list(self) -> list[str]:
        return [k.strip() for k in self.api_keys.split(",") if k.strip()]

    @property
    def cors_origin_list(self) -> list[str]:
        return [o.strip() for o in self.cors_origins.split(",") if o.strip()]

    def body_limit(self, path: str) -> int:
        """The cap on a request body at `path`: uploads get the file limit plus room for the
        multipart envelope, everything else max_body_bytes."""
        if path.rstrip("/") == "/v1/datasets":
            return self.max_upload_bytes + 64 * 1024
        return self.max_body_bytes
