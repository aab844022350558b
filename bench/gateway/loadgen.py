"""The load generators: wrk for saturation throughput, hey for latency at a fixed rate.

wrk is run and parsed by common.loadgen; hey, which only this benchmark uses, is here. Both run as
subprocesses with a hard timeout; the hey parser is a plain function, checkable against saved output.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from common.loadgen import WRK_CONNECTIONS, LoadError, WrkResult, parse_wrk, run_tool, search, wrk_argv

HEY_WORKERS = 10

_HEY_PERCENTILE = re.compile(r"^\s+(\d+)% in ([\d.]+) secs", re.MULTILINE)
_HEY_RPS = re.compile(r"^\s+Requests/sec:\s+([\d.]+)", re.MULTILINE)
_HEY_STATUS = re.compile(r"^\s+\[(\d{3})\]\s+(\d+) responses", re.MULTILINE)
_HEY_ERROR = re.compile(r"^\s+\[(\d+)\]\s+\D", re.MULTILINE)


@dataclass(frozen=True)
class HeyResult:
    rps: float
    p50_ms: float
    p99_ms: float
    responses: int
    non_2xx: int
    errors: int  # requests that got no response at all


def parse_hey(text: str) -> HeyResult:
    """Read hey's default summary (latencies are printed to 0.1 ms)."""
    percentiles = {int(p): round(float(v) * 1000.0, 4) for p, v in _HEY_PERCENTILE.findall(text)}
    if 50 not in percentiles or 99 not in percentiles:
        raise LoadError(f"no latency distribution in output:\n{text}")
    statuses = {int(code): int(n) for code, n in _HEY_STATUS.findall(text)}
    _, _, error_part = text.partition("Error distribution:")
    return HeyResult(
        rps=float(search(_HEY_RPS, text, "Requests/sec").group(1)),
        p50_ms=percentiles[50],
        p99_ms=percentiles[99],
        responses=sum(statuses.values()),
        non_2xx=sum(n for code, n in statuses.items() if not 200 <= code < 300),
        errors=sum(int(n) for n in _HEY_ERROR.findall(error_part)),
    )


def _header_flags(headers: dict[str, str] | None) -> list[str]:
    """`-H "Name: value"` for each header (wrk and hey spell it the same way)."""
    return [flag for name, value in (headers or {}).items() for flag in ("-H", f"{name}: {value}")]


@dataclass(frozen=True)
class LoadShape:
    """How a column is saturated: wrk's threads and connections, http or https; or (`full_handshakes`)
    hey with as many workers and no keep-alive, for a new connection and a full TLS handshake per request."""

    threads: int = 1
    connections: int = WRK_CONNECTIONS
    scheme: str = "http"
    full_handshakes: bool = False


def run_load(
    address: str,
    seconds: int,
    prefix: list[str],
    headers: dict[str, str] | None = None,
    shape: LoadShape = LoadShape(),
) -> WrkResult:
    """Saturate address for `seconds` as `shape` says (run_wrk, or run_hey_new_connections)."""
    if shape.full_handshakes:
        return run_hey_new_connections(address, seconds, prefix, shape.connections, headers)
    return run_wrk(address, seconds, prefix, headers, shape)


def run_hey_new_connections(
    address: str, seconds: int, prefix: list[str], workers: int, headers: dict[str, str] | None = None
) -> WrkResult:
    """As many requests as `workers` hey workers get through over https, each on a new connection.

    hey -disable-keepalive opens a connection per request, and Go's TLS client keeps no session cache
    unless told to, so each of them is a full handshake whatever the server offers (wrk instead
    resumes its session on every reconnect). The figures come back as a WrkResult (socket errors:
    requests hey got no answer to).
    """
    argv = [*prefix, "hey", "-z", f"{seconds}s", "-c", str(workers), "-disable-keepalive"]
    argv += [*_header_flags(headers), f"https://{address}/"]
    found = parse_hey(run_tool("hey", argv, seconds))
    return WrkResult(
        rps=found.rps,
        p50_ms=found.p50_ms,
        p99_ms=found.p99_ms,
        requests=found.responses,
        non_2xx=found.non_2xx,
        socket_errors=found.errors,
    )


def run_wrk(
    address: str,
    seconds: int,
    prefix: list[str],
    headers: dict[str, str] | None = None,
    shape: LoadShape = LoadShape(),
) -> WrkResult:
    """Saturate address for `seconds`: by default one wrk thread and WRK_CONNECTIONS keep-alive connections.

    With a `Connection: close` header, wrk opens a new connection (and over https does a new TLS
    handshake) for every request: it reconnects whenever a response is not keep-alive.
    """
    argv = [*wrk_argv(prefix, seconds, shape.threads, shape.connections), *_header_flags(headers)]
    argv.append(f"{shape.scheme}://{address}/")
    return parse_wrk(run_tool("wrk", argv, seconds))


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
    return parse_hey(run_tool("hey", argv, seconds))
