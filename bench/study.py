"""The `bn-claims` study through the embedded service: wall time, children, stacked speed-up.

    .venv/bin/python -m bench.study [--seeds 20] [--epochs 200]

Full run only (`python -m bench --quick` reports it skipped): the preset's seven claims with 20
seeds on the notebook's dataset and BN network, 200 epochs, POSTed to `bnlab serve` on its
embedded default (SQLite, filesystem broker, one solo worker), timed from the POST to the
report. Target: under 10 minutes on a 2-core machine. The stacked speed-up compares that wall
time with what the same children cost one after another: each distinct variant trained alone
for one seed in this process (the trainer, one thread, as the worker runs it) times its seed
count, summed over the variants.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

import httpx
import torch

from bench.report import Row, print_table
from bench.service import TERMINAL, embedded_service

GROUP = "study"
TARGET_S = 600.0


def sequential_estimate(body: dict[str, Any]) -> tuple[float, int]:
    """Seconds the study's children would take one after another (one lone run per variant,
    times its seeds), and how many children there are."""
    from models.datasets import load_table
    from models.experiment import expand
    from models.resolution import resolve_job
    from models.study import StudySpec, plan
    from models.trainer import train_job

    spec = StudySpec.model_validate(body)
    total, children = 0.0, 0
    for _, exp in plan(spec):
        kids = expand(exp, max_children=100_000)
        children += len(kids)
        firsts = {c.variant: c for c in kids if c.seed == kids[0].seed}
        for child in firsts.values():
            table = load_table(child.spec.dataset, content=None)
            job = resolve_job(child.spec, input_shape=table.input_shape,
                              n_classes=table.n_classes, n_rows=table.n_rows)
            start = time.perf_counter()
            train_job(job, table, device=torch.device("cpu"))
            total += (time.perf_counter() - start) * spec.seeds
    return total, children


def measure(seeds: int, epochs: int, report_to: Path | None = None) -> list[Row]:
    torch.set_num_threads(1)
    body: dict[str, Any] = {"preset": "bn-claims", "seeds": seeds,
                            "base": {"dataset": {"name": "concertriccir2"},
                                     "network": {"hidden": [3, 2], "activation": "relu",
                                                 "batchnorm": "after_activation"},
                                     "training": {"epochs": epochs, "batch_size": 32,
                                                  "validation_split": 0.2, "split": "tail"}}}
    with embedded_service(BNLAB_TORCH_THREADS="1") as svc, \
            httpx.Client(base_url=svc.base_url, timeout=60) as client:
        start = time.perf_counter()
        r = client.post("/v1/studies", json=body)
        r.raise_for_status()
        study = r.json()
        while study["status"] not in TERMINAL:
            time.sleep(1.0)
            study = client.get(f"/v1/studies/{study['id']}").json()
        report = client.get(f"/v1/studies/{study['id']}/report").json()
        wall = time.perf_counter() - start
        if report_to is not None:  # the report as the README shows it
            report_to.write_text(client.get(f"/v1/studies/{study['id']}/report.md").text)
    children = int(study["cost"]["children"])
    seq_s, planned = sequential_estimate(body)
    verdicts = ", ".join(f"{c['claim']}: {c['verdict']}" for c in report["claims"])
    return [
        Row(GROUP, f"bn-claims, {seeds} seeds, {epochs} epochs (embedded service)", wall, "s",
            target=f"< {TARGET_S:.0f} s", ok=wall < TARGET_S and study["status"] == "succeeded",
            note=f"{children} children ({planned} planned), status {study['status']}"),
        Row(GROUP, "its children one after another (estimated: one lone run per variant x "
            "seeds)", seq_s, "s", ratio=seq_s / wall, ratio_of="stacked speed-up",
            note=verdicts),
    ]


def run(quick: bool) -> list[Row]:
    if quick:
        return [Row(GROUP, "bn-claims study", 0.0, "s",
                    note="skipped with --quick: the study module is a full run only")]
    return measure(int(os.environ.get("BNLAB_BENCH_STUDY_SEEDS", "20")), 200)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--report", type=Path, default=None,
                        help="also write the study's Markdown report here")
    args = parser.parse_args()
    print_table(measure(args.seeds, args.epochs, args.report))


if __name__ == "__main__":
    main()
