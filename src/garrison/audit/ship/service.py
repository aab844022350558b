"""The shippers of one collector: built from ``audit.shipping``, run as background tasks, stopped with it.

The collector builds ``ShippingService`` at start (a missing credential or CA file fails the start,
naming the file), registers ``metrics`` in its registry, calls ``start()`` once its log is open, sets
``wake`` after each commit, and awaits ``close()`` when it stops. A shipper that fails unexpectedly
(the log unreadable) is logged and restarted from its saved cursor after a back-off, never left dead.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from garrison.audit.pipeline import LogReader
from garrison.audit.ship.backoff import Backoff
from garrison.audit.ship.cursor import CursorFile
from garrison.audit.ship.elasticsearch import ElasticsearchSink
from garrison.audit.ship.loki import LokiSink
from garrison.audit.ship.metrics import ShippingMetrics
from garrison.audit.ship.otlp import OtlpSink
from garrison.audit.ship.receiver import Receiver
from garrison.audit.ship.shipper import Shipper, Sink
from garrison.config.assembly import GarrisonConfig
from garrison.config.audit_shipping import (
    ElasticsearchShipperConfig,
    LokiShipperConfig,
    ShipperConfig,
    ShippingConfig,
)
from garrison.telemetry import logging as log

__all__ = ["ShippingService", "build_sink", "cursor_path"]


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
        reader: LogReader,
        wake: asyncio.Event,
        *,
        clock: Callable[[], float] = time.time,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.metrics = ShippingMetrics(reader.size, clock)
        self.shippers: list[Shipper] = []
        self._tasks: list[asyncio.Task[None]] = []
        for spec in shipping.shippers:
            if spec.tls.insecure_skip_verify:
                log.warn(
                    "audit.ship.insecure",
                    shipper=spec.name,
                    message="TLS verification is OFF for this receiver: anyone on the path can read "
                    "and alter the shipped audit log (insecure)",
                )
            self.shippers.append(
                Shipper(
                    spec.name,
                    build_sink(spec, transport),
                    reader,
                    wake,
                    CursorFile(cursor_path(state_dir, spec.name)),
                    self.metrics.stats(spec.name),
                    batch_max=spec.batch_max,
                    batch_wait=spec.batch_wait,
                    backoff=Backoff(spec.retry_initial, spec.retry_max),
                )
            )
        self._specs = {spec.name: spec for spec in shipping.shippers}

    @classmethod
    def from_config(cls, config: GarrisonConfig, reader: LogReader, wake: asyncio.Event) -> ShippingService:
        shipping = ShippingConfig() if config.audit is None else config.audit.shipping
        return cls(shipping, config.state_dir, reader, wake)

    def start(self) -> None:
        """A task per shipper, on the running loop."""
        for shipper in self.shippers:
            spec = self._specs[shipper.name]
            log.log("audit.ship.started", shipper=shipper.name, type=spec.type, url=spec.url)
            self._tasks.append(asyncio.create_task(self._supervise(shipper), name=f"ship-{shipper.name}"))

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
        for shipper in self.shippers:
            await shipper.sink.aclose()
