"""The seed notebook, through the Python client: on its dataset (the built-in `concertriccir2`, or
an uploaded copy of the CSV), train the plain and the BatchNorm network as the notebook does
(tail split 0.2, batch 32, Adam 1e-3, 200 epochs), overlay their val_accuracy curves; then ask
the question properly, as a 10-seed experiment, and print the paired difference BN - plain.

    bnlab serve &                                   # or any running service ($BNLAB_URL)
    python examples/notebook_reproduction.py [--csv FILE] [--epochs 200] [--seeds 10] [--out DIR]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from bnlab import Client
from models.spec import NOTEBOOK_BN_LAYERS, NOTEBOOK_PLAIN_LAYERS


def training(epochs: int, seed: int = 1) -> dict[str, Any]:
    """Keras's fit(validation_split=0.2, batch_size=32) with Adam: the last 20% validate."""
    return {"epochs": epochs, "batch_size": 32, "optimizer": {"name": "adam", "lr": 0.001},
            "validation_split": 0.2, "split": "tail", "seed": seed}


def num(v: float | None) -> str:
    return "n/a" if v is None else f"{v:+.3f}" if abs(v) >= 1e-3 else f"{v:.2g}"


def pval(p: float | None) -> str:
    return "n/a" if p is None else f"{p:.3g}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--csv", type=Path, default=None,
                        help="upload this CSV instead of using the built-in concertriccir2")
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path("."), help="where the PNGs go")
    parser.add_argument("--url", default=None, help="default $BNLAB_URL or 127.0.0.1:8000")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    with Client(args.url) as bn:
        dataset: dict[str, Any] = {"name": "concertriccir2"}  # the notebook's 499 rows, in order
        if args.csv is not None:
            ds = bn.datasets.upload(args.csv)
            print(f"dataset {ds.id}: {ds.n_rows} rows, classes {ds.class_counts}")
            dataset = {"id": ds.id}

        # 1. The notebook: one run of each network, then both val_accuracy curves on one plot.
        jobs = {name: bn.jobs.create({"name": name, "dataset": dataset,
                                      "network": {"layers": layers},
                                      "training": training(args.epochs)})
                for name, layers in (("plain", NOTEBOOK_PLAIN_LAYERS),
                                     ("bn", NOTEBOOK_BN_LAYERS))}
        for name, job in jobs.items():
            job.wait(progress=True)
            final = (job.final_metrics or {}).get("val_accuracy")
            best = (job.best_metrics or {}).get("val_accuracy")
            print(f"{name}: {job.status}, val_accuracy final {final} best {best}")
        png = bn.curves([j.id for j in jobs.values()], "val_accuracy")
        (args.out / "notebook_val_accuracy.png").write_bytes(png)
        print(f"wrote {args.out / 'notebook_val_accuracy.png'}")

        # 2. The same comparison over seeds: one seed proves little. Within a seed both
        # variants get the same split and batch order, so the difference is paired.
        exp = bn.experiments.create({
            "name": "notebook", "seeds": args.seeds,
            "base": {"dataset": dataset, "training": training(args.epochs)},
            "variants": [{"name": "plain", "network": {"layers": NOTEBOOK_PLAIN_LAYERS}},
                         {"name": "bn", "network": {"layers": NOTEBOOK_BN_LAYERS}}],
        })
        print(f"experiment {exp.id}: {len(exp.children)} jobs")
        exp.wait(progress=True)
        (args.out / "experiment_val_accuracy.png").write_bytes(
            bn.experiments.curves(exp.id, "val_accuracy"))
        print(f"wrote {args.out / 'experiment_val_accuracy.png'}")

        summary = bn.experiments.summary(exp.id)
        for c in summary["comparisons"]:
            if c["metric"] != "val_accuracy":
                continue
            for which in ("final", "best"):
                d = c[which]
                print(f"{c['b']} - {c['a']} {which} val_accuracy over {d['n']} paired seeds: "
                      f"{num(d['mean_diff'])} (CI [{num(d['ci_low'])}, {num(d['ci_high'])}]), "
                      f"paired t-test p = {pval(d['p_value'])}"
                      + (f"; {d['note']}" if d.get("note") else ""))


if __name__ == "__main__":
    main()
