"""wrk as both benchmarks drive it (one thread, WRK_CONNECTIONS keep-alive connections, --latency).

Load generators run as subprocesses with a hard timeout and their text summaries are parsed here; the
parser is a plain function so that it can be checked against saved output without running anything.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

WRK_CONNECTIONS = 50
GRACE = 30.0  # seconds a load generator may overrun its duration before it is killed

_TIME_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_WRK_PERCENTILE = re.compile(r"^\s+(\d+(?:\.\d+)?)%\s+([\d.]+)(us|ms|s|m|h)\s*$", re.MULTILINE)
_WRK_RPS = re.compile(r"^Requests/sec:\s+([\d.]+)", re.MULTILINE)
_WRK_REQUESTS = re.compile(r"^\s+(\d+) requests in ", re.MULTILINE)
_WRK_SOCKET = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
_WRK_NON_2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")


class LoadError(Exception):
    """A load generator failed or printed something we cannot read."""


@dataclass(frozen=True)
class WrkResult:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    non_2xx: int  # wrk counts statuses above 399 ("Non-2xx or 3xx responses")
    socket_errors: int  # connect + read + write + timeout

    @property
    def errors(self) -> int:
        return self.non_2xx + self.socket_errors


def search(pattern: re.Pattern[str], text: str, what: str) -> re.Match[str]:
    match = pattern.search(text)
    if match is None:
        raise LoadError(f"no {what} in output:\n{text}")
    return match


def parse_wrk(text: str) -> WrkResult:
    """Read `wrk --latency` output (a Lua script's own lines are left to the caller)."""
    found = _WRK_PERCENTILE.findall(text)
    percentiles = {float(p): round(float(v) * _TIME_UNITS_MS[u], 4) for p, v, u in found}
    if 50.0 not in percentiles or 99.0 not in percentiles:
        raise LoadError(f"no latency distribution (was --latency given?) in output:\n{text}")
    socket = _WRK_SOCKET.search(text)
    non_2xx = _WRK_NON_2XX.search(text)
    return WrkResult(
        rps=float(search(_WRK_RPS, text, "Requests/sec").group(1)),
        p50_ms=percentiles[50.0],
        p99_ms=percentiles[99.0],
        requests=int(search(_WRK_REQUESTS, text, "request count").group(1)),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(int(n) for n in socket.groups()) if socket else 0,
    )


def wrk_argv(
    prefix: list[str], seconds: int, threads: int = 1, connections: int = WRK_CONNECTIONS
) -> list[str]:
    """wrk with `threads` threads (1) and `connections` connections (WRK_CONNECTIONS) for `seconds`; the
    caller adds script and URL."""
    return [*prefix, "wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency"]


PACED_SCRIPT = Path(__file__).with_name("paced.lua")


def run_paced(
    address: str,
    path: str,
    seconds: int,
    rate: float,
    prefix: list[str],
    headers: dict[str, str] | None = None,
) -> WrkResult:
    """About ``rate`` req/s of independent arrivals for ``seconds`` (latency at a fixed rate).

    WRK_CONNECTIONS connections each wait an exponential time of mean WRK_CONNECTIONS / rate before
    every request (paced.lua), so arrivals are close to Poisson. hey -q, the other choice, gives each
    worker its own ticker and starts them together: requests then come in bursts of one per worker,
    and the median request queues behind the rest of its burst, which measures the burst more than the
    hop. The rate reached is a little under ``rate`` (each connection also waits for its answer) and is
    reported as measured.
    """
    mean_ms = 1000.0 * WRK_CONNECTIONS / rate
    env = {**os.environ, "PACED_MEAN_MS": f"{mean_ms:.3f}"}
    argv = [*wrk_argv(prefix, seconds), "-s", str(PACED_SCRIPT)]
    for name, value in (headers or {}).items():
        argv += ["-H", f"{name}: {value}"]
    argv.append(f"http://{address}{path}")
    return parse_wrk(run_tool("wrk", argv, seconds, env))


def run_tool(tool: str, argv: list[str], seconds: int, env: dict[str, str] | None = None) -> str:
    """Run a load generator for `seconds` (killed GRACE seconds later) and return what it printed."""
    timeout = seconds + GRACE
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False, env=env)
    except subprocess.TimeoutExpired as exc:
        raise LoadError(f"{tool} ran past {timeout:.0f} s and was killed") from exc
    if done.returncode != 0:
        shown = " ".join("Authorization: <redacted>" if a.startswith("Authorization:") else a for a in argv)
        raise LoadError(f"{shown} exited with {done.returncode}:\n{done.stderr}{done.stdout}")
    return done.stdout
