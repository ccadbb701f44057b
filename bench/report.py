"""What every benchmark returns, and how `python -m bench` prints it.

Each benchmark module exposes `run(quick: bool) -> list[Row]`. A row holds one measured number
with its unit (absolute, machine-dependent) and, where it compares two things measured side by
side in the same run, the ratio (machine-independent) and the target it is held to.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Row:
    group: str  # "training", "service", "api load", "inference", "export", "scale", ...
    name: str  # what was measured, e.g. "bnlab trainer"
    value: float  # the absolute number, in `unit`
    unit: str  # "steps/s", "ms", "s", "rows/s", ...
    ratio: float | None = None  # side-by-side comparison, e.g. 1.7 (x)
    ratio_of: str = ""  # what the ratio compares, e.g. "vs plain DataLoader loop"
    target: str = ""  # e.g. "<= 1.15x", "p99 < 50 ms"
    ok: bool | None = None  # whether the target was met (None: no target)
    note: str = ""

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def _fmt(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def markdown(rows: list[Row]) -> str:
    """A GitHub table (the README's Performance section is this output)."""
    lines = ["| group | measurement | value | ratio | target | |",
             "|---|---|---:|---:|---|---|"]
    for r in rows:
        ratio = f"{r.ratio:.2f}x {r.ratio_of}".strip() if r.ratio is not None else ""
        ok = "" if r.ok is None else ("ok" if r.ok else "MISSED")
        name = f"{r.name} ({r.note})" if r.note else r.name
        lines.append(f"| {r.group} | {name} | {_fmt(r.value)} {r.unit} | {ratio} | {r.target} "
                     f"| {ok} |")
    return "\n".join(lines)


def print_table(rows: list[Row]) -> None:
    """A rich table on the terminal."""
    from rich.console import Console
    from rich.table import Table

    table = Table(show_lines=False)
    for col, just in (("group", "left"), ("measurement", "left"), ("value", "right"),
                      ("ratio", "right"), ("target", "left"), ("", "left")):
        table.add_column(col, justify=just)  # type: ignore[arg-type]
    for r in rows:
        ratio = f"{r.ratio:.2f}x {r.ratio_of}".strip() if r.ratio is not None else ""
        ok = "" if r.ok is None else ("[green]ok[/]" if r.ok else "[red]MISSED[/]")
        name = f"{r.name} [dim]({r.note})[/]" if r.note else r.name
        table.add_row(r.group, name, f"{_fmt(r.value)} {r.unit}", ratio, r.target, ok)
    Console().print(table)
