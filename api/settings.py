"""The API process's settings: the shared ones plus the bounds a request can hit."""

from __future__ import annotations

from pydantic import Field

from config.settings import BaseBnlabSettings
from models.spec import Limits


class ApiSettings(BaseBnlabSettings):
    # Uploads: checked while reading, before parsing.
    max_upload_bytes: int = Field(default=16 * 1024 * 1024, ge=1)
    max_csv_rows: int = Field(default=200_000, ge=1)
    max_csv_columns: int = Field(default=1_025, ge=2)
    # Job specs (models.spec.Limits).
    max_params: int = Field(default=10_000_000, ge=1)
    max_layers: int = Field(default=64, ge=1)
    max_units: int = Field(default=65_536, ge=1)
    max_epochs: int = Field(default=10_000, ge=1)
    max_batch_size: int = Field(default=65_536, ge=1)
    max_features: int = Field(default=1_024, ge=1)
    # Inference.
    max_predict_rows: int = Field(default=10_000, ge=1)
    predictor_cache_size: int = Field(default=16, ge=1)
    # A GPU worker counts as alive if it beat within this many seconds (device "auto").
    worker_alive_within_s: float = Field(default=60.0, gt=0)
    # /readyz gives up on the broker after this long.
    ready_timeout_s: float = Field(default=2.0, gt=0)

    def limits(self) -> Limits:
        return Limits(
            max_params=self.max_params,
            max_layers=self.max_layers,
            max_units=self.max_units,
            max_epochs=self.max_epochs,
            max_batch_size=self.max_batch_size,
            max_rows=self.max_csv_rows,
            max_features=self.max_features,
        )
