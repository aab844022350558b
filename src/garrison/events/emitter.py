"""How a component hands an audit event over: ``emitter.emit(event)``, which never blocks and never
raises. ``NullEmitter`` is the emitter of a deployment without an ``audit`` section.

A component builds its emitter with ``emitter_for(config, component, instance, client_context)``
(the sidecar, which holds no config model, with ``AuditEmitter(settings, ...)``), starts it once
its loop runs (``await emitter.start()``) and closes it when it drains (``await emitter.close()``:
what is still in memory goes to the collector or to the spool). ``client_context`` returns the
component's current mesh client context (a workload certificate rotates), or None: then the emit
token authenticates it. ``register_metrics(emitter, registry)`` puts its counters on /metrics.

``AuditEmitter``, the delivering one:

- ``emit`` (and ``defer``, which builds the event later, in the pump: a hot path such as the
  gateway's pays for a tuple, not for an ``Event`` and its JSON) appends to a bounded deque: O(1),
  whatever the collector does. Past ``memory_max`` queued events, the event is dropped and counted
  (``memory_full``); from three quarters of it, a spiller moves the oldest batches to the spool.
- one pump task takes batches (``batch_max`` events, at most 4 MiB, or whatever waited
  ``flush_interval``), gives each a sequence number, and posts it on one keep-alive connection
  (client.py). A batch that fails (no connection, 503, a timeout) goes to the spool (spool.py),
  and so does every later batch while the spool holds anything, so replay, oldest sequence first,
  keeps the emitter's order. Replay retries with capped exponential back-off and jitter.
- a full spool drops the batch, counted (``spool_full``) and logged once per episode; lines the
  collector rejects are counted (``rejected``) and never sent again. Nothing is lost silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import ssl
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from garrison.events.client import Answer, IntakeClient, IntakeUnavailable
from garrison.events.metrics import EmitterCollector, EmitterStats
from garrison.events.schema import Event
from garrison.events.settings import EmitterSettings, emitter_settings
from garrison.events.spool import Spool
from garrison.telemetry import logging as log

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from garrison.config.assembly import GarrisonConfig

__all__ = ["AuditEmitter", "Emitter", "NullEmitter", "emitter_for", "register_metrics"]

T = TypeVar("T")
MAX_BODY = 4 * 1024 * 1024  # the intake's bound on one request
RETRY_BASE, RETRY_CAP = 0.5, 30.0  # seconds: the first retry after a failure, and the longest wait
CLOSE_TIMEOUT = 5.0  # close(): how long the last batches may take to reach the collector


class Emitter(Protocol):
    def emit(self, event: Event) -> None:
        """Queue ``event`` for the collector; returns at once, whatever the collector's state."""

    def defer(self, build: Callable[[T], Event | bytes], arg: T) -> None:
        """Queue ``build(arg)``, called later off the caller's path (same guarantees as ``emit``).
        ``build`` may return the event's wire line itself (what ``Event.to_json`` gives, with the
        instance filled in), when a hot path builds it by hand."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...


class NullEmitter:
    """No audit collector configured: events go nowhere."""

    def emit(self, event: Event) -> None:
        del event

    def defer(self, build: Callable[[T], Event | bytes], arg: T) -> None:
        del build, arg

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None


def _same(event: Event) -> Event:
    return event


class AuditEmitter:
    """The delivering emitter of one component process; see the module docstring."""

    def __init__(
        self,
        settings: EmitterSettings,
        component: str,
        instance: str,
        client_context: Callable[[], ssl.SSLContext | None] | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        jitter: Callable[[], float] = random.random,
        retry_base: float = RETRY_BASE,
        retry_cap: float = RETRY_CAP,
    ) -> None:
        self.settings = settings
        self.component = component
        self.instance = instance
        self.stats = EmitterStats()
        self.client = IntakeClient(settings, client_context)
        self.spool: Spool | None = None
        self._queue: deque[tuple[Callable[[Any], Event | bytes], Any]] = deque()
        self._memory_max = settings.memory_max
        self._batch_max = settings.batch_max
        self._high_water = settings.memory_max * 3 // 4
        self._low_water = settings.memory_max // 4
        self._clock, self._jitter = clock, jitter
        self._retry_base, self._retry_cap = retry_base, retry_cap
        self._sequence = 1
        self._carry: bytes | None = None  # a line that did not fit its batch: the next batch's first
        self._first_at = 0.0  # when the oldest queued event was queued (clock)
        self._retry_at = 0.0
        self._failures = 0
        self._wake = asyncio.Event()
        self._spill = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self._closed = False  # close() is done: a late event goes straight to the spool
        self._started = False
        self._warned: set[str] = set()  # troubles logged in this episode
        self.close_timeout = CLOSE_TIMEOUT

    def __repr__(self) -> str:
        return f"AuditEmitter({self.component}/{self.instance} -> {self.settings.url})"

    # -- the caller's side: O(1), never raises -----------------------------------------------------
    def emit(self, event: Event) -> None:
        self.defer(_same, event)

    def defer(self, build: Callable[[T], Event | bytes], arg: T) -> None:
        if self._closed:
            self._after_close(build, arg)
            return
        queue = self._queue
        size = len(queue)
        if size >= self._memory_max:
            self.stats.dropped["memory_full"] += 1
            return
        queue.append((build, arg))
        self.stats.emitted += 1
        if size == 0:
            self._first_at = self._clock()
            self._wake.set()
        elif size + 1 == self._batch_max:
            self._wake.set()
        if size + 1 == self._high_water:
            self._spill.set()

    # -- life --------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Open the spool (replaying what a previous run left) and start delivering."""
        if self._started:
            return
        self._started = True
        directory = self.settings.spool_dir(self.component, self.instance)
        try:
            self.spool = await asyncio.to_thread(Spool, directory, self.settings.spool_max)
        except OSError as exc:
            log.error("audit.emitter.spool_unusable", directory=str(directory), error=str(exc))
        if self.spool is not None:
            self._sequence = self.spool.next_sequence
            if len(self.spool):
                log.log("audit.emitter.spool_found", events=self.spool.events, bytes=self.spool.bytes)
        self._sync_spool_stats()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._pump()), loop.create_task(self._spiller())]

    async def close(self) -> None:
        """Deliver what is in memory (for at most CLOSE_TIMEOUT), spool the rest, stop."""
        if self._closing:
            return
        self._closing = True
        self._wake.set()
        pump = self._tasks[0] if self._tasks else None
        others = self._tasks[1:]
        for task in others:
            task.cancel()
        if pump is not None:
            try:
                await asyncio.wait_for(asyncio.shield(pump), self.close_timeout)
            except TimeoutError:
                pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump
        await asyncio.gather(*others, return_exceptions=True)
        while self._queue or self._carry is not None:
            self._to_spool(*self._take())
        await self.client.close()
        self._closed = True
        if self.spool is not None:
            self.spool.close()  # the lock: a new emitter of this name may start (a restart, a test)

    def _after_close(self, build: Callable[[Any], Event | bytes], arg: Any) -> None:
        """An event emitted after close() (a component's last words): written to the spool at once,
        for the next start of this component to deliver; never silently lost."""
        self.stats.emitted += 1
        self._queue.append((build, arg))
        self._to_spool(*self._take())

    # -- the pump ----------------------------------------------------------------------------------
    async def _pump(self) -> None:
        while True:
            spool = self.spool
            if spool is not None and len(spool) and not self._closing and self._clock() >= self._retry_at:
                await self._replay(spool)
                continue
            if self._batch_ready():
                await self._deliver(*self._take())
                continue
            if self._closing:
                return
            await self._idle()

    def _batch_ready(self) -> bool:
        if not self._queue and self._carry is None:
            return False
        if self._closing or len(self._queue) >= self._batch_max:
            return True
        return self._clock() - self._first_at >= self.settings.flush_interval

    async def _idle(self) -> None:
        """Wait for the next batch's deadline, the next retry, or a wake-up from ``defer``."""
        now = self._clock()
        waits = []
        if self._queue or self._carry is not None:
            waits.append(self._first_at + self.settings.flush_interval - now)
        if self.spool is not None and len(self.spool):
            waits.append(self._retry_at - now)
        self._wake.clear()
        timeout = max(0.0, min(waits)) if waits else None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)
        self._note_memory_drops()

    def _take(self) -> tuple[int, list[bytes]]:
        """The next batch out of memory, serialized, with its sequence number."""
        lines: list[bytes] = []
        size = 0
        if self._carry is not None:
            lines.append(self._carry)
            size = len(self._carry)
            self._carry = None
        queue = self._queue
        while queue and len(lines) < self._batch_max:
            build, arg = queue.popleft()
            try:
                line = self._line(build(arg))
            except Exception as exc:  # a builder's bug must not stop the pump: counted, logged
                self.stats.dropped["rejected"] += 1
                log.error("audit.emitter.unserializable", error=f"{type(exc).__name__}: {exc}")
                continue
            if size + len(line) + 1 > MAX_BODY and lines:
                self._carry = line
                break
            lines.append(line)
            size += len(line) + 1
        if queue:
            self._first_at = self._clock()
        sequence = self._sequence
        self._sequence += 1
        return sequence, lines

    def _line(self, event: Event | bytes) -> bytes:
        """The event's wire form, its ``instance`` this emitter's when the event names none."""
        if isinstance(event, bytes):
            return event
        body = event.to_dict()
        if not body["instance"]:
            body["instance"] = self.instance
        return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()

    async def _deliver(self, sequence: int, lines: list[bytes]) -> None:
        spool = self.spool
        if (spool is not None and len(spool)) or self._clock() < self._retry_at:
            self._to_spool(sequence, lines)  # behind what is spooled already: order is kept
            return
        try:
            delivered = await self._send(lines)
        except asyncio.CancelledError:
            self._to_spool(sequence, lines)  # close() gave up waiting: the batch is kept
            raise
        if not delivered:
            self._to_spool(sequence, lines)

    async def _replay(self, spool: Spool) -> None:
        segment = spool.oldest()
        assert segment is not None
        if await self._send(segment.read()):
            spool.remove(segment)
            self._sync_spool_stats()
            if not len(spool):
                log.log("audit.emitter.spool_replayed", component=self.component)
                self._warned.discard("spool_full")

    async def _send(self, lines: list[bytes]) -> bool:
        """Post one batch; True when the collector settled it (acknowledged or refused for good)."""
        if not lines:
            return True
        try:
            answer = await self.client.post(b"\n".join(lines) + b"\n")
        except IntakeUnavailable as exc:
            self._failed(str(exc))
            return False
        except Exception as exc:  # a fault of ours must not stop the pump: treated as a failed delivery
            await self.client.close()
            self._failed(f"{type(exc).__name__}: {exc}")
            return False
        self._settled(answer, len(lines))
        return True

    def _settled(self, answer: Answer, sent: int) -> None:
        if self._failures:
            log.log("audit.emitter.delivering", url=self.settings.url, after_failures=self._failures)
        self._failures = 0
        self._retry_at = 0.0
        self._warned.discard("unreachable")
        stats = self.stats
        if answer.status != 200:
            stats.dropped["rejected"] += sent
            log.error("audit.emitter.batch_refused", status=answer.status, events=sent)
            return
        stats.delivered += answer.accepted + answer.duplicates
        if answer.rejected:
            stats.dropped["rejected"] += len(answer.rejected)
            first = answer.rejected[0]
            log.warn("audit.emitter.rejected", events=len(answer.rejected), first=str(first)[:300])

    def _failed(self, error: str) -> None:
        self._failures += 1
        delay = min(self._retry_cap, self._retry_base * 2 ** min(self._failures - 1, 30))
        self._retry_at = self._clock() + delay * (0.5 + 0.5 * self._jitter())
        if "unreachable" not in self._warned:
            self._warned.add("unreachable")
            log.warn("audit.emitter.unreachable", url=self.settings.url, error=error[:300])

    # -- the spool ---------------------------------------------------------------------------------
    def _to_spool(self, sequence: int, lines: list[bytes]) -> None:
        if not lines:
            return
        spool = self.spool
        if spool is not None and spool.append(sequence, lines):
            self._sync_spool_stats()
            return
        self.stats.dropped["spool_full"] += len(lines)
        if "spool_full" not in self._warned:
            self._warned.add("spool_full")
            log.warn(
                "audit.emitter.spool_full",
                component=self.component,
                bytes=spool.bytes if spool is not None else 0,
                max_bytes=self.settings.spool_max,
                message="audit events are being dropped (garrison_audit_dropped_total)",
            )

    async def _spiller(self) -> None:
        """Moves the oldest queued batches to the spool while memory is short (the pump is stuck on
        a slow collector, or the collector is away)."""
        while True:
            await self._spill.wait()
            self._spill.clear()
            while len(self._queue) > self._low_water:
                self._to_spool(*self._take())
                await asyncio.sleep(0)  # requests run between segments

    def _sync_spool_stats(self) -> None:
        spool = self.spool
        self.stats.spool_bytes = spool.bytes if spool is not None else 0
        self.stats.spool_events = spool.events if spool is not None else 0

    def _note_memory_drops(self) -> None:
        dropped = self.stats.dropped["memory_full"]
        if dropped and "memory_full" not in self._warned:
            self._warned.add("memory_full")
            log.warn("audit.emitter.memory_full", dropped=dropped, memory_max=self._memory_max)


def register_metrics(emitter: Emitter, registry: CollectorRegistry) -> None:
    """Add a delivering emitter's metrics to ``registry`` (a NullEmitter has none)."""
    if isinstance(emitter, AuditEmitter):
        registry.register(EmitterCollector(emitter.stats))


def emitter_for(
    config: GarrisonConfig,
    component: str,
    instance: str,
    client_context: Callable[[], ssl.SSLContext | None] | None = None,
) -> Emitter:
    """The emitter this component should use: a NullEmitter without an ``audit`` section."""
    settings = emitter_settings(config)
    if settings is None:
        return NullEmitter()
    return AuditEmitter(settings, component, instance, client_context)
