"""Processes under test: start one in its own process group, wait for it, count its CPU, stop it.

Every server runs in its own process group (``start_new_session``) so that stopping it also stops
whatever it forked (nginx's worker, Garrison's workers, node's threads). Output goes to a log file in
the run's temporary directory, never to a pipe that could fill up and stall the server mid-benchmark.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import ClassVar, ParamSpec, Self, TypeVar

STOP_TIMEOUT = 5.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

T = TypeVar("T")
P = ParamSpec("P")


class StartError(Exception):
    """A server under test did not come up; the message carries the tail of its output."""


class Unavailable(StartError):
    """Something a server needs (Redis, node, npm) is not there: it is skipped, not failed."""


class ServerDied(Exception):
    """The server under test exited while it was being measured."""


@contextlib.contextmanager
def reserved_port() -> Iterator[int]:
    """A loopback port held for the block, for a server that must be told its port on the command line.

    A socket bound to port 0 with SO_REUSEADDR and never listening holds it: nobody else can bind it or
    get it as an ephemeral port, but a server that sets SO_REUSEADDR too (nginx, asyncio, node) can bind
    and listen on it. Keep the block open until the server answers; from then on the server holds it.
    Servers that write a ready file (Garrison) listen on port 0 instead and report their address.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


class Server:
    """One started process group whose output is captured to a file."""

    def __init__(self, name: str, argv: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def cpu_seconds(self) -> float:
        """CPU time (user + system) used so far by the live processes of this server's group."""
        return group_cpu_seconds(self.proc.pid)

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def output_tail(self, lines: int = 15) -> str:
        return "\n".join(self.output().strip().splitlines()[-lines:]) or "(no output)"

    def stop(self) -> None:
        """SIGTERM the group, SIGKILL it if the leader is still there after STOP_TIMEOUT."""
        if self._log.closed:
            return  # already stopped
        self._signal_group(signal.SIGTERM)
        try:
            self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self._signal_group(signal.SIGKILL)
            self.proc.wait(STOP_TIMEOUT)
        self._log.close()

    def _signal_group(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)  # pgid == pid: the server leads its own session


def group_cpu_seconds(pgid: int) -> float:
    ticks = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()  # after "pid (comm)": field 3 onwards
        except OSError:
            continue  # exited while we looked
        if int(fields[2]) == pgid:  # field 5, pgrp
            ticks += int(fields[11]) + int(fields[12])  # fields 14 and 15, utime and stime
    return ticks / CLOCK_TICKS


def tcp_passive_opens() -> int | None:
    """TCP connections accepted so far in this network namespace (/proc/net/snmp's Tcp PassiveOpens).

    Counted around a load run, it tells whether the load opened a connection per request: other
    processes' connections add to it, so it is an upper bound of the server's own.
    """
    try:
        lines = [line.split() for line in Path("/proc/net/snmp").read_text().splitlines()]
    except OSError:
        return None
    tcp = [fields for fields in lines if fields and fields[0] == "Tcp:"]
    if len(tcp) < 2 or "PassiveOpens" not in tcp[0]:
        return None
    return int(tcp[1][tcp[0].index("PassiveOpens")])


def wait_for(server: Server, read: Callable[[], str | None], what: str, timeout: float) -> str:
    """Poll read() (an address, or None) until it answers, the server exits, or `timeout` runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not server.alive():
            raise StartError(f"exited with status {server.proc.returncode}:\n{server.output_tail()}")
        found = read()
        if found:
            return found
        time.sleep(0.05)
    raise StartError(f"{what} within {timeout:.0f} s:\n{server.output_tail()}")


def still_alive(server: Server) -> None:
    """Raise ServerDied if the server exited: figures measured against a dying process are not kept."""
    if not server.alive():
        raise ServerDied(f"died during the run (status {server.proc.returncode}):\n{server.output_tail()}")


def with_cpu_share(
    server: Server, load: Callable[P, T], *args: P.args, **kwargs: P.kwargs
) -> tuple[T, float]:
    """load(*args, **kwargs)'s result, and the share of one core the server's processes used meanwhile."""
    cpu_before, started = server.cpu_seconds(), time.monotonic()
    result = load(*args, **kwargs)
    return result, (server.cpu_seconds() - cpu_before) / (time.monotonic() - started)


@dataclass(frozen=True)
class Pinning:
    """CPU placement on two cores: the server under test alone on core 0, the load generator on core 1.

    Each benchmark says in PINNED what else shares core 1.
    """

    PINNED: ClassVar[str] = "pinned: server under test on core 0; the load generator on core 1"
    UNPINNED: ClassVar[str] = "pinning off: the scheduler places every process"

    enabled: bool

    @classmethod
    def if_possible(cls, requested: bool) -> Self:
        """Pin when asked and possible: cores 0 and 1 available to us and taskset installed."""
        return cls(requested and {0, 1} <= os.sched_getaffinity(0) and shutil.which("taskset") is not None)

    def server(self) -> list[str]:
        return ["taskset", "-c", "0"] if self.enabled else []

    def client(self) -> list[str]:
        return ["taskset", "-c", "1"] if self.enabled else []

    def describe(self, requested: bool) -> str:
        """How processes are placed, in words (and why not pinned, if pinning was asked for)."""
        if self.enabled:
            return self.PINNED
        return self.UNPINNED + (" (needs cores 0 and 1 and taskset)" if requested else "")
