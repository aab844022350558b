"""The load generators: wrk for saturation throughput, hey for latency at a fixed rate.

Both are run as subprocesses with a hard timeout and their text summaries parsed here; the parsers
are plain functions so that they can be checked against saved output without running anything.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass

WRK_CONNECTIONS = 50
HEY_WORKERS = 10
GRACE = 30.0  # seconds a load generator may overrun its duration before it is killed

_TIME_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_WRK_PERCENTILE = re.compile(r"^\s+(\d+(?:\.\d+)?)%\s+([\d.]+)(us|ms|s|m|h)\s*$", re.MULTILINE)
_WRK_RPS = re.compile(r"^Requests/sec:\s+([\d.]+)", re.MULTILINE)
_WRK_REQUESTS = re.compile(r"^\s+(\d+) requests in ", re.MULTILINE)
_WRK_SOCKET = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
_WRK_NON_2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")
_HEY_PERCENTILE = re.compile(r"^\s+(\d+)% in ([\d.]+) secs", re.MULTILINE)
_HEY_RPS = re.compile(r"^\s+Requests/sec:\s+([\d.]+)", re.MULTILINE)
_HEY_STATUS = re.compile(r"^\s+\[(\d{3})\]\s+(\d+) responses", re.MULTILINE)
_HEY_ERROR = re.compile(r"^\s+\[(\d+)\]\s+\D", re.MULTILINE)


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


@dataclass(frozen=True)
class HeyResult:
    rps: float
    p50_ms: float
    p99_ms: float
    responses: int
    non_2xx: int
    errors: int  # requests that got no response at all


def _search(pattern: re.Pattern[str], text: str, what: str) -> re.Match[str]:
    match = pattern.search(text)
    if match is None:
        raise LoadError(f"no {what} in output:\n{text}")
    return match


def parse_wrk(text: str) -> WrkResult:
    """Read `wrk --latency` output."""
    found = _WRK_PERCENTILE.findall(text)
    percentiles = {float(p): round(float(v) * _TIME_UNITS_MS[u], 4) for p, v, u in found}
    if 50.0 not in percentiles or 99.0 not in percentiles:
        raise LoadError(f"no latency distribution (was --latency given?) in output:\n{text}")
    socket = _WRK_SOCKET.search(text)
    non_2xx = _WRK_NON_2XX.search(text)
    return WrkResult(
        rps=float(_search(_WRK_RPS, text, "Requests/sec").group(1)),
        p50_ms=percentiles[50.0],
        p99_ms=percentiles[99.0],
        requests=int(_search(_WRK_REQUESTS, text, "request count").group(1)),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(int(n) for n in socket.groups()) if socket else 0,
    )


def parse_hey(text: str) -> HeyResult:
    """Read hey's default summary (latencies are printed to 0.1 ms)."""
    percentiles = {int(p): round(float(v) * 1000.0, 4) for p, v in _HEY_PERCENTILE.findall(text)}
    if 50 not in percentiles or 99 not in percentiles:
        raise LoadError(f"no latency distribution in output:\n{text}")
    statuses = {int(code): int(n) for code, n in _HEY_STATUS.findall(text)}
    _, _, error_part = text.partition("Error distribution:")
    return HeyResult(
        rps=float(_search(_HEY_RPS, text, "Requests/sec").group(1)),
        p50_ms=percentiles[50],
        p99_ms=percentiles[99],
        responses=sum(statuses.values()),
        non_2xx=sum(n for code, n in statuses.items() if not 200 <= code < 300),
        errors=sum(int(n) for n in _HEY_ERROR.findall(error_part)),
    )


def _run(argv: list[str], timeout: float) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise LoadError(f"{argv[0]} ran past {timeout:.0f} s and was killed") from exc
    if done.returncode != 0:
        shown = " ".join("Authorization: <redacted>" if a.startswith("Authorization:") else a for a in argv)
        raise LoadError(f"{shown} exited with {done.returncode}:\n{done.stderr}{done.stdout}")
    return done.stdout


def _header_flags(headers: dict[str, str] | None) -> list[str]:
    """`-H "Name: value"` for each header (wrk and hey spell it the same way)."""
    return [flag for name, value in (headers or {}).items() for flag in ("-H", f"{name}: {value}")]


def run_wrk(
    address: str, seconds: int, prefix: list[str], headers: dict[str, str] | None = None
) -> WrkResult:
    """Saturate address for `seconds` with one wrk thread and WRK_CONNECTIONS keep-alive connections."""
    argv = [*prefix, "wrk", "-t1", f"-c{WRK_CONNECTIONS}", f"-d{seconds}s", "--latency"]
    argv += [*_header_flags(headers), f"http://{address}/"]
    return parse_wrk(_run(argv, seconds + GRACE))


def run_hey(
    address: str, seconds: int, total_rps: float, prefix: list[str], headers: dict[str, str] | None = None
) -> HeyResult:
    """Drive address at total_rps for `seconds`; hey's -q is per worker, so divide by HEY_WORKERS."""
    per_worker = f"{total_rps / HEY_WORKERS:.2f}"
    argv = [
        *prefix,
        "hey",
        "-z",
        f"{seconds}s",
        "-c",
        str(HEY_WORKERS),
        "-q",
        per_worker,
        *_header_flags(headers),
        f"http://{address}/",
    ]
    return parse_hey(_run(argv, seconds + GRACE))
