"""The README's curl walk-through, run as written (bash, from the checkout) against a real
`bnlab serve`: the notebook's two networks for 200 epochs on the CSV shipped in the repository."""

from __future__ import annotations

import json
import re
import struct
import subprocess
from pathlib import Path
from typing import Any

import httpx
import onnx
import pytest

from devtools.procs import PYTHON, REPO, embedded_serve

pytestmark = pytest.mark.integration

SECTION = "## Reproducing the notebook with curl"


def walkthrough() -> str:
    """The first bash block of the README's curl section, verbatim."""
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index(SECTION):]
    match = re.search(r"```bash\n(.*?)```", section, re.S)
    assert match, "the curl section has no bash block"
    return match.group(1)


def json_objects(text: str) -> list[dict[str, Any]]:
    """Every JSON object in curl's output (its bodies end without a newline, so they run on)."""
    decoder, found, at = json.JSONDecoder(), [], 0
    while (at := text.find("{", at)) != -1:
        try:
            value, end = decoder.raw_decode(text, at)
        except json.JSONDecodeError:
            at += 1
            continue
        found.append(value)
        at = end
    return found


def test_the_walkthrough_names_only_files_in_the_checkout() -> None:
    script = walkthrough()
    for path in re.findall(r"file=@(\S+)", script):
        assert (REPO / path).is_file(), path
    assert script.startswith("URL=http://127.0.0.1:8000\n")


@pytest.mark.timeout(600)
def test_the_readme_walkthrough_runs_as_written(tmp_path: Path) -> None:
    with embedded_serve(tmp_path) as (base_url, _):
        script = walkthrough().replace("URL=http://127.0.0.1:8000\n", f"URL={base_url}\n", 1)
        # The outputs the script writes (PNGs, weights, ONNX) land in a folder of their own;
        # `models/data/...` is read from the checkout, as a user running it from a clone does.
        out = tmp_path / "out"
        out.mkdir()
        script = f"cd {REPO}\n" + script.replace("-o ", f"-o {out}/")
        script += 'echo; echo "IDS $PLAIN $BN"\n'
        done = subprocess.run(["bash", "-c", script], capture_output=True, text=True,
                              timeout=540)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        ids = re.search(r"^IDS (\S+) (\S+)$", done.stdout, re.M)
        assert ids, done.stdout[-3000:]
        plain, bn = ids.groups()

        with httpx.Client(base_url=base_url, timeout=30) as http:
            for job_id in (plain, bn):
                job = http.get(f"/v1/jobs/{job_id}").json()
                assert job["status"] == "succeeded", job
                history = http.get(f"/v1/jobs/{job_id}/history").json()
                assert history["epoch"] == list(range(1, 201))
            model = http.get(f"/v1/jobs/{bn}/model").json()
        assert model["totals"] == {"total": 40, "trainable": 30, "non_trainable": 10}

    # what the script printed: both histories (200 epochs) and the eval-mode predictions
    printed = json_objects(done.stdout)
    assert sum(len(p.get("val_accuracy", [])) == 200 for p in printed) == 2
    predictions = [p for p in printed if "probabilities" in p]
    assert len(predictions) == 1
    assert len(predictions[0]["classes"]) == 2
    # what it saved
    for name in ("notebook.png", "bn.png"):
        assert (out / name).read_bytes().startswith(b"\x89PNG\r\n\x1a\n"), name
    weights = (out / "bn.safetensors").read_bytes()
    header_len = struct.unpack("<Q", weights[:8])[0]
    assert json.loads(weights[8:8 + header_len])  # a safetensors header, not an error body
    graph = onnx.load_from_string((out / "bn.onnx").read_bytes()).graph
    assert graph.input
    assert graph.output


@pytest.mark.timeout(600)
@pytest.mark.parametrize("upload", [False, True], ids=["builtin", "csv"])
def test_the_notebook_example_runs(tmp_path: Path, upload: bool) -> None:
    """examples/notebook_reproduction.py as the README runs it, on few epochs and seeds: on the
    built-in dataset, and on the CSV uploaded from the checkout."""
    with embedded_serve(tmp_path) as (base_url, _):
        argv = [PYTHON, "examples/notebook_reproduction.py", "--url", base_url, "--epochs", "3",
                "--seeds", "2", "--out", str(tmp_path / "plots")]
        if upload:
            argv += ["--csv", "models/data/concertriccir2.csv"]
        done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=540)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert ("dataset " in done.stdout) == upload  # an upload prints its id and rows
    assert "499 rows" in done.stdout or not upload
    assert re.search(r"bn - plain final val_accuracy over 2 paired seeds", done.stdout), \
        done.stdout
    for name in ("notebook_val_accuracy.png", "experiment_val_accuracy.png"):
        assert (tmp_path / "plots" / name).read_bytes().startswith(b"\x89PNG"), name
