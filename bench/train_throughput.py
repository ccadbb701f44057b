"""Steps/s of the notebook's BN job: bnlab's trainer vs a plain tutorial-style PyTorch loop.

    .venv/bin/python -m bench.train_throughput [--quick] [--epochs N] [--seeds K] [--device D]

Both train the same network (dense3 relu, BN, dense2 relu, BN, dense1 sigmoid) on the notebook
CSV with the tail 0.2 split, batch 32, Adam 1e-3. The plain loop is how most tutorials write it:
TensorDataset + DataLoader(shuffle=True), `.item()` every step, model.eval() validation every
epoch. `--seeds K` also times K seeds stacked in one loop (train_many) vs K runs one by one.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from models.datasets import Table, parse_csv
from models.devices import select_device
from models.network import build_network
from models.spec import NOTEBOOK_BN_LAYERS, JobSpec, ResolvedJob, resolve_job
from models.splits import split
from models.trainer import train_job, train_many

CSV = Path(__file__).resolve().parents[2] / "shared" / "data" / "concertriccir2.csv"


def notebook_job(table: Table, epochs: int, seed: int = 0) -> ResolvedJob:
    spec = JobSpec.model_validate({
        "dataset": {"id": "notebook"}, "network": {"layers": NOTEBOOK_BN_LAYERS},
        "training": {"epochs": epochs, "batch_size": 32, "validation_split": 0.2, "split": "tail",
                     "optimizer": {"name": "adam", "lr": 1e-3}, "seed": seed}})
    return resolve_job(spec, n_features=table.n_features, n_classes=table.n_classes,
                       n_rows=table.n_rows)


def plain_loop(job: ResolvedJob, table: Table, device: torch.device) -> float:
    """A tutorial loop; returns seconds."""
    t = job.spec.training
    train_idx, val_idx = split(table.y, validation_split=t.validation_split, how=t.split,
                               seed=t.seed)
    X, y = torch.from_numpy(table.X), torch.from_numpy(table.y).float().unsqueeze(1)
    train = DataLoader(TensorDataset(X[train_idx], y[train_idx]), batch_size=t.batch_size,
                       shuffle=True)
    xv, yv = X[val_idx].to(device), y[val_idx].to(device)
    model = build_network(job.network, seed=t.seed).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=t.optimizer.lr, eps=t.optimizer.eps)
    loss_fn = nn.BCEWithLogitsLoss()
    start = time.perf_counter()
    for _ in range(t.epochs):
        model.train()
        total, correct, seen = 0.0, 0, 0
        for xb, yb in train:
            xb, yb = xb.to(device), yb.to(device)
            opt.zero_grad()
            out = model(xb)
            loss = loss_fn(out, yb)
            loss.backward()
            opt.step()
            total += loss.item() * len(xb)
            correct += ((out > 0).float() == yb).sum().item()
            seen += len(xb)
        model.eval()
        with torch.no_grad():
            out = model(xv)
            _val = (loss_fn(out, yv).item(), ((out > 0).float() == yv).float().mean().item())
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="40 epochs instead of 200")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--seeds", type=int, default=0, help="also time K stacked seeds")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads for both loops (a second gains nothing here)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    epochs = args.epochs or (40 if args.quick else 200)
    device = select_device(args.device)
    table = parse_csv(CSV.read_bytes())
    job = notebook_job(table, epochs)
    steps = job.steps_per_epoch * epochs

    train_job(notebook_job(table, 2), table, device=device)  # warm-up (allocator, kernels)
    plain_loop(notebook_job(table, 2), table, device)
    plain_s = plain_loop(job, table, device)
    start = time.perf_counter()
    train_job(job, table, device=device)
    ours_s = time.perf_counter() - start
    print(f"device {device}, {epochs} epochs x {job.steps_per_epoch} steps, "
          f"{torch.get_num_threads()} threads")
    print(f"plain loop : {steps / plain_s:8.0f} steps/s ({plain_s:.2f} s)")
    print(f"bnlab      : {steps / ours_s:8.0f} steps/s ({ours_s:.2f} s)")
    print(f"ratio      : {plain_s / ours_s:.2f}x (target >= 1.5x)")
    if args.seeds > 1:
        k = args.seeds
        start = time.perf_counter()
        for s in range(k):
            train_job(notebook_job(table, epochs, seed=s), table, device=device)
        one_by_one = time.perf_counter() - start
        start = time.perf_counter()
        train_many(job, table, seeds=list(range(k)), device=device)
        stacked = time.perf_counter() - start
        print(f"{k} seeds  : one by one {one_by_one:.2f} s, stacked {stacked:.2f} s, "
              f"{one_by_one / stacked:.1f}x")


if __name__ == "__main__":
    main()
