"""A small BN CNN on digits: bnlab's trainer vs two plain-PyTorch loops, and 16 seeds stacked.

    .venv/bin/python -m bench.cnn [--quick] [--epochs N] [--repeats R] [--stack K] [--device D]
    .venv/bin/python -m bench --only cnn [--quick] [--device D]

The job: scikit-learn's digits (1,797 images of 1x8x8, pixels scaled from 0-16 to 0-1, ten
classes), tail split 0.2 (1,437 training rows, 23 steps an epoch), batch 64, Adam 1e-3, 30
epochs (3 with --quick), the shorthand network {"conv": [16, 32], "kernel_size": 3, "pool":
"none", "reduce": "global_avg_pool", "batchnorm": "before_activation"}: conv3x3(16) -> BN2d ->
ReLU -> conv3x3(32) -> BN2d -> ReLU -> global average pool -> dense(10). Every peer trains that
network from the same initial weights (bnlab's `build_network` draws them) on the same split and
computes the same per-epoch metrics (training loss and accuracy, eval-mode validation loss and
accuracy), so they do the same work:

- bnlab trainer: `models.trainer.train_many` with one seed (K = 1), what a worker runs without
  persistence; its time includes building the loop (data to the device, the model).
- plain DataLoader loop: how a user script is written: an `nn.Sequential` of nn.Conv2d /
  nn.BatchNorm2d / nn.ReLU / nn.AdaptiveAvgPool2d / nn.Flatten / nn.Linear, torch.optim.Adam,
  DataLoader(TensorDataset, shuffle=True) with each batch moved to the device, validation in
  eval mode every epoch, the epoch's metrics read with `.item()` once per epoch.
- hand-tuned PyTorch loop: the tensors on the device, one randperm gather per epoch and slices
  (views) per step, no DataLoader, zero_grad(set_to_none=True), fused Adam where the device has
  it (else foreach), modules called without hook dispatch, metrics accumulated on the device
  and read once per epoch.
- K = 16 stacked: one `train_many` over 16 seeds (grouped convolutions, one optimizer step for
  all) against 16 `train_many` runs of one seed each, one after another.

The plain and hand-tuned loops run in NCHW or channels_last, whichever measured faster in the
warm-up on this device (the row says which); their timings leave out building the model and the
data, bnlab's include them. Each timing is the median of `repeats` runs (3) taken in turns (A B C
A B C ...), so a noisy neighbour slows every peer alike; the 16-seed pair, long on a CPU, runs
once with --quick. Every peer runs with the same torch thread count (1 by default, as the worker
does). On CUDA each timing is bracketed by torch.cuda.synchronize(). Ratios are the peer's
seconds over bnlab's (> 1: bnlab is faster); targets are reported, never asserted: bnlab >= 1.5x
the plain loop, 16 stacked seeds >= 4x faster than 16 runs one after another.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from bench.report import Row, print_table
from models.datasets import Table
from models.devices import select_device
from models.network import build_network
from models.resolution import ResolvedJob, resolve_job
from models.spec import JobSpec
from models.splits import split
from models.trainer import train_many

GROUP = "cnn"
NETWORK = {"conv": [16, 32], "kernel_size": 3, "pool": "none", "reduce": "global_avg_pool",
           "batchnorm": "before_activation"}
INPUT_SHAPE = (1, 8, 8)
EPOCHS, QUICK_EPOCHS = 30, 3
REPEATS = 3  # runs per K = 1 peer and per stack comparison (--quick: 1 for the stack)
STACK = 16
TARGET_VS_PLAIN = 1.5  # bnlab vs the user-script loop
TARGET_STACKED = 4.0  # 16 seeds stacked vs one after another


def load_table() -> Table:
    """scikit-learn's digits as a (1797, 1, 8, 8) image table, pixels scaled to [0, 1], rows in
    the file's order (built here rather than through models.datasets, so the bench depends on
    scikit-learn alone)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    X = (np.asarray(bunch.images, dtype=np.float32) / 16.0).reshape(-1, *INPUT_SHAPE)
    names = [f"c0_y{i}_x{j}" for i in range(8) for j in range(8)]
    return Table(X=np.ascontiguousarray(X), y=np.asarray(bunch.target, dtype=np.int64),
                 feature_names=names, classes=[str(c) for c in bunch.target_names],
                 label_column="target")


def cnn_job(table: Table, epochs: int, seed: int = 0) -> ResolvedJob:
    spec = JobSpec.model_validate({
        "dataset": {"name": "digits"}, "network": NETWORK,
        "training": {"epochs": epochs, "batch_size": 64, "validation_split": 0.2,
                     "split": "tail", "optimizer": {"name": "adam", "lr": 1e-3}, "seed": seed}})
    return resolve_job(spec, input_shape=table.input_shape, n_classes=table.n_classes,
                       n_rows=table.n_rows)


def _split(job: ResolvedJob, table: Table) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                     torch.Tensor]:
    """(x_train, y_train, x_val, y_val) on the CPU, the trainer's split: x (N, 1, 8, 8) float32,
    y (N,) int64."""
    t = job.spec.training
    train_idx, val_idx = split(table.y, validation_split=t.validation_split, how=t.split,
                               seed=t.seed)
    X, y = torch.from_numpy(table.X), torch.from_numpy(table.y)
    return X[train_idx], y[train_idx], X[val_idx], y[val_idx]


def user_model(job: ResolvedJob) -> nn.Sequential:
    """The network as a user writes it in PyTorch, with bnlab's initial weights for the seed."""
    model = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))
    ref = build_network(job.network, init=job.spec.training.init, seed=job.spec.training.seed)
    ours, theirs = model.state_dict(), ref.state_dict()
    if [v.shape for v in ours.values()] != [v.shape for v in theirs.values()]:
        raise RuntimeError("the hand-written network does not match the job's network")
    model.load_state_dict(dict(zip(ours, theirs.values(), strict=True)))
    return model


def _placed(model: nn.Sequential, device: torch.device, channels_last: bool) -> nn.Sequential:
    model = model.to(device)
    if channels_last:  # Module.to takes memory_format; its type stubs do not say so
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    return model


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------- the peers

# each returns (seconds, final val_accuracy)
Peer = Callable[[ResolvedJob, Table, torch.device], tuple[float, float]]


def bnlab(job: ResolvedJob, table: Table, device: torch.device) -> tuple[float, float]:
    """The trainer a worker runs (K = 1)."""
    _sync(device)
    start = time.perf_counter()
    (result,) = train_many(job, table, seeds=[job.spec.training.seed], device=device)
    _sync(device)
    return time.perf_counter() - start, result.final_metrics["val_accuracy"]


def plain_loop(job: ResolvedJob, table: Table, device: torch.device, *,
               channels_last: bool = False) -> tuple[float, float]:
    """A user script: DataLoader, nn.Sequential, torch.optim.Adam, .item() once per epoch."""
    t = job.spec.training
    x_train, y_train, x_val, y_val = _split(job, table)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    train = DataLoader(TensorDataset(x_train, y_train), batch_size=t.batch_size, shuffle=True,
                       generator=torch.Generator().manual_seed(t.seed))
    xv = x_val.to(device).contiguous(memory_format=fmt)
    yv = y_val.to(device)
    model = _placed(user_model(job), device, channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=t.optimizer.lr, eps=t.optimizer.eps)
    loss_fn = nn.CrossEntropyLoss()
    acc = float("nan")
    _sync(device)
    start = time.perf_counter()
    for _ in range(t.epochs):
        model.train()
        total = torch.zeros((), device=device)
        correct = torch.zeros((), dtype=torch.int64, device=device)
        seen = 0
        for xb, yb in train:
            xb = xb.to(device).contiguous(memory_format=fmt)
            yb = yb.to(device)
            opt.zero_grad()
            out = model(xb)
            loss = loss_fn(out, yb)
            loss.backward()
            opt.step()
            total += loss.detach() * len(xb)
            correct += (out.argmax(1) == yb).sum()
            seen += len(xb)
        model.eval()
        with torch.no_grad():
            out = model(xv)
            _epoch = ((total / seen).item(), correct.item() / seen, loss_fn(out, yv).item(),
                      (out.argmax(1) == yv).float().mean().item())
        acc = _epoch[3]
    _sync(device)
    return time.perf_counter() - start, acc


def tuned_loop(job: ResolvedJob, table: Table, device: torch.device, *,
               channels_last: bool = False) -> tuple[float, float]:
    """The fastest plain-PyTorch loop we could write for this job (public APIs only)."""
    t = job.spec.training
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x_train, y_train, x_val, y_val = (a.to(device) for a in _split(job, table))
    x_train = x_train.contiguous(memory_format=fmt)
    x_val = x_val.contiguous(memory_format=fmt)
    n, bs = len(x_train), t.batch_size
    model = _placed(user_model(job), device, channels_last)
    layers = list(model)  # called with .forward: no hook dispatch per module
    params = list(model.parameters())
    try:
        opt = torch.optim.Adam(params, lr=t.optimizer.lr, eps=t.optimizer.eps, fused=True)
    except (RuntimeError, TypeError, ValueError):  # a device without fused kernels
        opt = torch.optim.Adam(params, lr=t.optimizer.lr, eps=t.optimizer.eps, foreach=True)
    gen = torch.Generator(device=device).manual_seed(t.seed)
    starts = list(range(0, n, bs))

    def forward(x: torch.Tensor) -> torch.Tensor:
        for m in layers:
            x = m.forward(x)
        return x

    acc = float("nan")
    _sync(device)
    start = time.perf_counter()
    for _ in range(t.epochs):
        model.train()
        perm = torch.randperm(n, device=device, generator=gen)
        xs, ys = x_train[perm], y_train[perm]  # one gather per epoch; batches are views
        if channels_last:
            xs = xs.contiguous(memory_format=fmt)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), dtype=torch.int64, device=device)
        for s in starts:
            xb, yb = xs[s:s + bs], ys[s:s + bs]
            out = forward(xb)
            loss = F.cross_entropy(out, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                loss_sum.add_(loss, alpha=len(xb))
                correct.add_((out.argmax(1) == yb).sum())
        model.eval()
        with torch.no_grad():
            out = forward(x_val)
            val_loss = F.cross_entropy(out, y_val)
            val_acc = (out.argmax(1) == y_val).float().mean()
            # the epoch's one host read, as bnlab's
            epoch = torch.stack([loss_sum / n, correct / n, val_loss, val_acc]).tolist()
        acc = epoch[3]
    _sync(device)
    return time.perf_counter() - start, acc


def sequential(job: ResolvedJob, table: Table, device: torch.device, seeds: list[int]
               ) -> tuple[float, list[float]]:
    """K jobs one after another: one train_many per seed."""
    _sync(device)
    start = time.perf_counter()
    finals = [train_many(job, table, seeds=[s], device=device)[0]
              .final_metrics["val_accuracy"] for s in seeds]
    _sync(device)
    return time.perf_counter() - start, finals


def stacked(job: ResolvedJob, table: Table, device: torch.device, seeds: list[int]
            ) -> tuple[float, list[float]]:
    """K seeds in one train_many (one loop, grouped convolutions)."""
    _sync(device)
    start = time.perf_counter()
    results = train_many(job, table, seeds=seeds, device=device)
    _sync(device)
    return time.perf_counter() - start, [r.final_metrics["val_accuracy"] for r in results]


# ---------------------------------------------------------------------------- the bench


@dataclass
class Timing:
    seconds: list[float]
    accuracy: float  # the last run's final val_accuracy

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


def pick_layout(peer: Callable[..., tuple[float, float]], job: ResolvedJob, table: Table,
                device: torch.device) -> bool:
    """Whether channels_last is faster than NCHW for `peer` here (best of two short runs
    each, in turns)."""
    best = {False: float("inf"), True: float("inf")}
    for _ in range(2):
        for cl in (False, True):
            best[cl] = min(best[cl], peer(job, table, device, channels_last=cl)[0])
    return best[True] < best[False]


def measure(*, epochs: int, repeats: int, device: torch.device, threads: int,
            stack: int = STACK, stack_repeats: int | None = None) -> list[Row]:
    """`repeats` runs of each K = 1 peer and `stack_repeats` (default `repeats`) of the
    sequential and the stacked runs, medians kept."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _measure(epochs=epochs, repeats=repeats, device=device, threads=threads,
                        stack=stack, stack_repeats=stack_repeats or repeats)
    finally:  # a caller in the same process (a test) keeps its own setting
        torch.set_num_threads(before)


def _measure(*, epochs: int, repeats: int, device: torch.device, threads: int, stack: int,
             stack_repeats: int) -> list[Row]:
    table = load_table()
    job, warm = cnn_job(table, epochs), cnn_job(table, min(2, epochs))
    layouts = {"plain DataLoader loop": pick_layout(plain_loop, warm, table, device),
               "hand-tuned PyTorch loop": pick_layout(tuned_loop, warm, table, device)}
    peers: dict[str, Peer] = {
        "bnlab trainer": bnlab,
        "plain DataLoader loop": partial(plain_loop,
                                         channels_last=layouts["plain DataLoader loop"]),
        "hand-tuned PyTorch loop": partial(tuned_loop,
                                           channels_last=layouts["hand-tuned PyTorch loop"]),
    }
    seeds = list(range(stack))
    warm1 = cnn_job(table, 1)
    for peer in peers.values():  # warm-up: allocator, kernels, first-call paths
        peer(warm, table, device)
    stacked(warm1, table, device, seeds)
    sequential(warm1, table, device, seeds[:1])

    timings: dict[str, Timing] = {}
    for _ in range(repeats):  # in turns: a noisy neighbour slows every peer alike
        for name, peer in peers.items():
            seconds, acc = peer(job, table, device)
            timings.setdefault(name, Timing([], acc)).seconds.append(seconds)
            timings[name].accuracy = acc
    seq_times, stk_times = [], []
    seq_acc: list[float] = []
    stk_acc: list[float] = []
    for _ in range(stack_repeats):  # in turns, as above
        s, seq_acc = sequential(job, table, device, seeds)
        seq_times.append(s)
        s, stk_acc = stacked(job, table, device, seeds)
        stk_times.append(s)

    steps = job.steps_per_epoch
    n_epochs = f"{epochs} epoch{'s' if epochs != 1 else ''}"
    where = (f"{device}, {threads} thread{'s' if threads > 1 else ''}, {n_epochs} x {steps} "
             f"steps, median of {repeats}")
    ours = timings["bnlab trainer"].median
    rows = [Row(GROUP, "bnlab trainer (K=1)", ours, "s",
                note=f"{where}; final val_accuracy {timings['bnlab trainer'].accuracy:.4f}")]
    for name in ("plain DataLoader loop", "hand-tuned PyTorch loop"):
        tm = timings[name]
        layout = "channels_last" if layouts[name] else "NCHW"
        target, ok = "", None
        if name == "plain DataLoader loop":
            target, ok = f">= {TARGET_VS_PLAIN}x", tm.median / ours >= TARGET_VS_PLAIN
        rows.append(Row(GROUP, name, tm.median, "s", ratio=tm.median / ours,
                        ratio_of="bnlab speed-up", target=target, ok=ok,
                        note=f"{layout}; final val_accuracy {tm.accuracy:.4f}"))
    seq_s, stk_s = statistics.median(seq_times), statistics.median(stk_times)
    diff = max(abs(a - b) for a, b in zip(seq_acc, stk_acc, strict=True))
    rows.append(Row(GROUP, f"{stack} seeds one job after another", seq_s, "s",
                    note=f"{device}, {n_epochs}, median of {stack_repeats}; "
                         f"final val_accuracy mean {statistics.fmean(seq_acc):.4f}"))
    ratio = seq_s / stk_s
    rows.append(Row(GROUP, f"{stack} seeds stacked (train_many)", stk_s, "s", ratio=ratio,
                    ratio_of="vs one after another", target=f">= {TARGET_STACKED:g}x",
                    ok=ratio >= TARGET_STACKED,
                    note=f"median of {stack_repeats}; final val_accuracy mean "
                         f"{statistics.fmean(stk_acc):.4f}, max abs diff {diff:.4f}"))
    return rows


def run(quick: bool) -> list[Row]:
    return measure(epochs=QUICK_EPOCHS if quick else EPOCHS, repeats=REPEATS,
                   stack_repeats=1 if quick else REPEATS,
                   device=select_device(os.environ.get("BNLAB_BENCH_DEVICE", "cpu")), threads=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK_EPOCHS} epochs instead of {EPOCHS}")
    parser.add_argument("--epochs", type=int, default=None,
                        help=f"default {EPOCHS} ({QUICK_EPOCHS} with --quick)")
    parser.add_argument("--repeats", type=int, default=REPEATS,
                        help=f"runs per K = 1 peer, median kept (default {REPEATS})")
    parser.add_argument("--stack-repeats", type=int, default=None,
                        help="runs of the sequential and the stacked K (default --repeats; "
                             "1 with --quick)")
    parser.add_argument("--stack", type=int, default=STACK,
                        help=f"seeds stacked against one after another (default {STACK})")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = parser.parse_args()
    rows = measure(epochs=args.epochs or (QUICK_EPOCHS if args.quick else EPOCHS),
                   repeats=args.repeats,
                   stack_repeats=args.stack_repeats or (1 if args.quick else args.repeats),
                   device=select_device(args.device), threads=args.threads, stack=args.stack)
    print_table(rows)


if __name__ == "__main__":
    main()
