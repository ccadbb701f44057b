"""A benchmark that never finishes."""

import time

from bench.report import Row


def run(quick: bool) -> list[Row]:  # noqa: ARG001 (the interface every module has)
    time.sleep(60)
    return []
