"""Under CI=true a test whose service or tool is missing fails; elsewhere it skips."""

from __future__ import annotations

import pytest

from tests.support import services


def test_a_missing_service_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(services, "IN_CI", True)
    with pytest.raises(pytest.fail.Exception, match=r"Redis is not reachable.*CI=true"):
        services.unavailable("Redis is not reachable")


def test_a_missing_service_skips_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(services, "IN_CI", False)
    with pytest.raises(pytest.skip.Exception, match="Redis is not reachable"):
        services.unavailable("Redis is not reachable")
