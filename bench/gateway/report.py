"""Rendering a run: the machine it ran on, rich tables, target lines, a markdown snippet.

What the identity benchmark renders alike (formats, verdicts, JSON) is common.render's.
"""

from __future__ import annotations

import subprocess

from common import machine, render
from common.loadgen import WRK_CONNECTIONS
from common.render import ms, rps
from results import RATE_REACHED, SCALING, SECTIONS, ColumnSummary, Settings, Summary, nginx_of
from rich.console import Console
from rich.table import Table


def machine_info() -> dict[str, str]:
    return machine.info(
        {
            "nginx": machine.command_output(["nginx", "-v"]).removeprefix("nginx version: nginx/"),
            "wrk": machine.wrk_version(),
            "hey": machine.command_output(["dpkg-query", "-W", "-f", "${Version}", "hey"]),
            "aiohttp": machine.package_version("aiohttp"),
            "uvloop": machine.package_version("uvloop"),
            "garrison": machine.package_version("garrison"),
        }
    )


def header_lines(date: str, host: dict[str, str], settings: Settings) -> list[str]:
    return machine.header(
        "Garrison gateway benchmark",
        date,
        host,
        f"tools: nginx {host['nginx']}, wrk {host['wrk']}, hey {host['hey']}, "
        f"aiohttp {host['aiohttp']} on {_loop(settings, host)}, garrison {host['garrison']} "
        f"(commit {host['commit']})" + _baseline(settings),
        f"method: wrk -t1 -c{WRK_CONNECTIONS}, {settings.rounds} interleaved round(s) of "
        f"{settings.duration} s after {settings.warmup} s warm-up; "
        f"paced wrk -c{WRK_CONNECTIONS} (independent arrivals, bench/common/paced.lua) for "
        f"{settings.latency_seconds} s per round at the fixed rate" + _sections(settings),
        settings.pinning,
    )


def _sections(settings: Settings) -> str:
    """The sections' own method, if any of their columns runs."""
    found = []
    if any(name in SECTIONS["tls"] for name in settings.columns):
        found.append(
            f"TLS section: wrk -t1 -c{WRK_CONNECTIONS} over https (TLS 1.3); -tls-new: the same with "
            "`Connection: close` (a new connection per request, its TLS session resumed); -tls-full: "
            f"hey -c {WRK_CONNECTIONS} -disable-keepalive (a new connection and a full handshake per request)"
        )
    if any(name in SCALING for name in settings.columns):
        found.append("workers: 2 section: wrk -t2 -c100")
    if not found:
        return ""
    warmup = min(settings.warmup, 1)
    rounds = f"{settings.rounds} round(s) of {settings.section_duration} s after {warmup} s warm-up, no hey"
    return "; " + "; ".join(found) + f" ({rounds})"


def _baseline(settings: Settings) -> str:
    """`; @base columns: <dir> at commit <sha>` when a --baseline checkout runs beside this one."""
    if not settings.baseline:
        return ""
    found = subprocess.run(
        ["git", "-C", settings.baseline, "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    )
    commit = found.stdout.strip() or "unknown"
    return f"; @base columns: {settings.baseline} at commit {commit}"


def _loop(settings: Settings, host: dict[str, str]) -> str:
    return f"uvloop {host['uvloop']}" if settings.aiohttp_loop == "uvloop" else "asyncio"


def _x_nginx(column: ColumnSummary, summary: Summary) -> str:
    """req/s over that of the nginx of the column's section (nginx, nginx-w2, nginx-tls, nginx-tls-new)."""
    nginx = summary.column(nginx_of(column.name))
    if column.rps is None or nginx is None or not nginx.rps:
        return "—"
    return f"{column.rps / nginx.rps:.2f}x"


THROUGHPUT_HEADINGS = ("", "req/s", "rounds", "x nginx", "p50", "p99", "errors", "CPU", "req/CPU-s")


SECTION_TITLES = {
    "main": "Saturation throughput (wrk; medians over rounds)",
    "tls": "TLS termination (x nginx: against the nginx of the same kind of column)",
    "scaling": "workers: 2 on both cores, unpinned (wrk -t2 -c100; CPU: all of a proxy's processes)",
}


def section_of(name: str) -> str:
    return next((section for section, names in SECTIONS.items() if name in names), "main")


def throughput_tables(summary: Summary) -> list[Table]:
    """One table per section that has columns: the main one, TLS, workers: 2."""
    return [
        throughput_table(summary, section)
        for section in SECTION_TITLES
        if any(section_of(c.name) == section for c in summary.columns)
    ]


def throughput_table(summary: Summary, section: str = "main") -> Table:
    found = render.table(SECTION_TITLES[section], THROUGHPUT_HEADINGS)
    for c in summary.columns:
        if section_of(c.name) != section:
            continue
        if c.rps is None:
            found.add_row(c.name, f"[red]{render.failure_word(c.failure)}[/red]")
            continue
        found.add_row(c.name, *render.throughput_cells(c, _x_nginx(c, summary)))
    return found


def latency_title(summary: Summary) -> str:
    if summary.target_rps is None:
        return "Latency at a fixed rate: not measured"
    rate = f"{summary.target_rps:,.0f} req/s"
    return f"Latency at a fixed {rate} (1/4 of {summary.rate_basis}'s saturation; paced wrk)"


def _achieved(column: ColumnSummary, summary: Summary) -> str:
    achieved = rps(column.fixed_rps)
    target = summary.target_rps
    if target and column.fixed_rps is not None and column.fixed_rps < RATE_REACHED * target:
        return f"[yellow]{achieved} (short)[/yellow]"
    return achieved


LATENCY_HEADINGS = ("", "achieved req/s", "p50", "p99", "added p50", "added p99", "errors")


def latency_table(summary: Summary) -> Table:
    found = render.table(latency_title(summary), LATENCY_HEADINGS)
    for c in summary.columns:
        if section_of(c.name) != "main":
            continue  # the sections measure throughput only
        if c.fixed_p50_ms is None:
            found.add_row(c.name, f"[red]{render.failure_word(c.failure)}[/red]")
            continue
        added = (ms(c.added_p50_ms, signed=True), ms(c.added_p99_ms, signed=True))
        cells = (_achieved(c, summary), ms(c.fixed_p50_ms), ms(c.fixed_p99_ms), *added)
        found.add_row(c.name, *cells, render.errors(c.fixed_errors))
    return found


LEGEND = (
    "CPU: share of one core the server's own processes used under wrk (direct: the upstream); "
    "req/CPU-s: requests per CPU-second of that server. Latency: medians of wrk's p50/p99 over rounds "
    "at the fixed rate (independent arrivals); added = proxy - direct."
)


def tls_lines(summary: Summary) -> list[str]:
    """What each TLS column's handshakes negotiated (openssl s_client; a reconnect with Python's ssl),
    and how many TCP connections the machine accepted per request while it was loaded."""
    lines = []
    for name, found in summary.tls.items():
        per_request = summary.connections.get(name)
        opened = "" if per_request is None else f"; {per_request:.2f} connections accepted per request"
        lines.append(f"TLS {name}: {found}{opened}")
    return lines


def print_report(console: Console, summary: Summary) -> None:
    for table in throughput_tables(summary):
        console.print(table)
    render.print_ratios(console, summary.ratios)
    for line in tls_lines(summary):
        render.say(console, line)
    console.print(latency_table(summary))
    render.say(console, LEGEND)
    failures = {c.name: c.failure for c in summary.columns if c.failure}
    render.print_verdicts(console, summary.notes, summary.targets, failures)


def _markdown_row(c: ColumnSummary, summary: Summary) -> str:
    if c.rps is None:
        return f"| {c.name} | {render.failure_word(c.failure)} | | | | | | | | | |"
    cells = [rps(c.rps), _x_nginx(c, summary), ms(c.p50_ms), ms(c.p99_ms), str(c.errors)]
    cells += [render.cpu_share(c.cpu)]
    cells += [ms(c.fixed_p50_ms), ms(c.fixed_p99_ms)]
    cells += [ms(c.added_p50_ms, signed=True), ms(c.added_p99_ms, signed=True)]
    return f"| {c.name} | " + " | ".join(cells) + " |"


def markdown(summary: Summary, header: list[str]) -> str:
    """A snippet for bench/RESULTS.md: the header, one table, ratios, notes and target lines."""
    rate = f"@ {summary.target_rps:,.0f}/s" if summary.target_rps else "@ fixed rate"
    lines = [*render.markdown_heading(header), ""]
    lines += [
        f"| | req/s | x nginx | p50 | p99 | errors | CPU | p50 {rate} | p99 {rate} | added p50 | added p99 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        *(_markdown_row(c, summary) for c in summary.columns),
        "",
    ]
    lines += [f"- {line}" for line in tls_lines(summary)]
    lines += render.markdown_verdicts(summary.ratios, summary.notes, summary.targets)
    return "\n".join(lines) + "\n"
