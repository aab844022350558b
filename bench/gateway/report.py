"""Rendering a run: the machine it ran on, rich tables, target lines, a markdown snippet, JSON."""

from __future__ import annotations

import dataclasses
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

from loadgen import HEY_WORKERS, WRK_CONNECTIONS
from results import RATE_REACHED, ColumnSummary, Settings, Summary, Target
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[2]


def _command_output(argv: list[str], must_succeed: bool = False) -> str:
    """First line a version command prints (on stdout or stderr), or "unknown"."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    if must_succeed and done.returncode != 0:
        return "unknown"
    lines = (done.stdout + done.stderr).strip().splitlines()
    return lines[0].strip() if lines else "unknown"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine_info() -> dict[str, str]:
    wrk = _command_output(["wrk", "-v"]).split()
    return {
        "cpu": _cpu_model(),
        "cores": str(os.cpu_count()),
        "kernel": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "nginx": _command_output(["nginx", "-v"]).removeprefix("nginx version: nginx/"),
        "wrk": wrk[1] if len(wrk) > 1 else "unknown",
        "hey": _command_output(["dpkg-query", "-W", "-f", "${Version}", "hey"]),
        "aiohttp": _package_version("aiohttp"),
        "uvloop": _package_version("uvloop"),
        "garrison": _package_version("garrison"),
        "commit": _command_output(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], True),
    }


def header_lines(date: str, machine: dict[str, str], settings: Settings) -> list[str]:
    return [
        f"Garrison gateway benchmark — {date}",
        f"machine: {machine['cpu']}, {machine['cores']} cores, {machine['kernel']}, "
        f"Python {machine['python']}",
        f"tools: nginx {machine['nginx']}, wrk {machine['wrk']}, hey {machine['hey']}, "
        f"aiohttp {machine['aiohttp']} on {_loop(settings, machine)}, garrison {machine['garrison']} "
        f"(commit {machine['commit']})",
        f"method: wrk -t1 -c{WRK_CONNECTIONS}, {settings.rounds} interleaved round(s) of "
        f"{settings.duration} s after {settings.warmup} s warm-up; "
        f"hey -c {HEY_WORKERS} for {settings.latency_seconds} s per round",
        settings.pinning,
    ]


def _loop(settings: Settings, machine: dict[str, str]) -> str:
    return f"uvloop {machine['uvloop']}" if settings.aiohttp_loop == "uvloop" else "asyncio"


def _ms(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "—"
    return f"{value:+.2f} ms" if signed else f"{value:.2f} ms"


def _rps(value: float | None) -> str:
    return "—" if value is None else f"{value:,.0f}"


def _x_nginx(column: ColumnSummary, summary: Summary) -> str:
    nginx = summary.column("nginx")
    if column.rps is None or nginx is None or not nginx.rps:
        return "—"
    return f"{column.rps / nginx.rps:.2f}x"


def _cpu(column: ColumnSummary) -> str:
    return "—" if column.cpu is None else f"{column.cpu:.0%}"


def _failure_word(column: ColumnSummary) -> str:
    return "failed" if column.failure else "not measured"


def _errors(count: int) -> str:
    return f"[red]{count}[/red]" if count else "0"


THROUGHPUT_HEADINGS = ("", "req/s", "rounds", "x nginx", "p50", "p99", "errors", "CPU", "req/CPU-s")


def throughput_table(summary: Summary) -> Table:
    table = Table(title="Saturation throughput (wrk; medians over rounds)")
    for heading in THROUGHPUT_HEADINGS:
        table.add_column(heading, justify="right" if heading else "left")
    for c in summary.columns:
        if c.rps is None:
            table.add_row(c.name, f"[red]{_failure_word(c)}[/red]")
            continue
        rounds = " ".join(f"{r:,.0f}" for r in c.rounds)
        cells = [_rps(c.rps), rounds, _x_nginx(c, summary), _ms(c.p50_ms), _ms(c.p99_ms)]
        table.add_row(c.name, *cells, _errors(c.errors), _cpu(c), _rps(c.rps_per_cpu))
    return table


def latency_title(summary: Summary) -> str:
    if summary.target_rps is None:
        return "Latency at a fixed rate: not measured"
    rate = f"{summary.target_rps:,.0f} req/s"
    return f"Latency at a fixed {rate} (1/4 of {summary.rate_basis}'s saturation; hey)"


def _achieved(column: ColumnSummary, summary: Summary) -> str:
    achieved = _rps(column.fixed_rps)
    target = summary.target_rps
    if target and column.fixed_rps is not None and column.fixed_rps < RATE_REACHED * target:
        return f"[yellow]{achieved} (short)[/yellow]"
    return achieved


def latency_table(summary: Summary) -> Table:
    table = Table(title=latency_title(summary))
    for heading in ("", "achieved req/s", "p50", "p99", "added p50", "added p99", "errors"):
        table.add_column(heading, justify="right" if heading else "left")
    for c in summary.columns:
        if c.fixed_p50_ms is None:
            table.add_row(c.name, f"[red]{_failure_word(c)}[/red]")
            continue
        added = (_ms(c.added_p50_ms, signed=True), _ms(c.added_p99_ms, signed=True))
        cells = (_achieved(c, summary), _ms(c.fixed_p50_ms), _ms(c.fixed_p99_ms), *added)
        table.add_row(c.name, *cells, _errors(c.fixed_errors))
    return table


def target_line(target: Target) -> str:
    word = {True: "PASS", False: "FAIL", None: "n/a "}[target.passed]
    return f"{word}  {target.label}: {target.detail}"


LEGEND = (
    "CPU: share of one core the server's own processes used under wrk (direct: the upstream); "
    "req/CPU-s: requests per CPU-second of that server. Latency: medians of hey's p50/p99 over rounds, "
    "printed by hey to 0.1 ms; added = proxy - direct."
)


def print_report(console: Console, summary: Summary) -> None:
    console.print(throughput_table(summary))
    for name, value in summary.ratios.items():
        console.print(f"ratio {name}: {value:.2f}x", highlight=False)
    console.print(latency_table(summary))
    console.print(LEGEND, highlight=False, markup=False)
    for note in summary.notes:
        console.print(f"note: {note}", style="yellow", highlight=False, markup=False)
    for target in summary.targets:
        style = {True: "green", False: "red", None: "yellow"}[target.passed]
        console.print(target_line(target), style=style, highlight=False, markup=False)
    for c in summary.columns:
        if c.failure:
            console.print(f"{c.name}: {c.failure}", style="red", highlight=False, markup=False)


def _markdown_row(c: ColumnSummary, summary: Summary) -> str:
    if c.rps is None:
        return f"| {c.name} | {_failure_word(c)} | | | | | | | | | |"
    cells = [_rps(c.rps), _x_nginx(c, summary), _ms(c.p50_ms), _ms(c.p99_ms), str(c.errors), _cpu(c)]
    cells += [_ms(c.fixed_p50_ms), _ms(c.fixed_p99_ms)]
    cells += [_ms(c.added_p50_ms, signed=True), _ms(c.added_p99_ms, signed=True)]
    return f"| {c.name} | " + " | ".join(cells) + " |"


def markdown(summary: Summary, header: list[str]) -> str:
    """A snippet for bench/RESULTS.md: the header, one table, ratios, notes and target lines."""
    rate = f"@ {summary.target_rps:,.0f}/s" if summary.target_rps else "@ fixed rate"
    lines = [f"### {header[0]}", "", *(f"- {line}" for line in header[1:]), ""]
    lines += [
        f"| | req/s | x nginx | p50 | p99 | errors | CPU | p50 {rate} | p99 {rate} | added p50 | added p99 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        *(_markdown_row(c, summary) for c in summary.columns),
        "",
    ]
    lines += [f"- ratio {name}: {value:.2f}x" for name, value in summary.ratios.items()]
    lines += [f"- note: {note}" for note in summary.notes]
    lines += [f"- {target_line(t)}" for t in summary.targets]
    return "\n".join(lines) + "\n"


def to_json(
    date: str, machine: dict[str, str], settings: Settings, summary: Summary, raw: object
) -> dict[str, object]:
    return {
        "date": date,
        "machine": machine,
        "settings": dataclasses.asdict(settings),
        "summary": dataclasses.asdict(summary),
        "raw": raw,
    }
