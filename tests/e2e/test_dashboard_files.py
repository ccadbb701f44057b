"""The dashboard's files as the API serves them, without a browser: every page asset loads with
the right type, caching revalidates, nothing outside api/static is reachable, and every ES
module import resolves to a served file (a typo there would only show in a browser)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from api.routes.dashboard import STATIC
from api.settings import ApiSettings
from tests.support.db import migrated_sqlite

IMPORT = re.compile(r"""^\s*import\s+(?:[^'"]+\s+from\s+)?["']([^"']+)["']""", re.M)


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    settings = ApiSettings(home=tmp_path, database_url=None, broker_url=None)
    migrated_sqlite(settings.sqlalchemy_url)
    with TestClient(create_app(settings)) as c:
        yield c


def test_index_and_assets(client: TestClient) -> None:
    r = client.get("/")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert r.headers["cache-control"] == "no-cache"
    html = r.text
    assets = re.findall(r'(?:src|href)="(/static/[^"]+)"', html)
    assert "/static/js/app.js" in assets
    assert "/static/vendor/uplot/uPlot.min.css" in assets
    for path in assets:
        a = client.get(path)
        assert a.status_code == 200, path
    assert client.get("/static/js/app.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/static/app.css").headers["content-type"].startswith("text/css")


def test_revalidation_answers_304(client: TestClient) -> None:
    first = client.get("/static/js/app.js")
    again = client.get("/static/js/app.js", headers={"If-None-Match": first.headers["etag"]})
    assert again.status_code == 304
    assert again.content == b""
    assert client.get("/static/js/app.js", headers={"If-None-Match": '"other"'}).status_code == 200


@pytest.mark.parametrize("path", ["/static/../routes/dashboard.py", "/static/%2e%2e/main.py",
                                  "/static/js", "/static/missing.js", "/static/"])
def test_nothing_outside_static(client: TestClient, path: str) -> None:
    r = client.get(path)
    assert r.status_code == 404, (path, r.status_code)
    assert "import" not in r.text  # no Python source leaked


def test_every_module_import_resolves() -> None:
    modules = sorted(STATIC.rglob("*.js"))
    assert len(modules) >= 8
    for module in modules:
        for spec in IMPORT.findall(module.read_text()):
            assert spec.startswith("."), f"{module}: bare import '{spec}' needs a build step"
            target = (module.parent / spec).resolve()
            assert target.is_file(), f"{module}: {spec}"
            assert target.is_relative_to(STATIC), f"{module}: {spec}"


def test_uplot_is_vendored_with_its_licence() -> None:
    vendor = STATIC / "vendor" / "uplot"
    assert "MIT License" in (vendor / "LICENSE").read_text()
    assert "export { uPlot as default }" in (vendor / "uPlot.esm.js").read_text()
