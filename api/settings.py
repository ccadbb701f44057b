"""The API process's settings: the shared ones (spec limits included) plus request bounds."""

from __future__ import annotations

from pydantic import Field

from config.settings import BaseBnlabSettings


class ApiSettings(BaseBnlabSettings):
    # Uploads: checked while reading, before parsing.
    max_upload_bytes: int = Field(default=16 * 1024 * 1024, ge=1)
    max_csv_columns: int = Field(default=1_025, ge=2)
    # Experiments: variants x seeds.
    max_experiment_children: int = Field(default=1_024, ge=1)
    # Inference.
    max_predict_rows: int = Field(default=10_000, ge=1)
    predictor_cache_size: int = Field(default=16, ge=1)
    # A GPU worker counts as alive if it beat within this many seconds (device "auto").
    worker_alive_within_s: float = Field(default=60.0, gt=0)
    # /readyz gives up on the broker after this long.
    ready_timeout_s: float = Field(default=2.0, gt=0)
