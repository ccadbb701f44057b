"""`python -m bench`: each module in a child process; a failing one becomes an error row and a
non-zero exit, the others still report."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from bench.report import markdown
from bench.run_all import MODULES, REPO, all_rows, run_module, select, write_json

pytestmark = pytest.mark.slow

FAKE = "tests.bench.fake"


def test_rows_come_back_from_the_child() -> None:
    quick = run_module("ok", quick=True, timeout_s=300, package=FAKE)
    full = run_module("ok", quick=False, timeout_s=300, package=FAKE)
    assert quick.error is None
    assert quick.skipped is None
    assert quick.seconds > 0
    assert [r.name for r in quick.rows] == ["quick", "unmeasured"]
    assert full.rows[0].name == "full"  # --quick reached run()
    row = quick.rows[0]
    assert (row.value, row.unit, row.ratio, row.ok) == (1.5, "steps/s", 2.0, True)
    assert math.isnan(quick.rows[1].value)


# Only the module that never ends gets a short timeout: the others' child processes may take
# longer than that to start on a loaded machine, and must still report their own error.
@pytest.mark.parametrize(("module", "error", "timeout_s"), [
    ("boom", "ValueError: no database to measure", 300),
    ("crash", "exited with status 3 and no rows", 300),
    ("slow", "timed out after 3 s", 3),
])
def test_a_failing_module_is_an_error_row(module: str, error: str, timeout_s: float) -> None:
    outcome = run_module(module, quick=True, timeout_s=timeout_s, package=FAKE)
    assert outcome.error == error
    assert outcome.rows == []
    (row,) = all_rows([outcome])
    assert row.ok is False
    assert row.name == f"bench.{module} failed"
    assert row.note == error
    assert "MISSED" in markdown([row])


def test_a_missing_module_is_skipped_not_failed() -> None:
    outcome = run_module("nothing_here", quick=True, timeout_s=300, package=FAKE)
    assert outcome.error is None
    assert outcome.skipped
    (row,) = all_rows([outcome])
    assert row.name == "skipped"
    assert row.ok is None


def test_json_holds_rows_hardware_and_no_nan(tmp_path: Path) -> None:
    outcomes = [run_module(m, quick=True, timeout_s=300, package=FAKE) for m in ("ok", "boom")]
    path = tmp_path / "bench.json"
    write_json(path, outcomes, quick=True, info={"cpu": "x", "cores": 2}, started="now")
    doc = json.loads(path.read_text())  # strict JSON: NaN would not parse as a number here
    assert doc["hardware"] == {"cpu": "x", "cores": 2}
    assert doc["quick"] is True
    assert doc["modules"]["boom"]["error"].startswith("ValueError")
    assert [r["name"] for r in doc["rows"]] == ["quick", "unmeasured", "bench.boom failed"]
    assert doc["rows"][1]["value"] is None


def test_only_selects_modules_by_module_or_group_name() -> None:
    assert select(None) == list(MODULES)
    assert select("scale, api load,training") == ["training", "api_load", "scale"]
    assert select("api-load") == ["api_load"]
    with pytest.raises(SystemExit, match="unknown benchmark"):
        select("training,nope")


def test_the_command_reports_every_module_and_exits_non_zero_on_a_failure(
        tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "bench", "--quick", "--package", FAKE,
                           "--only", "boom,ok,nothing_here", "--json", str(out), "--markdown"],
                          cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 1, proc.stderr
    assert "failed: boom" in proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("Measured with `python -m bench --quick` on ")
    assert "| fake | quick | 1.50 steps/s | 2.00x vs nothing | >= 1x | ok |" in lines
    assert any("bench.boom failed" in line and "MISSED" in line for line in lines)
    doc = json.loads(out.read_text())
    assert set(doc["modules"]) == {"boom", "ok", "nothing_here"}
    assert doc["hardware"]["cores"] >= 1
    assert doc["hardware"]["torch"]


def test_a_clean_run_exits_zero() -> None:
    proc = subprocess.run([sys.executable, "-m", "bench", "--quick", "--package", FAKE,
                           "--only", "ok"], cwd=REPO, capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "steps/s" in proc.stdout
