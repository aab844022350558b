"""The shipper's loop over an in-memory log and a scripted sink (no sockets): batching, waking on
commits, the cursor across restarts, back-off, splitting, and the metrics it reports."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from ship_receivers import MemoryLog, no_sleep, sample_events, until

from garrison.audit.pipeline import LoggedEvent
from garrison.audit.ship.backoff import Backoff
from garrison.audit.ship.cursor import Cursor, CursorFile
from garrison.audit.ship.metrics import ShippingMetrics
from garrison.audit.ship.receiver import Delivery, ShipError, TooLarge
from garrison.audit.ship.shipper import Shipper


class ScriptedSink:
    """Stores what it is sent; ``script`` holds exceptions or deliveries to answer first, in order."""

    def __init__(self, *script: Exception | str) -> None:
        self.script = list(script)
        self.sent: list[list[int]] = []
        self.stored: list[int] = []
        self.limit: int | None = None  # batches larger than this are TooLarge

    async def send(self, entries: Sequence[LoggedEvent]) -> Delivery:
        self.sent.append([entry.seq for entry in entries])
        if self.limit is not None and len(entries) > self.limit:
            raise TooLarge
        if self.script:
            step = self.script.pop(0)
            if isinstance(step, Exception):
                raise step
            if step == "refuse":
                return Delivery(skipped={"refused": len(entries)})
        self.stored += [entry.seq for entry in entries]
        return Delivery()

    async def aclose(self) -> None:
        pass


def shipper(
    log: MemoryLog, sink: ScriptedSink, path: Path, metrics: ShippingMetrics, **options: float
) -> Shipper:
    return Shipper(
        "test",
        sink,
        log,
        log.wake,
        CursorFile(path / "test.cursor"),
        metrics.stats("test"),
        batch_max=int(options.get("batch_max", 4)),
        batch_wait=options.get("batch_wait", 0.0),
        backoff=Backoff(0.5, 8.0, draw=lambda: 0.0),
        sleep=no_sleep,
    )


async def running(ship: Shipper, position: int) -> asyncio.Task[None]:
    task = asyncio.create_task(ship.run())
    await until(lambda: ship.stats.position == position or task.done())
    return task


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_batches_of_batch_max_in_log_order_and_a_wake_on_commit(tmp_path: Path) -> None:
    async def body() -> None:
        log, sink = MemoryLog(), ScriptedSink()
        ship = shipper(log, sink, tmp_path, ShippingMetrics(log.size))
        log.append(*sample_events(10))
        task = await running(ship, 10)
        assert sink.sent == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
        assert log.wake.is_set() is False  # the shipper is waiting on it, not polling
        log.append(*sample_events(2))  # sets the event: the waiting shipper wakes
        await until(lambda: ship.stats.position == 12)
        assert sink.sent[-1] == [10, 11]
        await stop(task)

    asyncio.run(body())


def test_a_batch_lingers_for_batch_wait_to_fill(tmp_path: Path) -> None:
    async def body() -> None:
        log, sink = MemoryLog(), ScriptedSink()
        ship = shipper(log, sink, tmp_path, ShippingMetrics(log.size), batch_wait=30.0)
        task = asyncio.create_task(ship.run())
        for event in sample_events(4):  # one commit at a time, while the first batch lingers
            log.append(event)
            await asyncio.sleep(0)
        await until(lambda: ship.stats.position == 4)
        assert sink.sent == [[0, 1, 2, 3]]  # filled to batch_max: sent without waiting 30 s
        await stop(task)

    asyncio.run(body())


def test_the_cursor_survives_a_restart_and_each_entry_ships_once(tmp_path: Path) -> None:
    async def body() -> None:
        log, sink = MemoryLog(), ScriptedSink()
        log.append(*sample_events(6))
        first = await running(shipper(log, sink, tmp_path, ShippingMetrics(log.size)), 6)
        await stop(first)
        saved = json.loads((tmp_path / "test.cursor").read_text())
        assert saved == {"next": 6, "last_id": log.entries[5].event.id}
        log.append(*sample_events(3))
        second = await running(shipper(log, sink, tmp_path, ShippingMetrics(log.size)), 9)
        await stop(second)
        assert sink.stored == list(range(9))

    asyncio.run(body())


def test_a_cursor_from_another_log_starts_over(tmp_path: Path) -> None:
    async def body() -> None:
        log, sink = MemoryLog(), ScriptedSink()
        log.append(*sample_events(5))
        CursorFile(tmp_path / "test.cursor").save(Cursor(3, "an-id-this-log-does-not-hold"))
        task = await running(shipper(log, sink, tmp_path, ShippingMetrics(log.size)), 5)
        await stop(task)
        assert sink.stored == [0, 1, 2, 3, 4]

    asyncio.run(body())


def test_failures_are_retried_until_delivered_and_nothing_is_dropped(tmp_path: Path) -> None:
    async def body() -> None:
        log = MemoryLog()
        sink = ScriptedSink(ShipError("ConnectError"), ShipError("HTTP 503"), ShipError("HTTP 503"))
        metrics = ShippingMetrics(log.size)
        log.append(*sample_events(3))
        task = await running(shipper(log, sink, tmp_path, metrics), 3)
        await stop(task)
        assert sink.sent == [[0, 1, 2]] * 4 and sink.stored == [0, 1, 2]
        stats = metrics.stats("test")
        assert (stats.failures, stats.shipped, stats.skipped) == (3, 3, {})

    asyncio.run(body())


def test_too_large_batches_are_halved_and_one_event_too_large_is_skipped(tmp_path: Path) -> None:
    async def body() -> None:
        log, sink = MemoryLog(), ScriptedSink()
        sink.limit = 1
        metrics = ShippingMetrics(log.size)
        log.append(*sample_events(3))
        task = await running(shipper(log, sink, tmp_path, metrics), 3)
        await stop(task)
        assert sink.stored == [0, 1, 2] and sink.sent[0] == [0, 1, 2]
        sink.limit = 0
        log.append(*sample_events(1))
        await stop(await running(shipper(log, sink, tmp_path, metrics), 4))
        assert metrics.stats("test").skipped == {"too_large": 1}

    asyncio.run(body())


def test_backoff_doubles_with_jitter_up_to_the_cap_and_honours_retry_after() -> None:
    low, high = Backoff(0.5, 8.0, draw=lambda: 0.0), Backoff(0.5, 8.0, draw=lambda: 0.999999)
    assert [low.delay(n) for n in range(1, 7)] == [0.25, 0.5, 1.0, 2.0, 4.0, 4.0]
    assert [round(high.delay(n), 3) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]
    assert low.delay(1, retry_after=3.0) == 3.0 and low.delay(1, retry_after=600.0) == 8.0
    assert Backoff(0.5, 8.0).delay(10_000) <= 8.0


@pytest.mark.process  # runs promtool
def test_lag_metrics_and_promtool(tmp_path: Path) -> None:
    now = [1_796_000_100.0]
    log = MemoryLog()
    metrics = ShippingMetrics(log.size, clock=lambda: now[0])
    log.append(*sample_events(10, start=1_796_000_000.0))
    stats = metrics.stats("loki")
    stats.position, stats.oldest_pending, stats.shipped, stats.failures = 4, log.entries[4].event.time, 4, 2
    stats.skip("refused", 1)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(metrics)
    assert registry.get_sample_value("garrison_audit_ship_lag_entries", {"shipper": "loki"}) == 6
    lag = registry.get_sample_value("garrison_audit_ship_lag_seconds", {"shipper": "loki"})
    assert lag == pytest.approx(100.0 - 0.004)
    assert registry.get_sample_value("garrison_audit_shipped_total", {"shipper": "loki"}) == 4
    assert registry.get_sample_value("garrison_audit_ship_failures_total", {"shipper": "loki"}) == 2
    skipped = {"shipper": "loki", "reason": "refused"}
    assert registry.get_sample_value("garrison_audit_ship_skipped_total", skipped) == 1
    stats.position, stats.oldest_pending = 10, None
    assert registry.get_sample_value("garrison_audit_ship_lag_seconds", {"shipper": "loki"}) == 0
    text = generate_latest(registry)
    check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True)
    assert check.returncode == 0, check.stderr + check.stdout
