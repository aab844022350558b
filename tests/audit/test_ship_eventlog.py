"""Shipping from the collector's real log (EventLog): across segment files, and across a restart of both
the log and the shipper, every entry reaches the receiver once, as the exact line the log holds."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from ship_receivers import Receiver, Seen, sample_events, serving, until

from garrison.audit.log import EventLog
from garrison.audit.segments import list_segments
from garrison.audit.ship.service import ShippingService
from garrison.config.audit_shipping import ShippingConfig

pytestmark = pytest.mark.process  # a uvicorn receiver on a port-0 socket


def test_a_real_log_ships_once_across_segments_and_a_restart(tmp_path: Path) -> None:
    events = sample_events(60)
    pushed: list[str] = []

    def loki(seen: Seen) -> tuple[int, dict[str, str], bytes]:
        assert seen.path == "/loki/api/v1/push"
        pushed.extend(line for stream in json.loads(seen.body)["streams"] for _, line in stream["values"])
        return 204, {}, b""

    async def run(url: str, first: int, last: int) -> list[bytes]:
        log = await EventLog.open(tmp_path / "log", segment_bytes=4096)
        spec = {"name": "loki", "type": "loki", "url": url, "batch_max": 8, "batch_wait": 0}
        service = ShippingService(ShippingConfig.model_validate({"shippers": [spec]}), tmp_path)
        background = asyncio.create_task(service.run(log))  # as the collector runs it
        for start in range(first, last, 7):  # commits of 7, each handed to the stage, which wakes it
            await service.committed(await log.append(events[start : min(start + 7, last)]))
        stats = service.metrics.stats("loki")
        await until(lambda: stats.position == last)
        background.cancel()
        with pytest.raises(asyncio.CancelledError):
            await background
        lines = [entry.line for entry in await log.read(0, last)]
        await log.close()
        return lines

    async def body() -> None:
        async with serving(Receiver(loki)) as url:
            await run(url, 0, 35)
            assert len(list_segments(tmp_path / "log")) > 1  # the log rolled to more segment files
            logged = await run(url, 35, 60)
        assert sorted(pushed) == sorted(line.decode() for line in logged)  # each line once, as logged
        assert len(set(pushed)) == 60

    asyncio.run(body())
