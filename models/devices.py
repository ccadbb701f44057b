"""The one place a torch device is chosen. Everything else receives a `torch.device`."""

from __future__ import annotations

import re

import torch


class DeviceError(ValueError):
    """The requested device does not exist on this machine."""


def select_device(requested: str = "auto") -> torch.device:
    """"auto" -> the first CUDA device if there is one, else the CPU; "cpu"; "cuda" / "cuda:N"."""
    requested = requested.strip().lower()
    if requested == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    if requested == "cpu":
        return torch.device("cpu")
    match = re.fullmatch(r"cuda(?::(\d+))?", requested)
    if match is None:
        raise DeviceError(f"unknown device {requested!r}: use 'auto', 'cpu', 'cuda' or 'cuda:N'")
    if not torch.cuda.is_available():
        raise DeviceError(f"device {requested!r} was requested but CUDA is not available on this "
                          "machine: use 'auto' or 'cpu', or run on a GPU worker")
    index = int(match.group(1) or 0)
    count = torch.cuda.device_count()
    if index >= count:
        raise DeviceError(f"device {requested!r} does not exist: this machine has {count} CUDA "
                          f"device(s) (cuda:0..cuda:{count - 1})")
    return torch.device("cuda", index)
