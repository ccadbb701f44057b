"""A benchmark whose process dies without a word (a segfault, an OOM kill)."""

import os

from bench.report import Row


def run(quick: bool) -> list[Row]:  # noqa: ARG001 (the interface every module has)
    os._exit(3)
