"""What machine a benchmark ran on: CPU model and cores, memory, Python, torch, a CUDA device.

    .venv/bin/python -m bench.hardware

Absolute numbers (steps/s, ms) mean little without this; ratios measured side by side in one run
travel better, but still depend on core count (the 2-core CI box vs a workstation).
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path
from typing import Any


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)  # kB
    except OSError:
        pass
    return None


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))  # what this process may use (containers, taskset)
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def describe() -> dict[str, Any]:
    """A JSON-able description of this machine and the software the benchmarks use."""
    import torch

    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cores": _usable_cores(),
        "cpu_count": os.cpu_count(),
        "memory_gib": _memory_gib(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": None,
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["cuda"] = {"device": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
                        "count": torch.cuda.device_count(), "version": torch.version.cuda}
    return info


def line(info: dict[str, Any] | None = None) -> str:
    """One line for a README table's caption."""
    i = info or describe()
    mem = f", {i['memory_gib']:g} GiB RAM" if i.get("memory_gib") else ""
    gpu = f", {i['cuda']['device']}" if i.get("cuda") else ", no GPU"
    return (f"{i['cpu']}, {i['cores']} cores{mem}{gpu}; {i['os']}, Python {i['python']}, "
            f"torch {i['torch']}")


def main() -> None:
    import json

    info = describe()
    json.dump(info, sys.stdout, indent=2)
    print()
    print(line(info))


if __name__ == "__main__":
    main()
