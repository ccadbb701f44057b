"""Both distributions build from a copy of the checkout and install cleanly into fresh venvs.

- `bnlab-client` (client/) is the SDK, imported as `bnlab`: httpx and pydantic, never torch,
  FastAPI, Celery or SQLAlchemy.
- `bnlab-server` (the root) is the service: the design's top-level packages and nothing else
  (no `client`, `bench`, `devtools` or `tests`), with its data files (migrations, dashboard,
  the notebook CSV).

Fresh venvs reach the package index for their dependencies; torch comes from the pinned wheel.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.support.paths import REPO, tracked_files

pytestmark = pytest.mark.slow

SERVER_PACKAGES = {"api", "cli", "config", "migrations", "models", "worker"}
SERVER_STACK = ("torch", "fastapi", "celery", "sqlalchemy", "starlette", "uvicorn", "numpy")
TORCH_SPEC = os.environ.get("TORCH_SPEC", "torch==2.13.0")


def run(*args: str | Path, cwd: Path | None = None) -> str:
    done = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, f"{args}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Both wheels, built from a copy of the tracked files (a build leaves build/ behind)."""
    src = tmp_path_factory.mktemp("src")
    for path in tracked_files():
        if path.is_file():
            target = src / path.relative_to(REPO)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
    out = tmp_path_factory.mktemp("wheels")
    run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
        "-w", out, src / "client", src)
    found = {p.name.split("-")[0]: p for p in out.glob("*.whl")}
    assert set(found) == {"bnlab_client", "bnlab_server"}, found
    return found


def top_level(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as z:
        return {name.split("/")[0] for name in z.namelist()
                if not name.split("/")[0].endswith(".dist-info")}


def requirements(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        lines = z.read(meta).decode().splitlines()
    return [line.split(":", 1)[1].strip() for line in lines if line.startswith("Requires-Dist:")]


def fresh_venv(path: Path) -> Path:
    run(sys.executable, "-m", "venv", path)
    return path / "bin"


def test_the_server_wheel_holds_the_service_alone(wheels: dict[str, Path]) -> None:
    wheel = wheels["bnlab_server"]
    assert top_level(wheel) == SERVER_PACKAGES
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
    assert {"models/data/concertriccir2.csv", "migrations/env.py", "migrations/script.py.mako",
            "migrations/versions/0001_initial.py", "api/static/index.html"} <= names
    assert "bnlab-client==0.1.0" in requirements(wheel)


def test_the_client_wheel_is_bnlab_with_two_dependencies(wheels: dict[str, Path]) -> None:
    wheel = wheels["bnlab_client"]
    assert top_level(wheel) == {"bnlab"}
    assert sorted(re.split(r"[<>=!~;\[ ]", r)[0] for r in requirements(wheel)) == [
        "httpx", "pydantic"]


def test_the_client_installs_alone_without_the_server_stack(
        wheels: dict[str, Path], tmp_path: Path) -> None:
    bin_ = fresh_venv(tmp_path / "venv")
    run(bin_ / "pip", "install", "-q", "--no-compile", wheels["bnlab_client"])
    installed = run(bin_ / "pip", "list", "--format=freeze").lower()
    assert "bnlab-client==0.1.0" in installed
    assert not [p for p in SERVER_STACK if f"\n{p}==" in f"\n{installed}"], installed
    code = ("import sys, bnlab; "
            "from bnlab import AsyncClient, Client, ValidationError; "
            "assert not {'torch', 'fastapi', 'celery', 'sqlalchemy', 'models', 'api'} "
            "& set(sys.modules); print(bnlab.__file__)")
    where = run(bin_ / "python", "-c", code, cwd=tmp_path)
    assert str(tmp_path / "venv") in where  # the installed copy, not the checkout's


@pytest.mark.timeout(900)
def test_the_server_installs_into_a_fresh_venv_and_migrates(
        wheels: dict[str, Path], tmp_path: Path) -> None:
    bin_ = fresh_venv(tmp_path / "venv")
    # One pip command: torch from its pinned wheel and the local client satisfy the server's
    # requirements. --no-compile: byte-compiling torch would double the time.
    run(bin_ / "pip", "install", "-q", "--no-compile", TORCH_SPEC, wheels["bnlab_server"],
        wheels["bnlab_client"])
    installed = run(bin_ / "pip", "list", "--format=freeze").lower()
    assert "bnlab-server==0.1.0" in installed
    assert "bnlab-client==0.1.0" in installed
    site = Path(run(bin_ / "python", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))",
                    cwd=tmp_path).strip())
    assert not {"client", "bench", "devtools", "tests"} & {p.name for p in site.iterdir()}
    code = ("import api.main, worker.celery_app, cli.main, bnlab; "
            "from models.datasets import notebook_csv; print(len(notebook_csv()))")
    assert run(bin_ / "python", "-c", code, cwd=tmp_path).strip() == str(
        len((REPO / "models" / "data" / "concertriccir2.csv").read_bytes()))
    # The packaged migrations build the schema: what the compose image's `bnlab migrate` runs.
    db = tmp_path / "bnlab.sqlite3"
    env = {**os.environ, "BNLAB_HOME": str(tmp_path / "home"),
           "BNLAB_DATABASE_URL": f"sqlite:///{db}"}
    done = subprocess.run([str(bin_ / "bnlab"), "migrate"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    import sqlite3

    with sqlite3.connect(db) as conn:
        tables = {r[0] for r in conn.execute("select name from sqlite_master where type='table'")}
    assert {"job", "epoch_metric", "checkpoint", "dataset", "alembic_version"} <= tables
