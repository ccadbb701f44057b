"""Steps/s of the notebook's BN job: bnlab's trainer vs three other ways to train it.

    .venv/bin/python -m bench.training [--quick] [--epochs N] [--repeats R] [--device D]

The job: dense3 relu, BN, dense2 relu, BN, dense1 sigmoid on the notebook CSV (499 rows), tail
split 0.2 (399 training rows, 13 steps an epoch), batch 32, Adam 1e-3, 200 epochs (40 with
--quick). Every peer trains the same network from the same weights on the same split and
computes the same per-epoch metrics (training loss and accuracy, validation loss and accuracy
in eval mode), so they do the same work:

- bnlab trainer: `models.trainer.train_job`, what a worker runs (without persistence).
- plain DataLoader loop: how tutorials write it: TensorDataset + DataLoader(shuffle=True),
  `.item()` every step, validation every epoch.
- hand-tuned loop: what a careful PyTorch user writes for a tiny model: tensors preloaded on the
  device, one randperm gather per epoch and slices (views) per step, fused Adam,
  zero_grad(set_to_none=True), no host sync inside an epoch (metrics accumulate on the device
  and are read once per epoch, as bnlab does), modules called without hook dispatch; public
  torch APIs only. (Fused Adam beats foreach and for-loop Adam here, and set_to_none=True beats
  zeroing.) What bnlab does beyond it: all parameters in one flat tensor stepped by one fused
  Adam kernel call, parameter views shaped as the ops consume them (no view nodes in the
  graph), the backward engine called without torch.autograd.backward's argument checks.
- Keras 3 model.fit on the torch backend (KERAS_BACKEND=torch, in a subprocess so Keras' global
  state stays out of this one): the same layers (BatchNormalization momentum 0.9, epsilon 1e-5:
  PyTorch's defaults), validation_data, batch 32, Adam 1e-3, verbose=0.

Every peer runs with the same torch thread count (1 by default, as the worker does: a second
thread gains nothing on a model this small). Each timing is the best of `repeats` runs taken in
turns (A B C D A B C D ...), so a noisy neighbour slows every peer alike and the best run is the
least disturbed one (Keras, several times slower, gets at most two fits). Steps/s counts
optimizer steps (epochs x 13); ratios are bnlab's steps/s over the peer's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from bench.report import Row, print_table
from models.datasets import Table, notebook_csv, parse_csv
from models.devices import select_device
from models.network import build_network
from models.resolution import ResolvedJob, resolve_job
from models.spec import NOTEBOOK_BN_LAYERS, JobSpec
from models.splits import split
from models.trainer import train_job

REPO = Path(__file__).resolve().parents[1]
GROUP = "training"
# bnlab vs the tutorial loop: clearly faster; vs the hand-tuned one: at least as fast
TARGET_VS_PLAIN = 1.5
TARGET_VS_TUNED = 1.0


def load_table() -> Table:
    return parse_csv(notebook_csv())


def notebook_job(table: Table, epochs: int, seed: int = 0) -> ResolvedJob:
    spec = JobSpec.model_validate({
        "dataset": {"id": "notebook"}, "network": {"layers": NOTEBOOK_BN_LAYERS},
        "training": {"epochs": epochs, "batch_size": 32, "validation_split": 0.2, "split": "tail",
                     "optimizer": {"name": "adam", "lr": 1e-3}, "seed": seed}})
    return resolve_job(spec, n_features=table.n_features, n_classes=table.n_classes,
                       n_rows=table.n_rows)


def _split(job: ResolvedJob, table: Table) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                     torch.Tensor]:
    """(x_train, y_train, x_val, y_val), float32 on the CPU; y as a (N, 1) column."""
    t = job.spec.training
    train_idx, val_idx = split(table.y, validation_split=t.validation_split, how=t.split,
                               seed=t.seed)
    X = torch.from_numpy(table.X).float()
    y = torch.from_numpy(table.y).float().unsqueeze(1)
    return X[train_idx], y[train_idx], X[val_idx], y[val_idx]


# ---------------------------------------------------------------------------- the peers


def bnlab(job: ResolvedJob, table: Table, device: torch.device) -> float:
    """The trainer a worker runs; returns seconds."""
    start = time.perf_counter()
    train_job(job, table, device=device)
    return time.perf_counter() - start


def plain_loop(job: ResolvedJob, table: Table, device: torch.device) -> float:
    """A tutorial loop; returns seconds."""
    t = job.spec.training
    x_train, y_train, x_val, y_val = _split(job, table)
    train = DataLoader(TensorDataset(x_train, y_train), batch_size=t.batch_size, shuffle=True)
    xv, yv = x_val.to(device), y_val.to(device)
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
            correct += int(((out > 0).float() == yb).sum().item())
            seen += len(xb)
        model.eval()
        with torch.no_grad():
            out = model(xv)
            _epoch = (total / seen, correct / seen, loss_fn(out, yv).item(),
                      ((out > 0).float() == yv).float().mean().item())
    return time.perf_counter() - start


def tuned_loop(job: ResolvedJob, table: Table, device: torch.device) -> float:
    """The fastest plain-PyTorch loop we could write for this job; returns seconds."""
    t = job.spec.training
    x_train, y_train, x_val, y_val = (a.to(device) for a in _split(job, table))
    n, bs = len(x_train), t.batch_size
    model = build_network(job.network, seed=t.seed).to(device)
    layers = list(model)  # called with .forward: no hook dispatch per module
    params = list(model.parameters())
    try:
        opt = torch.optim.Adam(params, lr=t.optimizer.lr, eps=t.optimizer.eps, fused=True)
    except (RuntimeError, TypeError, ValueError):
        opt = torch.optim.Adam(params, lr=t.optimizer.lr, eps=t.optimizer.eps, foreach=True)
    gen = torch.Generator(device=device).manual_seed(t.seed)
    starts = list(range(0, n, bs))

    def forward(x: torch.Tensor) -> torch.Tensor:
        for m in layers:
            x = m.forward(x)
        return x

    start = time.perf_counter()
    for _ in range(t.epochs):
        model.train()
        perm = torch.randperm(n, device=device, generator=gen)
        xs, ys = x_train[perm], y_train[perm]  # one gather per epoch; batches are views
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), dtype=torch.int64, device=device)
        for s in starts:
            xb, yb = xs[s:s + bs], ys[s:s + bs]
            out = forward(xb)
            loss = F.binary_cross_entropy_with_logits(out, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                loss_sum.add_(loss, alpha=len(xb))
                correct.add_(((out > 0) == (yb > 0.5)).sum())
        model.eval()
        with torch.no_grad():
            out = forward(x_val)
            val_loss = F.binary_cross_entropy_with_logits(out, y_val)
            val_acc = ((out > 0) == (y_val > 0.5)).float().mean()
            # the epoch's one host read, as bnlab's
            _epoch = torch.stack([loss_sum / n, correct / n, val_loss, val_acc]).tolist()
    return time.perf_counter() - start


KERAS_SCRIPT = r"""
import json, sys, time
import numpy as np
import torch
torch.set_num_threads(int(sys.argv[2]))
import keras
x_train, y_train, x_val, y_val, epochs = json.loads(sys.stdin.read())
x_train, y_train = np.asarray(x_train, "float32"), np.asarray(y_train, "float32")
x_val, y_val = np.asarray(x_val, "float32"), np.asarray(y_val, "float32")

def build():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((x_train.shape[1],)),
        keras.layers.Dense(3, activation="relu"),
        keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5),
        keras.layers.Dense(2, activation="relu"),
        keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5),
        keras.layers.Dense(1, activation="sigmoid")])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy",
                  metrics=["accuracy"])
    return model

def fit(model, n):
    start = time.perf_counter()
    model.fit(x_train, y_train, batch_size=32, epochs=n, validation_data=(x_val, y_val),
              shuffle=True, verbose=0)
    return time.perf_counter() - start

fit(build(), 2)  # warm-up: first-call paths, allocator
times = [fit(build(), epochs) for _ in range(int(sys.argv[1]))]
print(json.dumps({"seconds": times, "keras": keras.__version__,
                  "backend": keras.backend.backend()}))
"""


def keras_fit(job: ResolvedJob, table: Table, repeats: int, threads: int,
              device: torch.device) -> tuple[list[float], str]:
    """Keras 3 on the torch backend, in a subprocess; returns the fits' seconds and a note."""
    x_train, y_train, x_val, y_val = _split(job, table)
    payload = json.dumps([x_train.tolist(), y_train.tolist(), x_val.tolist(), y_val.tolist(),
                          job.spec.training.epochs])
    env = {**os.environ, "KERAS_BACKEND": "torch"}
    if device.type == "cpu":  # Keras' torch backend takes a GPU whenever it sees one
        env["CUDA_VISIBLE_DEVICES"] = ""
    proc = subprocess.run([sys.executable, "-c", KERAS_SCRIPT, str(repeats), str(threads)],
                          input=payload, capture_output=True, text=True, env=env, timeout=900)
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(tail[0])
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return out["seconds"], f"Keras {out['keras']}, {out['backend']} backend"


def keras_available() -> bool:
    """Keras 3 importable (its own import needs KERAS_BACKEND set, so ask for the spec only)."""
    import importlib.util

    return importlib.util.find_spec("keras") is not None


# ---------------------------------------------------------------------------- the bench


Peer = Callable[[ResolvedJob, Table, torch.device], float]
PEERS: dict[str, Peer] = {
    "bnlab trainer": bnlab,
    "plain DataLoader loop": plain_loop,
    "hand-tuned PyTorch loop": tuned_loop,
}


def measure(*, epochs: int, repeats: int, device: torch.device, threads: int,
            keras: bool = True) -> list[Row]:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _measure(epochs=epochs, repeats=repeats, device=device, threads=threads,
                        keras=keras)
    finally:  # a caller in the same process (a test) keeps its own setting
        torch.set_num_threads(before)


def _measure(*, epochs: int, repeats: int, device: torch.device, threads: int,
             keras: bool) -> list[Row]:
    table = load_table()
    job, warm = notebook_job(table, epochs), notebook_job(table, 2)
    steps = job.steps_per_epoch * epochs
    for peer in PEERS.values():  # warm-up: allocator, kernels, first-call paths
        peer(warm, table, device)
    best: dict[str, float] = {}
    for _ in range(repeats):  # in turns: a noisy neighbour slows every peer alike
        for name, peer in PEERS.items():
            seconds = peer(job, table, device)
            best[name] = min(best.get(name, seconds), seconds)
    keras_note = ""
    if keras and keras_available():
        try:
            # Keras is several times slower: two fits are plenty to see through the noise
            secs, keras_note = keras_fit(job, table, min(repeats, 2), threads, device)
            best["Keras 3 model.fit"] = min(secs)
        except Exception as exc:  # reported as a row, the other peers still count
            keras_note = f"failed: {exc}"
    elif keras:
        keras_note = "skipped: keras is not installed"

    ours = best["bnlab trainer"]
    where = f"{device}, {threads} thread{'s' if threads > 1 else ''}, {epochs} epochs"
    rows = [Row(GROUP, "bnlab trainer", steps / ours, "steps/s",
                note=f"{where}, best of {repeats}")]
    for name in PEERS:
        if name == "bnlab trainer":
            continue
        s = best[name]
        # ratio: bnlab's speed over the peer's (>1: bnlab is faster)
        target, ok = "", None
        if name == "plain DataLoader loop":
            target, ok = f">= {TARGET_VS_PLAIN}x", s / ours >= TARGET_VS_PLAIN
        elif name == "hand-tuned PyTorch loop":
            target, ok = f">= {TARGET_VS_TUNED}x", s / ours >= TARGET_VS_TUNED
        rows.append(Row(GROUP, name, steps / s, "steps/s", ratio=s / ours,
                        ratio_of="bnlab speed-up", target=target, ok=ok))
    if "Keras 3 model.fit" in best:
        s = best["Keras 3 model.fit"]
        rows.append(Row(GROUP, "Keras 3 model.fit", steps / s, "steps/s", ratio=s / ours,
                        ratio_of="bnlab speed-up", note=keras_note))
    elif keras:
        rows.append(Row(GROUP, "Keras 3 model.fit", 0.0, "steps/s", note=keras_note))
    return rows


def run(quick: bool) -> list[Row]:
    return measure(epochs=40 if quick else 200, repeats=3 if quick else 5,
                   device=select_device(os.environ.get("BNLAB_BENCH_DEVICE", "cpu")), threads=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="40 epochs instead of 200")
    parser.add_argument("--epochs", type=int, default=None, help="default 200 (40 with --quick)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="runs per peer, best kept (default 5, 3 with --quick)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--no-keras", action="store_true", help="leave Keras out")
    args = parser.parse_args()
    rows = measure(epochs=args.epochs or (40 if args.quick else 200),
                   repeats=args.repeats or (3 if args.quick else 5),
                   device=select_device(args.device), threads=args.threads,
                   keras=not args.no_keras)
    print_table(rows)


if __name__ == "__main__":
    main()
