"""The app with auth ON (an env-style key) on a migrated SQLite file and the filesystem broker,
plus a tiny trained job, so hostile requests reach the code behind the id lookups.

`api_keys` is passed even where ApiSettings does not know it yet (pydantic-settings ignores
unknown fields), and every request carries the key; once auth exists, `auth_is_on` proves it
is actually enforced for these tests.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from api.settings import ApiSettings
from tests.support.security import AUTH, TINY_JOB, make_settings, train


@pytest.fixture(scope="module")
def sec_settings(tmp_path_factory: pytest.TempPathFactory) -> ApiSettings:
    return make_settings(tmp_path_factory.mktemp("security"))


@pytest.fixture(scope="module")
def api(sec_settings: ApiSettings) -> Iterator[TestClient]:
    """A client that sends the key on every request (raise_server_exceptions off: a 500 must
    come back as a response, as a real client would see it)."""
    with TestClient(create_app(sec_settings), headers=AUTH,
                    raise_server_exceptions=False) as c:
        yield c


@pytest.fixture(scope="module")
def trained_job(api: TestClient, sec_settings: ApiSettings) -> str:
    return train(api, sec_settings, TINY_JOB)
