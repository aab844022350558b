"""Active health checks: probe each target's health endpoint and flip `Target.healthy`.

Passive detection (the circuit breaker) only learns from traffic; active checks also notice a target
that is down while idle, and bring it back without sacrificing a real request. Each probe uses a fresh
connection, never the pool's, so it measures "can a new connection get a 2xx" and cannot be confused
by a pooled connection's state. Thresholds add hysteresis, so one lost probe does not flap a target.
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import httptools

from garrison.proxy.upstream.target import Target

__all__ = ["ActiveHealthChecker", "HealthCheckSpec"]

log = logging.getLogger(__name__)

# Origin-form path: visible ASCII without spaces, so it cannot inject into the request line.
_PATH = re.compile(r"/[!-~]*\Z")
# A health response larger than this before its headers end is treated as a failure.
_MAX_HEAD_BYTES = 64 * 1024


@dataclass(frozen=True)
class HealthCheckSpec:
    """How to probe: GET `path` every `interval` s; `timeout` bounds connect + response head."""

    path: str = "/health"
    interval: float = 5.0
    timeout: float = 1.0
    healthy_threshold: int = 2
    unhealthy_threshold: int = 3

    def __post_init__(self) -> None:
        if not _PATH.match(self.path):
            raise ValueError(f"health check path {self.path!r} must start with '/' and be visible ASCII")
        if not self.interval > 0 or not self.timeout > 0:
            raise ValueError("health check interval and timeout must be > 0 seconds")
        if self.healthy_threshold < 1 or self.unhealthy_threshold < 1:
            raise ValueError("health check thresholds must be >= 1")


class _HeadDone:
    """httptools callbacks: note when the response head (status line + headers) is complete."""

    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = False

    def on_headers_complete(self) -> None:
        self.done = True


class ActiveHealthChecker:
    """Probes every target once per interval, concurrently, from one asyncio task."""

    def __init__(
        self,
        targets: Sequence[Target],
        spec: HealthCheckSpec,
        on_change: Callable[[Target, bool], None] | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._targets = tuple(targets)
        self._spec = spec
        self._on_change = on_change
        self._ssl_context = ssl_context
        self._task: asyncio.Task[None] | None = None
        # Consecutive probe results that disagree with the target's current state.
        self._streak: dict[Target, int] = {}
        # Request head around the Host value; concatenated, not %-formatted, as the path may hold '%'.
        self._head_start = b"GET " + spec.path.encode("ascii") + b" HTTP/1.1\r\nHost: "
        self._head_end = b"\r\nConnection: close\r\nUser-Agent: garrison-health\r\nAccept: */*\r\n\r\n"

    def start(self) -> None:
        """Start probing in the running loop; the first round starts at once."""
        if self._task is not None and not self._task.done():
            raise RuntimeError("health checker already started")
        self._task = asyncio.get_running_loop().create_task(self._run(), name="garrison-health-check")

    async def stop(self) -> None:
        """Cancel the probing task and wait for it (and its open probe connections) to end."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        await asyncio.wait((task,))
        if not task.cancelled() and task.exception() is not None:
            log.error("health check task had failed", exc_info=task.exception())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            await asyncio.gather(*(self._check(target) for target in self._targets))
            # Start-to-start cadence; a round slower than the interval is followed immediately.
            await asyncio.sleep(max(0.0, started + self._spec.interval - loop.time()))

    async def _check(self, target: Target) -> None:
        try:
            ok = await self.probe(target)
        except Exception:  # a bug here must not stop checking the other targets
            log.exception("health probe of %s crashed", target.url)
            ok = False
        self._update(target, ok)

    def _update(self, target: Target, ok: bool) -> None:
        """Apply one probe result with the thresholds' hysteresis."""
        if ok == target.healthy:
            self._streak[target] = 0
            return
        streak = self._streak.get(target, 0) + 1
        needed = self._spec.healthy_threshold if ok else self._spec.unhealthy_threshold
        if streak < needed:
            self._streak[target] = streak
            return
        self._streak[target] = 0
        target.healthy = ok
        log.warning("upstream %s is now %s", target.url, "healthy" if ok else "unhealthy")
        if self._on_change is not None:
            try:
                self._on_change(target, ok)
            except Exception:
                log.exception("health on_change callback failed for %s", target.url)

    async def probe(self, target: Target) -> bool:
        """One GET of the health path; True iff a well-formed 2xx response head arrives in time."""
        try:
            async with asyncio.timeout(self._spec.timeout):
                return await self._probe(target)
        except (OSError, TimeoutError, httptools.HttpParserError) as exc:  # ssl.SSLError is an OSError
            log.debug("health probe of %s failed: %r", target.url, exc)
            return False

    async def _probe(self, target: Target) -> bool:
        tls: ssl.SSLContext | None = None
        if target.scheme == "https":
            tls = self._ssl_context or ssl.create_default_context()
        reader, writer = await asyncio.open_connection(target.host, target.port, ssl=tls)
        try:
            writer.write(self._head_start + target.host_header + self._head_end)
            head = _HeadDone()
            parser = httptools.HttpResponseParser(head)
            received = 0
            while not head.done:
                data = await reader.read(16384)
                received += len(data)
                if not data or received > _MAX_HEAD_BYTES:
                    return False
                parser.feed_data(data)
            status: int = parser.get_status_code()
            return 200 <= status < 300
        finally:
            # The probe needs no graceful close; abort also avoids waiting on a TLS close_notify
            # from a peer that may be the very thing that is hanging.
            writer.transport.abort()
