"""The dependency direction in DESIGN.md, checked on every import statement in the tree."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# package -> top-level modules it must never import
FORBIDDEN = {
    "api": {"worker", "cli"},
    "worker": {"api", "cli"},
    "models": {"api", "worker", "cli", "config", "fastapi", "starlette", "celery", "kombu"},
    "config": {"api", "worker", "cli", "torch"},  # models.spec only: pydantic, no torch
    # the SDK (client/bnlab, its own distribution): httpx and pydantic, nothing of the server
    "client": {"api", "worker", "models", "config", "cli", "torch", "fastapi", "celery",
               "sqlalchemy"},
    # the benchmarks share devtools/ with the tests, never the tests themselves
    "bench": {"tests"},
    "devtools": {"tests"},
}
# Within models/: the database layer and the torch core (the rest) never import each other's
# stack, so the API's database code loads no torch and the trainer needs no database.
DB = "models/db"
WITHIN_MODELS = {
    DB: {"torch"},
    "models (outside models/db)": {"sqlalchemy"},
}


def imported_roots(path: Path) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def files_of(root: Path, folder: str) -> list[Path]:
    """The Python files a rule covers: "models (outside models/db)" is models/ less models/db."""
    if folder == "models (outside models/db)":
        return [p for p in files_of(root, "models") if not p.is_relative_to(root / DB)]
    return sorted((root / folder).rglob("*.py"))


def violations(root: Path, folder: str, forbidden: set[str]) -> list[str]:
    return [f"{path.relative_to(root)} imports {sorted(bad)}"
            for path in files_of(root, folder)
            if (bad := imported_roots(path) & forbidden)]


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_respects_dependency_direction(package: str) -> None:
    found = violations(REPO, package, FORBIDDEN[package])
    assert not found, found


@pytest.mark.parametrize("folder", sorted(WITHIN_MODELS))
def test_models_db_and_the_torch_core_stay_apart(folder: str) -> None:
    found = violations(REPO, folder, WITHIN_MODELS[folder])
    assert not found, found


def test_each_new_rule_sees_its_violation(tmp_path: Path) -> None:
    for name, text in {"models/db/bad.py": "import torch.nn\n",
                       "models/db/ok.py": "from sqlalchemy import select\n",
                       "models/bad.py": "from sqlalchemy.orm import Session\n",
                       "models/ok.py": "import torch\n",
                       "bench/bad.py": "def f():\n    from tests.integration.flow import x\n"
                       }.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert violations(tmp_path, DB, WITHIN_MODELS[DB]) == ["models/db/bad.py imports ['torch']"]
    assert violations(tmp_path, "models (outside models/db)",
                      WITHIN_MODELS["models (outside models/db)"]) == [
        "models/bad.py imports ['sqlalchemy']"]
    assert violations(tmp_path, "bench", FORBIDDEN["bench"]) == [
        "bench/bad.py imports ['tests']"]


def test_layering_check_sees_a_violation(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("from worker.tasks import train\nimport fastapi\n")
    assert {"worker", "fastapi"} <= imported_roots(bad)


ROUTES = REPO / "api" / "routes"


def imported_routes(path: Path) -> set[str]:
    """The api.routes modules a file imports, absolute or relative (`from . import jobs`)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("api.routes."))
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:  # relative, from inside api/routes/ (level 1) or api/ (level 2)
                module = ".".join(["api", "routes"][:3 - node.level] + ([module] if module
                                                                        else []))
            if module == "api.routes":
                found.update(f"api.routes.{a.name}" for a in node.names)
            elif module.startswith("api.routes."):
                found.add(module)
    return found


def test_no_route_module_imports_another() -> None:
    # Each route module reads on its own: what two routes share lives in api/ (deps,
    # presenters, sse, http_cache, submission, ...), not in one of them.
    violations = [f"{path.relative_to(REPO)} imports {sorted(bad)}"
                  for path in sorted(ROUTES.rglob("*.py")) if (bad := imported_routes(path))]
    assert not violations, violations


def test_route_rule_sees_a_violation(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("from api.routes.jobs import job_out\nfrom api.routes import events\n"
                   "import api.routes.results\nfrom . import studies\nfrom .visuals import x\n"
                   "from api.deps import JobDep\nfrom api import routes\n")
    assert imported_routes(bad) == {"api.routes.jobs", "api.routes.events", "api.routes.results",
                                    "api.routes.studies", "api.routes.visuals"}


def test_spec_schema_importable_without_torch() -> None:
    code = ("import sys, models.spec, config.settings; "
            "assert not {'torch', 'fastapi', 'celery'} & set(sys.modules), sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_the_queue_names_and_the_database_layer_load_no_torch() -> None:
    # models.queueing is what api/ and worker/ share; models.db is what api/ reads through
    code = ("import sys, models, models.queueing, models.db.repository; "
            "assert not {'torch', 'celery', 'fastapi'} & set(sys.modules), sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
