"""Rendering a run: the machine it ran on, a rich table, ratios, target lines, a markdown snippet, JSON."""

from __future__ import annotations

import dataclasses
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

from loadgen import WRK_CONNECTIONS
from results import PEER, CellSummary, Settings, Summary, Target, workload_label
from rich.console import Console
from rich.table import Table
from servers import installed_oidc_version

REPO = Path(__file__).resolve().parents[2]

METHOD_NOTES = (
    "token: POST /token grant_type=client_credentials&scope=api, HTTP Basic client auth; each response is "
    "checked to carry an access_token (both sides sign one ES256 JWT per token, 5-minute lifetime)",
    "introspect: POST /introspect token=…&token_type_hint=access_token, HTTP Basic client auth; each "
    "response is checked for \"active\": true; '1 token' sends the same token every time (a cache of one "
    "entry serves it), 'N tokens' cycles through N tokens; the tokens are fetched again before every run",
    f"{PEER} refuses to introspect JWT access tokens, so its introspected tokens are opaque ones (a "
    "lookup in its in-memory adapter); Garrison's are the ES256 JWTs it issues",
)


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
        "node": _command_output(["node", "--version"], True),
        "oidc-provider": installed_oidc_version() or "not installed yet",
        "wrk": wrk[1] if len(wrk) > 1 else "unknown",
        "garrison": _package_version("garrison"),
        "authlib": _package_version("authlib"),
        "commit": _command_output(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], True),
    }


def header_lines(date: str, machine: dict[str, str], settings: Settings) -> list[str]:
    return [
        f"Garrison identity benchmark — {date}",
        f"machine: {machine['cpu']}, {machine['cores']} cores, {machine['kernel']}, "
        f"Python {machine['python']}",
        f"tools: {PEER} {machine['oidc-provider']} on node {machine['node']}, wrk {machine['wrk']}, "
        f"garrison {machine['garrison']} (Authlib {machine['authlib']}, commit {machine['commit']})",
        f"method: wrk -t1 -c{WRK_CONNECTIONS} -s post.lua, {settings.rounds} interleaved round(s) of "
        f"{settings.duration} s after {settings.warmup} s warm-up per provider and workload",
        settings.pinning,
    ]


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f} ms"


def _rps(value: float | None) -> str:
    return "—" if value is None else f"{value:,.0f}"


def _cpu(cell: CellSummary) -> str:
    return "—" if cell.cpu is None else f"{cell.cpu:.0%}"


def _x_peer(cell: CellSummary, summary: Summary) -> str:
    peer = summary.cell(cell.workload, PEER)
    if cell.rps is None or peer is None or not peer.rps:
        return "—"
    return f"{cell.rps / peer.rps:.2f}x"


def _failure_word(cell: CellSummary) -> str:
    return "failed" if cell.failure else "not measured"


def _errors(count: int) -> str:
    return f"[red]{count}[/red]" if count else "0"


HEADINGS = ("", "", "req/s", "rounds", f"x {PEER}", "p50", "p99", "errors", "CPU", "req/CPU-s")


def throughput_table(summary: Summary, rotating: int) -> Table:
    table = Table(title="Saturation throughput (wrk; medians over rounds)")
    for number, heading in enumerate(HEADINGS):
        table.add_column(heading, justify="left" if number < 2 else "right")
    shown = None
    for c in summary.cells:
        label = workload_label(c.workload, rotating) if c.workload != shown else ""
        shown = c.workload
        if c.rps is None:
            table.add_row(label, c.provider, f"[red]{_failure_word(c)}[/red]")
            continue
        rounds = " ".join(f"{r:,.0f}" for r in c.rounds)
        cells = [_rps(c.rps), rounds, _x_peer(c, summary), _ms(c.p50_ms), _ms(c.p99_ms)]
        table.add_row(label, c.provider, *cells, _errors(c.errors), _cpu(c), _rps(c.rps_per_cpu))
    return table


def target_line(target: Target) -> str:
    word = {True: "PASS", False: "FAIL", None: "n/a "}[target.passed]
    return f"{word}  {target.label}: {target.detail}"


LEGEND = (
    "req/s: median over rounds (rounds: each round's figure); p50/p99: wrk's latency distribution, "
    "median over rounds; errors: statuses ≥ 400, socket errors and 200s without the expected body, summed "
    "over rounds; CPU: share of one core the provider's processes used under wrk; req/CPU-s: requests per "
    f"CPU-second of the provider; x {PEER}: req/s over {PEER}'s on the same workload."
)


def print_report(console: Console, summary: Summary, checks: dict[str, list[str]], rotating: int) -> None:
    def say(text: str, style: str | None = None) -> None:
        console.print(text, style=style, highlight=False, markup=False)

    for note in METHOD_NOTES:
        say(f"method: {note}")
    for name, lines in checks.items():
        for line in lines:
            say(f"checked {name}: {line}")
    console.print(throughput_table(summary, rotating))
    for name, value in summary.ratios.items():
        say(f"ratio {name}: {value:.2f}x")
    say(LEGEND)
    for note in summary.notes:
        say(f"note: {note}", "yellow")
    for target in summary.targets:
        say(target_line(target), {True: "green", False: "red", None: "yellow"}[target.passed])
    failed = {c.provider: c.failure for c in summary.cells if c.failure}
    for name, failure in failed.items():
        say(f"{name}: {failure}", "red")


def _markdown_row(c: CellSummary, summary: Summary, rotating: int) -> str:
    label = workload_label(c.workload, rotating)
    if c.rps is None:
        return f"| {label} | {c.provider} | {_failure_word(c)} | | | | | | |"
    cells = [_rps(c.rps), _x_peer(c, summary), _ms(c.p50_ms), _ms(c.p99_ms), str(c.errors), _cpu(c)]
    return f"| {label} | {c.provider} | " + " | ".join([*cells, _rps(c.rps_per_cpu)]) + " |"


def markdown(summary: Summary, header: list[str], rotating: int, command: str) -> str:
    """A snippet for bench/RESULTS.md: the header, one table, ratios, notes and target lines."""
    lines = [f"### {header[0]}", "", *(f"- {line}" for line in header[1:]), f"- command: `{command}`", ""]
    lines += [
        f"| workload | provider | req/s | x {PEER} | p50 | p99 | errors | CPU | req/CPU-s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
        *(_markdown_row(c, summary, rotating) for c in summary.cells),
        "",
    ]
    lines += [f"- ratio {name}: {value:.2f}x" for name, value in summary.ratios.items()]
    lines += [f"- note: {note}" for note in summary.notes]
    lines += [f"- {target_line(t)}" for t in summary.targets]
    lines += [f"- method: {note}" for note in METHOD_NOTES]
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
