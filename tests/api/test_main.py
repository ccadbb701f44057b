"""The app module: importable without side effects or torch, never importing worker/, and
errors never leak tracebacks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from fastapi.testclient import TestClient

from api.main import create_app
from api.settings import ApiSettings

REPO = Path(__file__).resolve().parents[2]


def test_uvicorn_entry_point_is_lazy_and_light(tmp_path: Path) -> None:
    code = (
        "import sys, api.main\n"
        "assert not (__import__('pathlib').Path(sys.argv[1]) / 'broker').exists()\n"
        "app = api.main.app\n"
        "assert type(app).__name__ == 'FastAPI'\n"
        "assert (__import__('pathlib').Path(sys.argv[1]) / 'broker' / 'queue').is_dir()\n"
        "bad = [m for m in sys.modules if m == 'torch' or m.split('.')[0] == 'worker']\n"
        "assert not bad, bad\n"
    )
    env = {**os.environ, "BNLAB_HOME": str(tmp_path)}
    env.pop("BNLAB_DATABASE_URL", None)
    env.pop("BNLAB_BROKER_URL", None)
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_unexpected_errors_are_json_without_traceback(settings: ApiSettings) -> None:
    app = create_app(settings)

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("secret internals")

    with TestClient(app, raise_server_exceptions=False) as client:
        r = client.get("/boom")
        assert r.status_code == 500
        assert r.json()["error"] == "InternalError"
        assert "secret" not in r.text
        assert "Traceback" not in r.text
        r = client.get("/v1/nothing-here")
        assert r.status_code == 404
        assert r.json()["error"] == "NotFound"
