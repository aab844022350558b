"""Identity benchmark: client_credentials token issuance and introspection, Garrison against oidc-provider.

Both providers run in ONE invocation and are measured in interleaved rounds (token: oidc-provider,
garrison; introspection of one token: ...; introspection of N tokens: ...; then the next round), so
machine noise hits both alike. See bench/README.md.

    .venv/bin/python bench/identity/run.py [--quick] [--only oidc-provider] [--markdown]
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
import tempfile
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path
from urllib.parse import urlencode

# Run as a script, Python puts bench/identity/ on sys.path, not bench/: add bench/ so that the code this
# benchmark shares with bench/gateway/ imports as the package `common` (bench/common/).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import report
import servers
from common import cli
from common.loadgen import LoadError
from common.processes import ServerDied, StartError, Unavailable, still_alive, with_cpu_share
from common.render import progress_line, say, to_json
from loadgen import Workload, run_wrk
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
from servers import Pinning, Provider

APT_COMMAND = "apt-get install -y wrk"
TOKEN_EXPECT = '"access_token"%s*:%s*"'  # Lua patterns for post.lua
ACTIVE_EXPECT = '"active"%s*:%s*true'
WIDTH = max(len(w) for w in WORKLOADS) + 1 + max(len(p) for p in PROVIDERS)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = cli.new_parser(__doc__)
    cli.add_timing_arguments(parser, "seconds of wrk per provider and workload first")
    cli.add_selection_arguments(parser, PROVIDERS, "providers")
    parser.add_argument(
        "--tokens", type=int, default=100, help="tokens the rotating introspection cycles through"
    )
    parser.add_argument("--no-pin", dest="pin", action="store_false", help="do not pin processes to cores")
    cli.add_output_arguments(parser, "identity")
    args = parser.parse_args(argv)
    cli.settle_arguments(parser, args, PROVIDERS, 1 <= args.tokens <= 1000, ", --tokens 1 to 1000")
    return args


def make_settings(args: argparse.Namespace, pin: Pinning) -> Settings:
    return Settings(
        duration=args.duration,
        rounds=args.rounds,
        warmup=args.warmup,
        rotating=args.tokens,
        providers=[name for name in PROVIDERS if name in args.only],
        pinned=pin.enabled,
        pinning=pin.describe(args.pin),
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
        say(self.console, text)

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
        measured = (provider.address, seconds, self.pin.client(), load, self.scratch)
        result, cpu = with_cpu_share(provider.server, run_wrk, *measured)
        still_alive(provider.server)
        if record:
            cell = self.run.cells[workload][name]
            cell.throughput.append(result)
            cell.cpu.append(cpu)
        return progress_line(f"{workload} {name}", WIDTH, result, result.errors, cpu)

    def rounds(self, count: int, seconds: int, record: bool, title: str) -> None:
        for number in range(1, count + 1):
            for workload in WORKLOADS:
                for name in list(self.live):
                    try:
                        line = self.measure(workload, name, seconds, record)
                    except ServerDied as exc:
                        self.fail(name, str(exc))
                        line = f"{workload} {name}: died; this round's figures are dropped"
                    except (LoadError, OAuthError) as exc:
                        self.fail(name, f"measurement failed: {exc}")
                        line = f"{workload} {name}: measurement failed"
                    self.say(f"  {title} {number}/{count}  {line}")


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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if cli.missing_tools(("wrk",), APT_COMMAND):
        return 2
    cli.exit_on_sigterm()
    console = cli.console(160)
    pin = Pinning.if_possible(args.pin)
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
        say(console, line)
    if PEER in run.providers and run.providers[PEER].failure:
        say(console, f"{PEER}: {run.providers[PEER].failure}")
    try:
        measure_all(console, run, settings, pin)
    except KeyboardInterrupt:
        print("interrupted; every server was stopped", file=sys.stderr)
        return 130
    summary = summarize(run, pin.enabled)
    checks = {name: p.checks for name, p in run.providers.items()}
    report.print_report(console, summary, checks, settings.rotating)
    document = to_json(now.isoformat(), machine, settings, summary, dataclasses.asdict(run))
    cli.write_results(console, args.json, "identity", now, document)
    if args.markdown:
        command = shlex.join([".venv/bin/python", "bench/identity/run.py", *(argv or sys.argv[1:])])
        print(report.markdown(summary, header, settings.rotating, command))
    return 1 if any(p.failure for p in run.providers.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
