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


def test_spec_schema_importable_without_torch() -> None:
    code = ("import sys, models.spec, config.settings; "
            "assert not {'torch', 'fastapi', 'celery'} & set(sys.modules), sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
