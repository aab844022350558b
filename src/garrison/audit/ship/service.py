"""The shippers of one collector: built from ``audit.shipping``, run as background tasks, stopped with it.

How the collector (audit/component.py) carries it, through its extension points (``install`` does
all three from a setup hook): the service is an ``AfterCommit`` stage whose ``committed`` only sets
``wake`` (the shippers read the log themselves, from their cursors); ``run(reader)`` is a background
task that ships until cancelled and then closes its connections; ``metrics`` joins the collector's
registry. Building the service reads every credential and CA file, so a missing one fails the start
and names the file. A shipper that fails unexpectedly (the log unreadable) is logged and restarted
from its saved cursor after a back-off, never left dead.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Protocol

import httpx
from prometheus_client import CollectorRegistry

from garrison.audit.pipeline import AfterCommit, LoggedEvent, LogReader
from garrison.audit.ship.backoff import Backoff
from garrison.audit.ship.cursor import CursorFile
from garrison.audit.ship.elasticsearch import ElasticsearchSink
from garrison.audit.ship.loki import LokiSink
from garrison.audit.ship.metrics import ShippingMetrics
from garrison.audit.ship.otlp import OtlpSink
from garrison.audit.ship.receiver import Receiver, ShippingSetupError
from garrison.audit.ship.shipper import Shipper, Sink
from garrison.config.audit_shipping import (
    ElasticsearchShipperConfig,
    LokiShipperConfig,
    ShipperConfig,
    ShippingConfig,
)
from garrison.config.loader import LoadedConfig
from garrison.core.runner import StartFailed
from garrison.telemetry import logging as log

__all__ = ["ShippingHost", "ShippingService", "build_sink", "cursor_path", "install"]


def cursor_path(state_dir: Path, shipper: str) -> Path:
    return state_dir / "audit" / "ship" / f"{shipper}.cursor"


def build_sink(spec: ShipperConfig, transport: httpx.AsyncBaseTransport | None = None) -> Sink:
    receiver = Receiver(spec.name, spec.url, spec.auth, spec.tls, spec.timeout, transport)
    if isinstance(spec, LokiShipperConfig):
        return LokiSink(spec, receiver)
    if isinstance(spec, ElasticsearchShipperConfig):
        return ElasticsearchSink(spec, receiver)
    return OtlpSink(spec, receiver)


class ShippingService:
    def __init__(
        self,
        shipping: ShippingConfig,
        state_dir: Path,
        *,
        wake: asyncio.Event | None = None,
        clock: Callable[[], float] = time.time,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.wake = asyncio.Event() if wake is None else wake
        self.metrics = ShippingMetrics(lambda: 0, clock)
        self.state_dir = state_dir
        self.specs = list(shipping.shippers)
        self.sinks = {spec.name: build_sink(spec, transport) for spec in self.specs}
        for spec in self.specs:
            self.metrics.stats(spec.name)  # every shipper on /metrics from the start
        self.shippers: list[Shipper] = []
        self._tasks: list[asyncio.Task[None]] = []

    async def committed(self, entries: Sequence[LoggedEvent]) -> None:
        """AfterCommit: new entries are durable; wake the shippers."""
        del entries
        self.wake.set()

    def start(self, reader: LogReader) -> None:
        """A task per shipper over ``reader``, on the running loop."""
        self.metrics.log_size = reader.size
        for spec in self.specs:
            if spec.tls.insecure_skip_verify:
                log.warn(
                    "audit.ship.insecure",
                    shipper=spec.name,
                    message="TLS verification is OFF for this receiver: anyone on the path can read "
                    "and alter the shipped audit log (insecure)",
                )
            shipper = Shipper(
                spec.name,
                self.sinks[spec.name],
                reader,
                self.wake,
                CursorFile(cursor_path(self.state_dir, spec.name)),
                self.metrics.stats(spec.name),
                batch_max=spec.batch_max,
                batch_wait=spec.batch_wait,
                backoff=Backoff(spec.retry_initial, spec.retry_max),
            )
            self.shippers.append(shipper)
            log.log("audit.ship.started", shipper=spec.name, type=spec.type, url=spec.url)
            self._tasks.append(asyncio.create_task(self._supervise(shipper), name=f"ship-{spec.name}"))

    async def run(self, reader: LogReader) -> None:
        """Background task: ship until cancelled, then close the receivers' connections."""
        self.start(reader)
        try:
            await asyncio.gather(*self._tasks)
        finally:
            await self.close()

    async def _supervise(self, shipper: Shipper) -> None:
        failures = 0
        while True:
            try:
                await shipper.run()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug or an unreadable log: log it and start again from the cursor
                failures += 1
                log.error("audit.ship.crashed", shipper=shipper.name, error=f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(shipper.backoff.delay(failures))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        for sink in self.sinks.values():
            await sink.aclose()


class ShippingHost(Protocol):
    """What ``install`` needs of the collector component (audit/component.py's AuditComponent)."""

    loaded: LoadedConfig
    registry: CollectorRegistry
    stages: list[AfterCommit]
    background: list[Callable[[LogReader], Awaitable[None]]]


async def install(host: ShippingHost) -> None:
    """A setup hook: the configured shippers join the collector (nothing when none is configured)."""
    config = host.loaded.config
    if config.audit is None or not config.audit.shipping.shippers:
        return
    try:
        service = ShippingService(config.audit.shipping, config.state_dir)
    except ShippingSetupError as exc:
        raise StartFailed(str(exc)) from None
    host.registry.register(service.metrics)
    host.stages.append(service)
    host.background.append(service.run)
