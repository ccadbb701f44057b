"""The API's in-process app (tests/api's settings: a migrated SQLite file, filesystem broker)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from api.settings import ApiSettings
from tests.api.conftest import settings  # noqa: F401 - a fixture, used by app_client


@pytest.fixture
def app_client(settings: ApiSettings) -> Iterator[TestClient]:  # noqa: F811
    with TestClient(create_app(settings)) as c:
        yield c
