"""A benchmark that never finishes."""

import time

from bench.report import Row


def run(quick: bool) -> list[Row]:
    time.sleep(60)
    return []
