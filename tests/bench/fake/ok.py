"""A benchmark that measures something (and one thing it could not: NaN)."""

from bench.report import Row


def run(quick: bool) -> list[Row]:
    return [Row("fake", "quick" if quick else "full", 1.5, "steps/s", ratio=2.0,
                ratio_of="vs nothing", target=">= 1x", ok=True),
            Row("fake", "unmeasured", float("nan"), "ms")]
