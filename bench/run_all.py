"""Every benchmark, one table: `python -m bench [--quick] [--only a,b] [--json PATH] [--markdown]`.

Each module (bench.training, bench.experiments, bench.cnn, bench.service, bench.api_load,
bench.inference, bench.export, bench.scale, bench.study) runs in a child process of its own:
torch thread settings, Keras' backend, started servers and a crash stay there, and one module's
failure (an exception, a crash, a timeout) becomes an error row while the others still run; the
exit status is then 1. A module that does not exist (bench.export is optional) is reported as
skipped, not failed.

Opt-in modules (OPT_IN: bench.chaos, a 5-minute fault-injection run, 1 minute with --quick)
are left out of the default run and run only when --only names them.

--quick keeps every module short (the whole run is a minute or two on 2 cores); --json writes
the rows with a description of the machine (bench.hardware) and each module's seconds;
--markdown prints the README's table under a line naming the machine; --device D sets
BNLAB_BENCH_DEVICE for the modules that train (training, experiments, cnn; default cpu).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import hardware
from bench.report import Row, markdown, print_table

MODULES = ("training", "experiments", "cnn", "service", "api_load", "inference", "export",
           "scale", "study")
# Run only when --only names them: too long for the everything-run CI does with --quick.
OPT_IN = ("chaos",)
REPO = Path(__file__).resolve().parents[1]


@dataclass
class Outcome:
    module: str
    rows: list[Row] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None  # the module failed: its exception, exit status or timeout
    skipped: str | None = None  # the module does not exist


def _normalise(name: str) -> str:
    return name.strip().lower().replace("-", "_").replace(" ", "_")


def select(only: str | None) -> list[str]:
    """Modules named in `--only` (module or group names: "api_load", "api-load", "api load");
    without it every module but the OPT_IN ones."""
    if not only:
        return list(MODULES)
    wanted = [_normalise(n) for n in only.split(",") if n.strip()]
    known = (*MODULES, *OPT_IN)
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise SystemExit(f"unknown benchmark(s) {', '.join(unknown)}: choose from "
                         f"{', '.join(known)}")
    return [m for m in known if m in wanted]


def run_module(module: str, *, quick: bool, timeout_s: float, package: str = "bench"
               ) -> Outcome:
    """<package>.<module>.run(quick) in a child process; its rows come back through a JSON
    file."""
    if importlib.util.find_spec(f"{package}.{module}") is None:
        return Outcome(module, skipped=f"{package}.{module} does not exist")
    with tempfile.TemporaryDirectory(prefix="bnlab-bench-") as tmp:
        out = Path(tmp) / "rows.json"
        cmd = [sys.executable, "-m", "bench.run_all", "--child", f"{package}.{module}",
               "--rows-to", str(out)]
        if quick:
            cmd.append("--quick")
        start = time.perf_counter()
        try:
            # the child's own output (progress, warnings) goes to this terminal's stderr
            proc = subprocess.run(cmd, cwd=REPO, stdout=sys.stderr, timeout=timeout_s,
                                  check=False)
        except subprocess.TimeoutExpired:
            return Outcome(module, seconds=time.perf_counter() - start,
                           error=f"timed out after {timeout_s:.0f} s")
        seconds = time.perf_counter() - start
        if not out.exists():
            return Outcome(module, seconds=seconds,
                           error=f"exited with status {proc.returncode} and no rows")
        data = json.loads(out.read_text())
    rows = [Row(**r) for r in data["rows"]]
    return Outcome(module, rows, seconds, data.get("error"))


def _child(module: str, quick: bool, rows_to: Path) -> int:
    """Run one module (dotted name) here; write {"rows": [...], "error": str | None} to
    `rows_to`."""
    import traceback

    rows: list[Row] = []
    error = None
    try:
        mod = importlib.import_module(module)
        rows = list(mod.run(quick))
    except BaseException as exc:  # reported as the module's error row, whatever it is
        traceback.print_exc()
        error = f"{type(exc).__name__}: {exc}".strip()
    rows_to.write_text(json.dumps({"rows": [r.as_json() for r in rows], "error": error}))
    return 0 if error is None else 1


def all_rows(outcomes: list[Outcome]) -> list[Row]:
    rows: list[Row] = []
    for o in outcomes:
        rows += o.rows
        if o.error is not None:
            rows.append(Row(o.module.replace("_", " "), f"bench.{o.module} failed", 0.0, "",
                            ok=False, note=o.error[:300]))
        elif o.skipped is not None:
            rows.append(Row(o.module.replace("_", " "), "skipped", 0.0, "", note=o.skipped))
    return rows


def write_json(path: Path, outcomes: list[Outcome], *, quick: bool, info: dict[str, Any],
               started: str) -> None:
    doc = {
        "started": started,
        "quick": quick,
        "hardware": info,
        "modules": {o.module: {"seconds": round(o.seconds, 2), "error": o.error,
                               "skipped": o.skipped} for o in outcomes},
        "rows": [r.as_json() for r in all_rows(outcomes)],
    }
    # NaN/inf are not JSON: a module that measured nothing reports null
    path.write_text(json.dumps(_finite(doc), indent=2) + "\n")


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench",
                                     description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short runs (a minute or two)")
    parser.add_argument("--only", help=f"comma-separated: {','.join(MODULES)}; opt-in, run "
                                       f"only when named: {','.join(OPT_IN)}")
    parser.add_argument("--json", type=Path, metavar="PATH", help="write rows + hardware here")
    parser.add_argument("--markdown", action="store_true",
                        help="print the README table (with a machine line) instead of a table")
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds per module (default 1800, 300 with --quick)")
    parser.add_argument("--device", default=None,
                        help="cpu, cuda, cuda:N or auto for the training modules (sets "
                             "BNLAB_BENCH_DEVICE; default: its value, else cpu)")
    # tests: run the modules of another package (any names --only gives)
    parser.add_argument("--package", default="bench", help=argparse.SUPPRESS)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--rows-to", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        raise SystemExit(_child(args.child, args.quick, args.rows_to))
    if args.device:  # the children inherit it
        os.environ["BNLAB_BENCH_DEVICE"] = args.device

    if args.package == "bench":
        modules = select(args.only)
    else:
        modules = [_normalise(n) for n in (args.only or "").split(",") if n.strip()]
    started = datetime.now(UTC).isoformat(timespec="seconds")
    info = hardware.describe()
    timeout = args.timeout or (300.0 if args.quick else 1800.0)
    outcomes: list[Outcome] = []
    for module in modules:
        print(f"bench.{module} ...", file=sys.stderr, flush=True)
        outcomes.append(run_module(module, quick=args.quick, timeout_s=timeout,
                                   package=args.package))
        o = outcomes[-1]
        state = (f"FAILED: {o.error}" if o.error is not None
                 else o.skipped or f"{len(o.rows)} rows")
        print(f"bench.{module}: {o.seconds:.1f} s, {state}", file=sys.stderr, flush=True)

    rows = all_rows(outcomes)
    if args.json:
        write_json(args.json, outcomes, quick=args.quick, info=info, started=started)
    if args.markdown:
        mode = " --quick" if args.quick else ""
        print(f"Measured with `python -m bench{mode}` on {hardware.line(info)} "
              f"({started[:10]}).\n")
        print(markdown(rows))
    else:
        print(hardware.line(info))
        print_table(rows)
    missed = [r for r in rows if r.ok is False and not r.name.endswith(" failed")]
    failed = [o.module for o in outcomes if o.error is not None]
    if missed:
        print(f"{len(missed)} target(s) missed: " + "; ".join(
            f"{r.group} / {r.name}" for r in missed), file=sys.stderr)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
