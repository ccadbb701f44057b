"""Where the real services of the integration tests are, and whether a missing one may skip."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

PG_ADMIN_URL = os.environ.get("BNLAB_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
# Under CI=true a missing service or browser fails the run instead of skipping.
IN_CI = os.environ.get("CI", "").lower() == "true"


def unavailable(what: str) -> NoReturn:
    """Something a test needs is absent (`what` says which and how to get it): under CI=true a
    failure, since CI may not skip a test; elsewhere a skip."""
    if IN_CI:
        pytest.fail(f"{what}, and CI=true: tests that need it may not skip")
    pytest.skip(what)
