"""Identity benchmark: client_credentials token issuance and introspection, Garrison against oidc-provider.

Both providers run in ONE invocation and are measured in interleaved rounds (token: oidc-provider,
garrison; introspection of one token: ...; introspection of N tokens: ...; then the next round), so
machine noise hits both alike. See bench/README.md.

    .venv/bin/python bench/identity/run.py [--quick] [--only oidc-provider] [--markdown]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import shutil
import signal
import sys
import tempfile
import time
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path
from types import FrameType
from urllib.parse import urlencode

import report
import servers
from loadgen import LoadError, Workload, WrkResult, run_wrk
from oauth import OAuthError, check_provider, introspection_tokens
from results import (
    INTROSPECT_SAME,
    PEER,
    PROVIDERS,
    TOKEN,
    WORKLOADS,
    Cell,
    ProviderRun,
    Run,
    Settings,
    summarize,
)
from rich.console import Console
from servers import Pinning, Provider, StartError, Unavailable

OUT_DIR = Path(__file__).resolve().parent.parent / "out"
APT_COMMAND = "apt-get install -y wrk"
TOKEN_EXPECT = '"access_token"%s*:%s*"'  # Lua patterns for post.lua
ACTIVE_EXPECT = '"active"%s*:%s*true'
WIDTH = max(len(w) for w in WORKLOADS) + 1 + max(len(p) for p in PROVIDERS)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run (default 10)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument(
        "--warmup", type=int, default=2, help="seconds of wrk per provider and workload first"
    )
    parser.add_argument("--quick", action="store_true", help="3 s x 1 round, 1 s warm-up")
    parser.add_argument("--only", default=",".join(PROVIDERS), help="providers to measure, comma-separated")
    parser.add_argument(
        "--tokens", type=int, default=100, help="tokens the rotating introspection cycles through"
    )
    parser.add_argument("--no-pin", dest="pin", action="store_false", help="do not pin processes to cores")
    parser.add_argument("--markdown", action="store_true", help="also print a snippet for bench/RESULTS.md")
    parser.add_argument(
        "--json", type=Path, help="where to write results (default bench/out/identity-<date>.json)"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.rounds, args.warmup = 3, 1, 1
    args.only = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(args.only) - set(PROVIDERS))
    if unknown or not args.only:
        parser.error(f"--only takes names from {', '.join(PROVIDERS)}; got {', '.join(unknown) or 'none'}")
    if min(args.duration, args.rounds) < 1 or args.warmup < 0 or not 1 <= args.tokens <= 1000:
        parser.error("--duration and --rounds must be at least 1, --warmup at least 0, --tokens 1 to 1000")
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
        rotating=args.tokens,
        providers=[name for name in PROVIDERS if name in args.only],
        pinned=pin.enabled,
        pinning=placement,
    )


class Bench:
    """One run: the live providers, where results go, and how each measurement is made."""

    def __init__(self, console: Console, run: Run, settings: Settings, pin: Pinning, scratch: Path) -> None:
        self.console = console
        self.run = run
        self.settings = settings
        self.pin = pin
        self.scratch = scratch
        self.live: dict[str, Provider] = {}

    def say(self, text: str) -> None:
        self.console.print(text, highlight=False, markup=False)

    def fail(self, name: str, why: str) -> None:
        self.run.providers[name].failure = why
        self.say(f"{name}: {why}")
        provider = self.live.pop(name, None)
        if provider is not None:
            provider.server.stop()

    def start_all(self, stack: ExitStack, tmp: Path) -> None:
        """Start and check each provider; a failure drops that provider, not the run."""
        for name in self.settings.providers:
            start = servers.start_oidc_provider if name == PEER else servers.start_garrison
            try:
                provider = start(tmp, self.pin)
            except Unavailable as exc:
                self.fail(name, f"skipped: {exc}")
                continue
            except StartError as exc:
                self.fail(name, f"failed to start: {exc}")
                continue
            stack.enter_context(provider.server)
            self.live[name] = provider
            try:
                check_provider(provider, introspection_tokens(provider, self.settings.rotating))
            except OAuthError as exc:
                self.fail(name, f"failed the start-up check: {exc}\n{provider.server.output_tail()}")
                continue
            self.run.providers[name].checks = provider.checks
            self.say(f"{name}: serving at {provider.address}; start-up checks passed")

    def workload(self, name: str, provider: Provider) -> Workload:
        """What wrk sends for one workload; introspection tokens are fetched fresh (they live 5 minutes)."""
        if name == TOKEN:
            return Workload(provider.token_path, provider.authorization, [provider.token_body], TOKEN_EXPECT)
        count = 1 if name == INTROSPECT_SAME else self.settings.rotating
        tokens = introspection_tokens(provider, count)
        bodies = [urlencode({"token": token, "token_type_hint": "access_token"}) for token in tokens]
        return Workload(provider.introspection_path, provider.authorization, bodies, ACTIVE_EXPECT)

    def measure(self, workload: str, name: str, seconds: int, record: bool) -> str:
        provider = self.live[name]
        load = self.workload(workload, provider)
        cpu_before, started = provider.server.cpu_seconds(), time.monotonic()
        result = run_wrk(provider.address, seconds, self.pin.client(), load, self.scratch)
        cpu = (provider.server.cpu_seconds() - cpu_before) / (time.monotonic() - started)
        if not provider.still_alive():
            server = provider.server
            raise StartError(
                f"died during the run (status {server.proc.returncode}):\n{server.output_tail()}"
            )
        if record:
            cell = self.run.cells[workload][name]
            cell.throughput.append(result)
            cell.cpu.append(cpu)
        return progress(workload, name, result, cpu)

    def rounds(self, count: int, seconds: int, record: bool, title: str) -> None:
        for number in range(1, count + 1):
            for workload in WORKLOADS:
                for name in list(self.live):
                    try:
                        line = self.measure(workload, name, seconds, record)
                    except StartError as exc:
                        self.fail(name, str(exc))
                        line = f"{workload} {name}: died; this round's figures are dropped"
                    except (LoadError, OAuthError) as exc:
                        self.fail(name, f"measurement failed: {exc}")
                        line = f"{workload} {name}: measurement failed"
                    self.say(f"  {title} {number}/{count}  {line}")


def progress(workload: str, name: str, result: WrkResult, cpu: float) -> str:
    return (
        f"{workload + ' ' + name:<{WIDTH}} {result.rps:>9,.0f} req/s  p50 {result.p50_ms:6.2f} ms  "
        f"p99 {result.p99_ms:6.2f} ms  errors {result.errors}  CPU {cpu:4.0%}"
    )


def measure_all(console: Console, run: Run, settings: Settings, pin: Pinning) -> None:
    with tempfile.TemporaryDirectory(prefix="garrison-bench-identity-") as tmp, ExitStack() as stack:
        bench = Bench(console, run, settings, pin, Path(tmp))
        bench.start_all(stack, Path(tmp))
        if settings.warmup and bench.live:
            bench.say(f"warm-up: {settings.warmup} s of wrk per provider and workload")
            bench.rounds(1, settings.warmup, record=False, title="warm-up")
        if bench.live:
            bench.say(f"throughput: wrk for {settings.duration} s per provider and workload per round")
            bench.rounds(settings.rounds, settings.duration, record=True, title="round")


def write_json(path: Path, document: dict[str, object]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    return path


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through the ExitStack, which stops every server


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        print(f"missing wrk; install with:\n  {APT_COMMAND}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    console = Console(width=None if sys.stdout.isatty() else 160)
    pin = pinning(args.pin)
    settings = make_settings(args, pin)
    now = datetime.now().astimezone()
    run = Run(
        {name: ProviderRun(name) for name in settings.providers},
        {workload: {name: Cell() for name in settings.providers} for workload in WORKLOADS},
    )
    if PEER in settings.providers:
        try:
            servers.ensure_oidc_provider()  # first: the header names the installed version
        except StartError as exc:
            run.providers[PEER].failure = f"skipped: {exc}" if isinstance(exc, Unavailable) else str(exc)
            settings = dataclasses.replace(settings, providers=[p for p in settings.providers if p != PEER])
    machine = report.machine_info()
    header = report.header_lines(now.isoformat(timespec="seconds"), machine, settings)
    for line in header:
        console.print(line, highlight=False, markup=False)
    if PEER in run.providers and run.providers[PEER].failure:
        console.print(f"{PEER}: {run.providers[PEER].failure}", highlight=False, markup=False)
    try:
        measure_all(console, run, settings, pin)
    except KeyboardInterrupt:
        print("interrupted; every server was stopped", file=sys.stderr)
        return 130
    summary = summarize(run, pin.enabled)
    checks = {name: p.checks for name, p in run.providers.items()}
    report.print_report(console, summary, checks, settings.rotating)
    document = report.to_json(now.isoformat(), machine, settings, summary, dataclasses.asdict(run))
    path = write_json(args.json or OUT_DIR / f"identity-{now:%Y-%m-%d-%H%M%S}.json", document)
    console.print(f"results written to {path}", highlight=False, markup=False)
    if args.markdown:
        command = shlex.join([".venv/bin/python", "bench/identity/run.py", *(argv or sys.argv[1:])])
        print(report.markdown(summary, header, settings.rotating, command))
    return 1 if any(p.failure for p in run.providers.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
