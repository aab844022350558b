"""The load generator: wrk with post.lua, POSTing form bodies with HTTP Basic client authentication.

wrk runs as a subprocess with a hard timeout; what the request carries (path, Authorization, bodies,
the pattern a good response matches) goes to post.lua through the environment, so no credential is on
a command line or in an error message. The parser is a plain function, checkable against saved output.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "post.lua"
WRK_CONNECTIONS = 50
GRACE = 30.0  # seconds wrk may overrun its duration before it is killed

_TIME_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_PERCENTILE = re.compile(r"^\s+(\d+(?:\.\d+)?)%\s+([\d.]+)(us|ms|s|m|h)\s*$", re.MULTILINE)
_RPS = re.compile(r"^Requests/sec:\s+([\d.]+)", re.MULTILINE)
_REQUESTS = re.compile(r"^\s+(\d+) requests in ", re.MULTILINE)
_SOCKET = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
_NON_2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")
_UNEXPECTED = re.compile(r"^Unexpected responses: (\d+)", re.MULTILINE)


class LoadError(Exception):
    """wrk failed or printed something we cannot read."""


@dataclass(frozen=True)
class Workload:
    """What wrk sends: one path, one Authorization header, bodies taken in turn, and a good body's pattern."""

    path: str
    authorization: str
    bodies: list[str]
    expect: str  # a Lua pattern


@dataclass(frozen=True)
class WrkResult:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    non_2xx: int  # wrk counts statuses above 399 ("Non-2xx or 3xx responses")
    socket_errors: int  # connect + read + write + timeout
    unexpected: int  # post.lua: other statuses below 400 than 200, and 200s without the expected body

    @property
    def errors(self) -> int:
        return self.non_2xx + self.socket_errors + self.unexpected


def _search(pattern: re.Pattern[str], text: str, what: str) -> re.Match[str]:
    match = pattern.search(text)
    if match is None:
        raise LoadError(f"no {what} in output:\n{text}")
    return match


def parse_wrk(text: str) -> WrkResult:
    """Read `wrk --latency -s post.lua` output."""
    found = _PERCENTILE.findall(text)
    percentiles = {float(p): round(float(v) * _TIME_UNITS_MS[u], 4) for p, v, u in found}
    if 50.0 not in percentiles or 99.0 not in percentiles:
        raise LoadError(f"no latency distribution (was --latency given?) in output:\n{text}")
    socket = _SOCKET.search(text)
    non_2xx = _NON_2XX.search(text)
    return WrkResult(
        rps=float(_search(_RPS, text, "Requests/sec").group(1)),
        p50_ms=percentiles[50.0],
        p99_ms=percentiles[99.0],
        requests=int(_search(_REQUESTS, text, "request count").group(1)),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(int(n) for n in socket.groups()) if socket else 0,
        unexpected=int(_search(_UNEXPECTED, text, "'Unexpected responses' line from post.lua").group(1)),
    )


def run_wrk(address: str, seconds: int, prefix: list[str], workload: Workload, scratch: Path) -> WrkResult:
    """Saturate address for `seconds` with one wrk thread and WRK_CONNECTIONS keep-alive connections."""
    bodies = scratch / "wrk-bodies.txt"
    bodies.write_text("\n".join(workload.bodies) + "\n")
    env = dict(os.environ)
    env.update(
        BENCH_PATH=workload.path,
        BENCH_AUTHORIZATION=workload.authorization,
        BENCH_BODIES=str(bodies),
        BENCH_EXPECT=workload.expect,
    )
    argv = [*prefix, "wrk", "-t1", f"-c{WRK_CONNECTIONS}", f"-d{seconds}s", "--latency"]
    argv += ["-s", str(SCRIPT), f"http://{address}{workload.path}"]
    timeout = seconds + GRACE
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False, env=env)
    except subprocess.TimeoutExpired as exc:
        raise LoadError(f"wrk ran past {timeout:.0f} s and was killed") from exc
    finally:
        bodies.unlink(missing_ok=True)  # the bodies hold access tokens
    if done.returncode != 0:
        raise LoadError(f"{' '.join(argv)} exited with {done.returncode}:\n{done.stderr}{done.stdout}")
    return parse_wrk(done.stdout)
