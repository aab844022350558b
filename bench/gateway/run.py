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
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path
from types import FrameType

import report
import servers
from issuer import Issuer
from loadgen import LoadError, run_hey, run_wrk
from results import DIRECT, PROXIES, Column, Run, Settings, fixed_rate_basis, summarize
from rich.console import Console
from servers import Pinning, Server, StartError, Unavailable

OUT_DIR = Path(__file__).resolve().parent.parent / "out"
TOOLS = ("wrk", "nginx", "hey")
APT_COMMAND = "apt-get install -y wrk nginx-light hey"

Measure = Callable[[str, Server], str]  # runs one measurement, stores it, returns a progress line
NAME_WIDTH = max(len(name) for name in PROXIES)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run (default 10)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of wrk per column before round 1")
    parser.add_argument("--latency-duration", type=int, help="seconds per hey run (default: --duration)")
    parser.add_argument("--quick", action="store_true", help="3 s x 1 round, 1 s warm-up")
    parser.add_argument("--only", default=",".join(PROXIES), help="proxies to measure, comma-separated")
    parser.add_argument("--no-pin", dest="pin", action="store_false", help="do not pin processes to cores")
    parser.add_argument("--aiohttp-loop", choices=["uvloop", "asyncio"], default="uvloop")
    parser.add_argument("--markdown", action="store_true", help="also print a snippet for bench/RESULTS.md")
    parser.add_argument(
        "--json", type=Path, help="where to write results (default bench/out/gateway-<date>.json)"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.rounds, args.warmup = 3, 1, 1
    args.only = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(args.only) - set(PROXIES))
    if unknown or not args.only:
        parser.error(f"--only takes names from {', '.join(PROXIES)}; got {', '.join(unknown) or 'none'}")
    if min(args.duration, args.rounds) < 1 or args.warmup < 0:
        parser.error("--duration and --rounds must be at least 1, --warmup at least 0")
    return args


def pinning(requested: bool) -> Pinning:
    """Pin when asked and possible: cores 0 and 1 available to us and taskset installed."""
    return Pinning(requested and {0, 1} <= os.sched_getaffinity(0) and shutil.which("taskset") is not None)


def make_settings(args: argparse.Namespace, pin: Pinning) -> Settings:
    requested_but_off = args.pin and not pin.enabled
    placement = pin.describe() + (" (needs cores 0 and 1 and taskset)" if requested_but_off else "")
    return Settings(
        duration=args.duration,
        rounds=args.rounds,
        warmup=args.warmup,
        latency_seconds=args.latency_duration or args.duration,
        columns=[DIRECT, *(name for name in PROXIES if name in args.only)],
        pinning=placement,
        aiohttp_loop=args.aiohttp_loop,
    )


def start_proxy(
    name: str, stack: ExitStack, tmp: Path, pin: Pinning, upstream_port: int, loop: str
) -> Server:
    if name == "nginx":
        return servers.start_nginx_proxy(tmp, pin, upstream_port)
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
            live[name] = stack.enter_context(
                start_proxy(name, stack, tmp, pin, upstream_port, settings.aiohttp_loop)
            )
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


class ServerDied(Exception):
    """The server under test exited while it was being measured."""


def still_alive(server: Server) -> None:
    """Raise ServerDied if the server exited: figures measured against a dying process are not kept."""
    if not server.alive():
        raise ServerDied(f"died during the run (status {server.proc.returncode}):\n{server.output_tail()}")


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
            console.print(f"  round {number}/{rounds}  {line}", highlight=False, markup=False)


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
        cpu_before, started = server.cpu_seconds(), time.monotonic()
        result = run_wrk(server.address, settings.duration, pin.client(), server.headers)
        cpu = (server.cpu_seconds() - cpu_before) / (time.monotonic() - started)
        still_alive(server)
        run.columns[name].throughput.append(result)
        run.columns[name].cpu.append(cpu)
        return (
            f"{name:<{NAME_WIDTH}} {result.rps:>9,.0f} req/s  p50 {result.p50_ms:6.2f} ms  "
            f"p99 {result.p99_ms:6.2f} ms  errors {result.errors}  CPU {cpu:4.0%}"
        )

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
        errors = result.errors + result.non_2xx
        return (
            f"{name:<{NAME_WIDTH}} {result.rps:>9,.0f} req/s  p50 {result.p50_ms:6.2f} ms  "
            f"p99 {result.p99_ms:6.2f} ms  errors {errors}"
        )

    interleave(console, run, live, settings.rounds, measure)


def write_json(path: Path, document: dict[str, object]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    return path


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through the ExitStack, which stops every server


def measure_all(console: Console, run: Run, settings: Settings, pin: Pinning) -> None:
    with tempfile.TemporaryDirectory(prefix="garrison-bench-") as tmp, ExitStack() as stack:
        live = start_all(stack, Path(tmp), pin, settings, run)
        warm_up(console, run, live, settings, pin)
        measure_throughput(console, run, live, settings, pin)
        measure_latency(console, run, live, settings, pin)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        print(f"missing {', '.join(missing)}; install with:\n  {APT_COMMAND}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    console = Console(width=None if sys.stdout.isatty() else 140)
    pin = pinning(args.pin)
    settings = make_settings(args, pin)
    now = datetime.now().astimezone()
    machine = report.machine_info()
    header = report.header_lines(now.isoformat(timespec="seconds"), machine, settings)
    for line in header:
        console.print(line, highlight=False, markup=False)
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
    document = report.to_json(now.isoformat(), machine, settings, summary, dataclasses.asdict(run))
    path = write_json(args.json or OUT_DIR / f"gateway-{now:%Y-%m-%d-%H%M%S}.json", document)
    console.print(f"results written to {path}", highlight=False, markup=False)
    if args.markdown:
        print(report.markdown(summary, header))
    return 0


if __name__ == "__main__":
    sys.exit(main())
