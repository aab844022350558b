"""Rendering a run: the machine it ran on, a rich table, ratios, target lines, a markdown snippet.

What the gateway benchmark renders alike (formats, verdicts, JSON) is common.render's.
"""

from __future__ import annotations

from common import machine, render
from common.loadgen import WRK_CONNECTIONS
from common.render import ms, rps
from results import PEER, CellSummary, Settings, Summary, workload_label
from rich.console import Console
from rich.table import Table
from servers import installed_oidc_version

METHOD_NOTES = (
    "token: POST /token grant_type=client_credentials&scope=api, HTTP Basic client auth; each response is "
    "checked to carry an access_token (both sides sign one ES256 JWT per token, 5-minute lifetime)",
    "introspect: POST /introspect token=…&token_type_hint=access_token, HTTP Basic client auth; each "
    "response is checked for \"active\": true; '1 token' sends the same token every time (a cache of one "
    "entry serves it), 'N tokens' cycles through N tokens; the tokens are fetched again before every run",
    f"{PEER} refuses to introspect JWT access tokens, so its introspected tokens are opaque ones (a "
    "lookup in its in-memory adapter); Garrison's are the ES256 JWTs it issues",
)


def machine_info() -> dict[str, str]:
    return machine.info(
        {
            "node": machine.command_output(["node", "--version"], True),
            "oidc-provider": installed_oidc_version() or "not installed yet",
            "wrk": machine.wrk_version(),
            "garrison": machine.package_version("garrison"),
            "authlib": machine.package_version("authlib"),
        }
    )


def header_lines(date: str, host: dict[str, str], settings: Settings) -> list[str]:
    return machine.header(
        "Garrison identity benchmark",
        date,
        host,
        f"tools: {PEER} {host['oidc-provider']} on node {host['node']}, wrk {host['wrk']}, "
        f"garrison {host['garrison']} (Authlib {host['authlib']}, commit {host['commit']})",
        f"method: wrk -t1 -c{WRK_CONNECTIONS} -s post.lua, {settings.rounds} interleaved round(s) of "
        f"{settings.duration} s after {settings.warmup} s warm-up per provider and workload",
        settings.pinning,
    )


def _x_peer(cell: CellSummary, summary: Summary) -> str:
    peer = summary.cell(cell.workload, PEER)
    if cell.rps is None or peer is None or not peer.rps:
        return "—"
    return f"{cell.rps / peer.rps:.2f}x"


HEADINGS = ("", "", "req/s", "rounds", f"x {PEER}", "p50", "p99", "errors", "CPU", "req/CPU-s")


def throughput_table(summary: Summary, rotating: int) -> Table:
    found = render.table("Saturation throughput (wrk; medians over rounds)", HEADINGS, left=2)
    shown = None
    for c in summary.cells:
        label = workload_label(c.workload, rotating) if c.workload != shown else ""
        shown = c.workload
        if c.rps is None:
            found.add_row(label, c.provider, f"[red]{render.failure_word(c.failure)}[/red]")
            continue
        found.add_row(label, c.provider, *render.throughput_cells(c, _x_peer(c, summary)))
    return found


LEGEND = (
    "req/s: median over rounds (rounds: each round's figure); p50/p99: wrk's latency distribution, "
    "median over rounds; errors: statuses ≥ 400, socket errors and 200s without the expected body, summed "
    "over rounds; CPU: share of one core the provider's processes used under wrk; req/CPU-s: requests per "
    f"CPU-second of the provider; x {PEER}: req/s over {PEER}'s on the same workload."
)


def print_report(console: Console, summary: Summary, checks: dict[str, list[str]], rotating: int) -> None:
    for note in METHOD_NOTES:
        render.say(console, f"method: {note}")
    for name, lines in checks.items():
        for line in lines:
            render.say(console, f"checked {name}: {line}")
    console.print(throughput_table(summary, rotating))
    render.print_ratios(console, summary.ratios)
    render.say(console, LEGEND)
    failed = {c.provider: c.failure for c in summary.cells if c.failure}
    render.print_verdicts(console, summary.notes, summary.targets, failed)


def _markdown_row(c: CellSummary, summary: Summary, rotating: int) -> str:
    label = workload_label(c.workload, rotating)
    if c.rps is None:
        return f"| {label} | {c.provider} | {render.failure_word(c.failure)} | | | | | | |"
    cells = [rps(c.rps), _x_peer(c, summary), ms(c.p50_ms), ms(c.p99_ms), str(c.errors)]
    cells += [render.cpu_share(c.cpu)]
    return f"| {label} | {c.provider} | " + " | ".join([*cells, rps(c.rps_per_cpu)]) + " |"


def markdown(summary: Summary, header: list[str], rotating: int, command: str) -> str:
    """A snippet for bench/RESULTS.md: the header, one table, ratios, notes and target lines."""
    lines = [*render.markdown_heading(header), f"- command: `{command}`", ""]
    lines += [
        f"| workload | provider | req/s | x {PEER} | p50 | p99 | errors | CPU | req/CPU-s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
        *(_markdown_row(c, summary, rotating) for c in summary.cells),
        "",
    ]
    lines += render.markdown_verdicts(summary.ratios, summary.notes, summary.targets)
    lines += [f"- method: {note}" for note in METHOD_NOTES]
    return "\n".join(lines) + "\n"
