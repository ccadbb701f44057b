"""A benchmark that raises."""

from bench.report import Row


def run(quick: bool) -> list[Row]:
    raise ValueError("no database to measure")
