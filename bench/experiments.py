"""Many seeds of the notebook's BN job: stacked in one loop (train_many) vs one job after another.

    .venv/bin/python -m bench.experiments [--quick] [--seeds 16 64] [--epochs 200]

The job is the notebook's (dense3 relu, BN, dense2 relu, BN, dense1 sigmoid) on its CSV, tail
split 0.2, batch 32, Adam 1e-3. "Sequential" is what K separate jobs cost: `train_job` per seed,
each building its own loop. "Batched" is one `train_many` over the K seeds, what an experiment's
stack costs a worker. Both run with torch.set_num_threads(1), as the worker does. Epochs/s
counts model-epochs (K x epochs over the seconds). Each K also checks that both give each seed
the same final val_accuracy (they agree within float rounding; a row's prediction flipping over
100 validation rows would show as 0.01).
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from bench.report import Row, print_table
from bench.training import load_table, notebook_job
from models.datasets import Table
from models.devices import select_device
from models.trainer import train_job, train_many

GROUP = "experiments"
TARGETS = {16: 12.0, 64: 30.0}  # batched vs sequential, on a 2-core CPU, 1 torch thread


def sequential(table: Table, seeds: list[int], epochs: int, device: torch.device
               ) -> tuple[float, list[float]]:
    start = time.perf_counter()
    finals = [train_job(notebook_job(table, epochs, seed=s), table, device=device)
              .final_metrics["val_accuracy"] for s in seeds]
    return time.perf_counter() - start, finals


def batched(table: Table, seeds: list[int], epochs: int, device: torch.device
            ) -> tuple[float, list[float]]:
    start = time.perf_counter()
    results = train_many(notebook_job(table, epochs), table, seeds=seeds, device=device)
    return time.perf_counter() - start, [r.final_metrics["val_accuracy"] for r in results]


def measure(*, stacks: list[int], epochs: int, device: torch.device, threads: int) -> list[Row]:
    torch.set_num_threads(threads)
    table = load_table()
    batched(table, [0, 1], 2, device)  # warm-up (allocator, kernels, first-call paths)
    sequential(table, [0], 2, device)
    rows: list[Row] = []
    for k in stacks:
        seeds = list(range(k))
        seq_s, seq_acc = sequential(table, seeds, epochs, device)
        bat_s, bat_acc = batched(table, seeds, epochs, device)
        ratio = seq_s / bat_s
        target = TARGETS.get(k)
        diff = max(abs(a - b) for a, b in zip(seq_acc, bat_acc, strict=True))
        where = f"{device}, {threads} thread{'s' if threads > 1 else ''}, {epochs} epochs"
        rows.append(Row(GROUP, f"{k} seeds one job after another", k * epochs / seq_s,
                        "epochs/s", note=where))
        rows.append(Row(GROUP, f"{k} seeds stacked (train_many)", k * epochs / bat_s,
                        "epochs/s", ratio=ratio, ratio_of="vs one after another",
                        target="" if target is None else f">= {target:g}x",
                        ok=None if target is None else ratio >= target,
                        note=f"final val_accuracy max abs diff {diff:.4f}"))
    return rows


def run(quick: bool) -> list[Row]:
    device = select_device(os.environ.get("BNLAB_BENCH_DEVICE", "cpu"))
    return measure(stacks=[16] if quick else [16, 64], epochs=40 if quick else 200,
                   device=device, threads=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="K = 16 only, 40 epochs")
    parser.add_argument("--epochs", type=int, default=None, help="default 200 (40 with --quick)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="stack sizes K to time (default 16 64; 16 with --quick)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = parser.parse_args()
    print_table(measure(stacks=args.seeds or ([16] if args.quick else [16, 64]),
                        epochs=args.epochs or (40 if args.quick else 200),
                        device=select_device(args.device), threads=args.threads))


if __name__ == "__main__":
    main()
