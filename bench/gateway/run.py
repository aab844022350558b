"""Gateway benchmark: nginx, an aiohttp proxy and Garrison, each in front of the same nginx upstream.

Garrison runs as three columns: plain (`garrison`), with the full security chain (`garrison-chain`:
IP rules, JWT, rate limit) and with a Redis-backed rate limit (`garrison-redis`). All columns run in
ONE invocation and are measured in interleaved rounds (direct, nginx, aiohttp, garrison, ...,
direct, nginx, ...), so machine noise hits every column alike. See bench/README.md.

    .venv/bin/python bench/gateway/run.py [--quick] [--only nginx,garrison,garrison-chain] [--markdown]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from collections.abc import Callable
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path

# Run as a script, Python puts bench/gateway/ on sys.path, not bench/: add bench/ so that the code this
# benchmark shares with bench/identity/ imports as the package `common` (bench/common/).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import report
import servers
from common import cli
from common.loadgen import LoadError
from common.processes import ServerDied, StartError, Unavailable, still_alive, with_cpu_share
from common.render import progress_line, say, to_json
from issuer import Issuer
from loadgen import run_hey, run_wrk
from results import BASELINES, DIRECT, PROXIES, Column, Run, Settings, fixed_rate_basis, summarize
from rich.console import Console
from servers import Pinning, Server

TOOLS = ("wrk", "nginx", "hey")
APT_COMMAND = "apt-get install -y wrk nginx-light hey"

Measure = Callable[[str, Server], str]  # runs one measurement, stores it, returns a progress line
NAME_WIDTH = max(len(name) for name in PROXIES + BASELINES)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = cli.new_parser(__doc__)
    cli.add_timing_arguments(parser, "seconds of wrk per column before round 1")
    parser.add_argument("--latency-duration", type=int, help="seconds per hey run (default: --duration)")
    cli.add_selection_arguments(parser, PROXIES, "proxies")
    parser.add_argument("--no-pin", dest="pin", action="store_false", help="do not pin processes to cores")
    parser.add_argument("--aiohttp-loop", choices=["uvloop", "asyncio"], default="uvloop")
    parser.add_argument(
        "--baseline",
        type=Path,
        help="another checkout (with its own .venv) whose Garrison runs as extra columns garrison@base "
        "and garrison-chain@base in the same interleaved rounds: before/after a change in one run",
    )
    cli.add_output_arguments(parser, "gateway")
    args = parser.parse_args(argv)
    if args.baseline is not None and args.only == ",".join(PROXIES):
        args.only += "," + ",".join(BASELINES)  # the default selection, plus the baseline's columns
    cli.settle_arguments(parser, args, PROXIES + BASELINES if args.baseline else PROXIES)
    return args


def make_settings(args: argparse.Namespace, pin: Pinning) -> Settings:
    return Settings(
        duration=args.duration,
        rounds=args.rounds,
        warmup=args.warmup,
        latency_seconds=args.latency_duration or args.duration,
        columns=[DIRECT, *(name for name in PROXIES + BASELINES if name in args.only)],
        pinning=pin.describe(args.pin),
        aiohttp_loop=args.aiohttp_loop,
        baseline=str(args.baseline.resolve()) if args.baseline else None,
    )


def start_proxy(
    name: str, stack: ExitStack, tmp: Path, pin: Pinning, upstream_port: int, settings: Settings
) -> Server:
    loop = settings.aiohttp_loop
    if name.endswith("@base") and settings.baseline:
        plain = name == "garrison@base"
        variant = servers.PLAIN if plain else servers.chain_variant(stack.enter_context(Issuer()))
        baseline = servers.as_baseline(variant, Path(settings.baseline))
        return servers.start_garrison(tmp, pin, upstream_port, baseline)
    if name == "nginx":
        return servers.start_nginx_proxy(tmp, pin, upstream_port)
    if name == "bare":
        return servers.start_bare(tmp, pin, upstream_port)
    if name == "aiohttp":
        return servers.start_aiohttp(tmp, pin, upstream_port, loop)
    if name == "garrison-chain":
        issuer = stack.enter_context(Issuer())  # serves the JWKS until the run ends
        return servers.start_garrison(tmp, pin, upstream_port, servers.chain_variant(issuer))
    if name == "garrison-redis":
        servers.check_redis()
        return servers.start_garrison(tmp, pin, upstream_port, servers.redis_variant())
    return servers.start_garrison(tmp, pin, upstream_port)


def start_all(stack: ExitStack, tmp: Path, pin: Pinning, settings: Settings, run: Run) -> dict[str, Server]:
    """The upstream (fatal if it fails), then each proxy (a failure only drops that column)."""
    upstream = stack.enter_context(servers.start_upstream(tmp, pin))
    upstream_port = int(upstream.address.rsplit(":", 1)[1])
    live = {DIRECT: upstream}
    for name in settings.columns[1:]:
        try:
            live[name] = stack.enter_context(start_proxy(name, stack, tmp, pin, upstream_port, settings))
        except Unavailable as exc:
            run.columns[name].failure = f"skipped: {exc}"
            print(f"{name}: skipped: {exc}", flush=True)
            continue
        except StartError as exc:
            run.columns[name].failure = f"failed to start: {exc}"
            print(f"{name}: failed to start: {exc}", flush=True)
            continue
        if live[name].headers:
            print(f"{name}: GET / with the bench token: 200; without it: 401", flush=True)
    return live


def interleave(console: Console, run: Run, live: dict[str, Server], rounds: int, measure: Measure) -> None:
    """Rounds of one measurement per column, in column order; a column that breaks leaves the rounds."""
    for number in range(1, rounds + 1):
        for name, server in live.items():
            column = run.columns[name]
            if column.failure:
                continue
            try:
                line = measure(name, server)
            except ServerDied as exc:
                column.failure = str(exc)
                line = f"{name}: died; this round's figures are dropped"
            except LoadError as exc:
                column.failure = f"measurement failed: {exc}"
                line = f"{name}: measurement failed"
            say(console, f"  round {number}/{rounds}  {line}")


def warm_up(console: Console, run: Run, live: dict[str, Server], settings: Settings, pin: Pinning) -> None:
    if settings.warmup:
        console.print(f"warm-up: {settings.warmup} s of wrk per column", highlight=False)

        def measure(name: str, server: Server) -> str:
            result = run_wrk(server.address, settings.warmup, pin.client(), server.headers)
            still_alive(server)
            return f"{name:<{NAME_WIDTH}} warm-up {result.rps:>9,.0f} req/s"

        interleave(console, run, live, 1, measure)


def measure_throughput(
    console: Console, run: Run, live: dict[str, Server], settings: Settings, pin: Pinning
) -> None:
    console.print(f"throughput: wrk for {settings.duration} s per column per round", highlight=False)

    def measure(name: str, server: Server) -> str:
        measured = (server.address, settings.duration, pin.client(), server.headers)
        result, cpu = with_cpu_share(server, run_wrk, *measured)
        still_alive(server)
        run.columns[name].throughput.append(result)
        run.columns[name].cpu.append(cpu)
        return progress_line(name, NAME_WIDTH, result, result.errors, cpu)

    interleave(console, run, live, settings.rounds, measure)


def measure_latency(
    console: Console, run: Run, live: dict[str, Server], settings: Settings, pin: Pinning
) -> None:
    basis = fixed_rate_basis(run)
    if basis is None:
        console.print("latency at a fixed rate: skipped (no proxy saturation rate to base it on)")
        return
    run.rate_basis, run.target_rps = basis
    console.print(
        f"latency: hey at {run.target_rps:,.0f} req/s (¼ of {run.rate_basis}'s median) "
        f"for {settings.latency_seconds} s per column per round",
        highlight=False,
    )
    rate = run.target_rps

    def measure(name: str, server: Server) -> str:
        result = run_hey(server.address, settings.latency_seconds, rate, pin.client(), server.headers)
        still_alive(server)
        run.columns[name].latency.append(result)
        return progress_line(name, NAME_WIDTH, result, result.errors + result.non_2xx)

    interleave(console, run, live, settings.rounds, measure)


def measure_all(console: Console, run: Run, settings: Settings, pin: Pinning) -> None:
    with tempfile.TemporaryDirectory(prefix="garrison-bench-") as tmp, ExitStack() as stack:
        live = start_all(stack, Path(tmp), pin, settings, run)
        warm_up(console, run, live, settings, pin)
        measure_throughput(console, run, live, settings, pin)
        measure_latency(console, run, live, settings, pin)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if cli.missing_tools(TOOLS, APT_COMMAND):
        return 2
    cli.exit_on_sigterm()
    console = cli.console(140)
    pin = Pinning.if_possible(args.pin)
    settings = make_settings(args, pin)
    now = datetime.now().astimezone()
    machine = report.machine_info()
    header = report.header_lines(now.isoformat(timespec="seconds"), machine, settings)
    for line in header:
        say(console, line)
    run = Run({name: Column(name) for name in settings.columns})
    try:
        measure_all(console, run, settings, pin)
    except StartError as exc:
        print(f"upstream: failed to start: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; every server was stopped", file=sys.stderr)
        return 130
    summary = summarize(run)
    report.print_report(console, summary)
    document = to_json(now.isoformat(), machine, settings, summary, dataclasses.asdict(run))
    cli.write_results(console, args.json, "gateway", now, document)
    if args.markdown:
        print(report.markdown(summary, header))
    return 0


if __name__ == "__main__":
    sys.exit(main())
