"""The checkout's root, the notebook's CSV inside it, and the files git tracks there."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# The seed notebook's dataset, shipped inside the repository (models/data/).
NOTEBOOK_CSV = REPO / "models" / "data" / "concertriccir2.csv"
# What a checkout holds beside the tracked files when there is no .git to ask (the CI copy).
UNTRACKED = {".git", ".venv", "artifacts", "build", "dist", "__pycache__", ".mypy_cache",
             ".ruff_cache", ".pytest_cache", "wheels"}


def tracked_files() -> list[Path]:
    if (REPO / ".git").exists():
        out = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, check=True,
                             capture_output=True).stdout
        return [REPO / name for name in out.decode().split("\0") if name]
    files: list[Path] = []
    for root, dirs, names in os.walk(REPO):
        dirs[:] = [d for d in dirs if d not in UNTRACKED and not d.endswith(".egg-info")]
        files.extend(Path(root) / n for n in names)
    return files
