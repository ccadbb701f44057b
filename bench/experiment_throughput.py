"""Many seeds of the notebook's BN job: stacked in one loop (train_many) vs one job after another.

    .venv/bin/python -m bench.experiment_throughput [--quick] [--seeds 16 64] [--epochs 200]

The job is the notebook's (dense3 relu, BN, dense2 relu, BN, dense1 sigmoid) on its CSV, tail
split 0.2, batch 32, Adam 1e-3. "Sequential" is what K separate jobs cost: `train_job` per seed,
each building its own loop. "Batched" is one `train_many` over the K seeds, what an experiment's
stack costs a worker. Both run with torch.set_num_threads(1) by default, as the worker does.
Epochs/s counts model-epochs (K x epochs over the seconds). The last line per K checks that both
give each seed the same final val_accuracy (they agree within float rounding; a row's
prediction flipping over 100 validation rows would show as 0.01).
"""

from __future__ import annotations

import argparse
import time

import torch

from bench.train_throughput import CSV, notebook_job
from models.datasets import Table, parse_csv
from models.devices import select_device
from models.trainer import train_job, train_many

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="40 epochs instead of 200")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--seeds", type=int, nargs="+", default=[16, 64],
                        help="stack sizes K to time (default 16 64)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    epochs = args.epochs or (40 if args.quick else 200)
    device = select_device(args.device)
    table = parse_csv(CSV.read_bytes())

    batched(table, [0, 1], 2, device)  # warm-up (allocator, kernels, first-call paths)
    sequential(table, [0], 2, device)
    print(f"device {device}, {torch.get_num_threads()} torch thread(s), notebook BN job, "
          f"{epochs} epochs x {notebook_job(table, epochs).steps_per_epoch} steps")
    for k in args.seeds:
        seeds = list(range(k))
        seq_s, seq_acc = sequential(table, seeds, epochs, device)
        bat_s, bat_acc = batched(table, seeds, epochs, device)
        ratio = seq_s / bat_s
        target = TARGETS.get(k)
        verdict = "" if target is None else (
            f" (target >= {target:.0f}x: {'met' if ratio >= target else 'MISSED'})")
        diff = max(abs(a - b) for a, b in zip(seq_acc, bat_acc, strict=True))
        print(f"K={k:<3} sequential {seq_s:7.2f} s {k * epochs / seq_s:8.0f} epochs/s | "
              f"batched {bat_s:6.2f} s {k * epochs / bat_s:8.0f} epochs/s | "
              f"{ratio:5.1f}x{verdict}")
        print(f"      final val_accuracy, batched vs sequential: max abs diff {diff:.4f} "
              f"over {k} seeds")


if __name__ == "__main__":
    main()
