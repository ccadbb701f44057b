"""The API's in-process app (tests/api's settings: a migrated SQLite file, filesystem broker)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from api.settings import ApiSettings
from tests.support.app import migrated_settings


@pytest.fixture
def settings(tmp_path: Path) -> ApiSettings:
    return migrated_settings(tmp_path)


@pytest.fixture
def app_client(settings: ApiSettings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as c:
        yield c
