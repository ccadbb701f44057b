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
}


def imported_roots(path: Path) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_respects_dependency_direction(package: str) -> None:
    violations = [
        f"{path.relative_to(REPO)} imports {sorted(bad)}"
        for path in sorted((REPO / package).rglob("*.py"))
        if (bad := imported_roots(path) & FORBIDDEN[package])
    ]
    assert not violations, violations


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
