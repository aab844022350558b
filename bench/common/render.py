"""Rendering either benchmark's run: figure formats, progress lines, rich tables, targets, markdown, JSON."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol

from rich.console import Console
from rich.table import Table

from common.results import Target, Throughput

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

TARGET_STYLES = {True: "green", False: "red", None: "yellow"}


def ms(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "—"
    return f"{value:+.2f} ms" if signed else f"{value:.2f} ms"


def rps(value: float | None) -> str:
    return "—" if value is None else f"{value:,.0f}"


def cpu_share(value: float | None) -> str:
    return "—" if value is None else f"{value:.0%}"


def failure_word(failure: str | None) -> str:
    return "failed" if failure else "not measured"


def errors(count: int) -> str:
    return f"[red]{count}[/red]" if count else "0"


def table(title: str, headings: Iterable[str], left: int = 1) -> Table:
    """A rich table whose first `left` columns are left-aligned and the rest right-aligned."""
    found = Table(title=title)
    for number, heading in enumerate(headings):
        found.add_column(heading, justify="left" if number < left else "right")
    return found


def throughput_cells(c: Throughput, times_peer: str) -> list[str]:
    """req/s, rounds, times_peer, p50, p99, errors, CPU, req/CPU-s: a throughput table's figures."""
    rounds = " ".join(f"{r:,.0f}" for r in c.rounds)
    cells = [rps(c.rps), rounds, times_peer, ms(c.p50_ms), ms(c.p99_ms)]
    return [*cells, errors(c.errors), cpu_share(c.cpu), rps(c.rps_per_cpu)]


class Measured(Protocol):
    """One load generator run's figures (a WrkResult, a HeyResult)."""

    @property
    def rps(self) -> float: ...
    @property
    def p50_ms(self) -> float: ...
    @property
    def p99_ms(self) -> float: ...


def progress_line(label: str, width: int, result: Measured, failed: int, cpu: float | None = None) -> str:
    """One measurement as the run goes: label padded to width, req/s, p50, p99, errors, CPU share."""
    line = (
        f"{label:<{width}} {result.rps:>9,.0f} req/s  p50 {result.p50_ms:6.2f} ms  "
        f"p99 {result.p99_ms:6.2f} ms  errors {failed}"
    )
    return line if cpu is None else f"{line}  CPU {cpu:4.0%}"


def target_line(target: Target) -> str:
    word = {True: "PASS", False: "FAIL", None: "n/a "}[target.passed]
    return f"{word}  {target.label}: {target.detail}"


def say(console: Console, text: str, style: str | None = None) -> None:
    """Print text as it is: no rich markup, no highlighting."""
    console.print(text, style=style, highlight=False, markup=False)


def print_ratios(console: Console, ratios: dict[str, float]) -> None:
    for name, value in ratios.items():
        say(console, f"ratio {name}: {value:.2f}x")


def print_verdicts(
    console: Console, notes: list[str], targets: list[Target], failures: dict[str, str]
) -> None:
    """Notes in yellow, each target in its colour, then why each failed server failed."""
    for note in notes:
        say(console, f"note: {note}", "yellow")
    for target in targets:
        say(console, target_line(target), TARGET_STYLES[target.passed])
    for name, failure in failures.items():
        say(console, f"{name}: {failure}", "red")


def markdown_heading(header: list[str]) -> list[str]:
    """A run's header as a RESULTS.md section: its first line the heading, the rest a list."""
    return [f"### {header[0]}", "", *(f"- {line}" for line in header[1:])]


def markdown_verdicts(ratios: dict[str, float], notes: list[str], targets: list[Target]) -> list[str]:
    lines = [f"- ratio {name}: {value:.2f}x" for name, value in ratios.items()]
    lines += [f"- note: {note}" for note in notes]
    lines += [f"- {target_line(t)}" for t in targets]
    return lines


def to_json(
    date: str,
    machine: dict[str, str],
    settings: DataclassInstance,
    summary: DataclassInstance,
    raw: object,
) -> dict[str, object]:
    return {
        "date": date,
        "machine": machine,
        "settings": dataclasses.asdict(settings),
        "summary": dataclasses.asdict(summary),
        "raw": raw,
    }
