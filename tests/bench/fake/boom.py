"""A benchmark that raises."""

from bench.report import Row


def run(quick: bool) -> list[Row]:  # noqa: ARG001 (the interface every module has)
    raise ValueError("no database to measure")
