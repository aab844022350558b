"""The Loki shipper against a receiver on a real socket that checks the push API's documented shape.

Shape (Loki HTTP API, ``POST /loki/api/v1/push``, JSON): ``{"streams": [{"stream": {label: value},
"values": [[<unix epoch ns as a string>, <line>], ...]}]}``; label names match
``[a-zA-Z_][a-zA-Z0-9_]*``; a stream's entries are in time order.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from ship_receivers import MemoryLog, Receiver, Seen, sample_events, secret_file, serving, until

from garrison.audit.ship.service import ShippingService
from garrison.config.audit_shipping import ShippingConfig
from garrison.pki.tls import ensure_auto_certificate

pytestmark = pytest.mark.process  # uvicorn receivers on port-0 sockets

LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


def check_push(seen: Seen) -> list[tuple[dict[str, str], list[tuple[int, str]]]]:
    """The push request, validated against the documented shape; its streams."""
    assert seen.method == "POST" and seen.path == "/loki/api/v1/push"
    assert seen.headers["content-type"] == "application/json"
    body = json.loads(seen.body)
    assert isinstance(body, dict) and set(body) == {"streams"}
    streams = []
    for stream in body["streams"]:
        assert set(stream) == {"stream", "values"}
        labels = stream["stream"]
        assert labels and all(LABEL_NAME.match(k) and isinstance(v, str) for k, v in labels.items())
        values = []
        for value in stream["values"]:
            assert isinstance(value, list) and len(value) == 2
            stamp, line = value
            assert isinstance(stamp, str) and stamp.isdigit() and isinstance(line, str)
            values.append((int(stamp), line))
        assert [ns for ns, _ in values] == sorted(ns for ns, _ in values), "a stream's entries in time order"
        streams.append((labels, values))
    return streams


def loki_config(url: str, **extra: Any) -> ShippingConfig:
    spec = {"name": "loki", "type": "loki", "url": url, "batch_wait": 0, "retry_initial": 0.01}
    return ShippingConfig.model_validate({"shippers": [{**spec, "retry_max": 0.05, **extra}]})


class Loki:
    """Stores what passes the shape check; ``failing`` answers that status for that many requests."""

    def __init__(self) -> None:
        self.lines: list[tuple[dict[str, str], int, str]] = []
        self.failing: list[int] = []
        self.too_old: int | None = None  # entries older than this (ns) are refused as Loki does

    def __call__(self, seen: Seen) -> tuple[int, dict[str, str], bytes]:
        streams = check_push(seen)
        if self.failing:
            return self.failing.pop(0), {}, b"ingester unavailable"
        if self.too_old is not None:
            return self.refuse_old(streams, self.too_old)
        for labels, values in streams:
            self.lines += [(labels, ns, line) for ns, line in values]
        return 204, {}, b""

    def refuse_old(
        self, streams: list[tuple[dict[str, str], list[tuple[int, str]]]], limit: int
    ) -> tuple[int, dict[str, str], bytes]:
        """Store the recent entries, refuse the old ones with Loki's 400 message."""
        complaints, total = [], 0
        for labels, values in streams:
            total += len(values)
            for ns, line in values:
                if ns < limit:
                    complaints.append(f"entry with timestamp {ns} ignored, reason: 'entry too far behind'")
                else:
                    self.lines.append((labels, ns, line))
        if not complaints:
            return 204, {}, b""
        message = ",\n".join(complaints) + f",\ntotal ignored: {len(complaints)} out of {total}"
        return 400, {"content-type": "text/plain"}, message.encode()


def test_a_batch_is_pushed_with_few_labels_per_stream_in_time_order(tmp_path: Path) -> None:
    events = sample_events(30)
    events[5] = replace(events[5], time=events[0].time - 10)  # out of order in the log
    events[3] = replace(events[3], time=events[0].time - 20)  # same stream as events[0]

    async def body() -> None:
        loki, log = Loki(), MemoryLog()
        receiver = Receiver(loki)
        password = secret_file(tmp_path / "loki.password", "pa55-word")
        async with serving(receiver) as url:
            config = loki_config(
                url,
                tenant="acme",
                labels={"env": "test"},
                auth={"username": "garrison", "password_file": password},
            )
            service = ShippingService(config, tmp_path, wake=log.wake)
            service.start(log)
            log.append(*events)
            stats = service.metrics.stats("loki")
            await until(lambda: stats.position == 30)
            await service.close()
        seen = receiver.requests[0]
        assert seen.headers["x-scope-orgid"] == "acme"
        assert seen.headers["authorization"] == "Basic " + base64.b64encode(b"garrison:pa55-word").decode()
        labels = {tuple(sorted(labels.items())) for labels, _, _ in loki.lines}
        assert {dict(found)["component"] for found in labels} == {"gateway", "identity", "mesh"}
        assert all(set(dict(found)) == {"job", "component", "outcome", "env"} for found in labels)
        values = " ".join(v for found in labels for _, v in found)
        assert not any(e.id in values or e.actor.ip in values or e.actor.subject in values for e in events)
        by_line = {line: ns for _, ns, line in loki.lines}
        for event in events:  # every event once, its exact logged line, its own time in ns
            assert by_line[event.to_json().decode()] == round(event.time * 1e6) * 1000
        assert len(loki.lines) == 30 and stats.shipped == 30

    asyncio.run(body())


def test_an_outage_then_recovery_ships_everything_once(tmp_path: Path) -> None:
    async def body() -> None:
        loki, log = Loki(), MemoryLog()
        loki.failing = [503, 503, 500, 429]
        async with serving(Receiver(loki)) as url:
            service = ShippingService(loki_config(url, batch_max=7), tmp_path, wake=log.wake)
            service.start(log)
            log.append(*sample_events(20))
            await until(lambda: len(loki.lines) == 20)
            log.append(*sample_events(5, start=1_796_000_100.0))
            await until(lambda: len(loki.lines) == 25)
            stats = service.metrics.stats("loki")
            await until(lambda: stats.position == 25)
            await service.close()
        assert sorted(line for _, _, line in loki.lines) == sorted(e.line.decode() for e in log.entries)
        assert stats.failures == 4 and stats.shipped == 25 and not stats.skipped

    asyncio.run(body())


def test_entries_loki_refuses_with_400_are_counted_and_skipped_not_retried(tmp_path: Path) -> None:
    events = sample_events(10)

    async def body() -> None:
        loki, log = Loki(), MemoryLog()
        loki.too_old = round(events[3].time * 1e6) * 1000  # "entry too far behind": events 0 to 2
        receiver = Receiver(loki)
        async with serving(receiver) as url:
            service = ShippingService(loki_config(url, batch_max=4), tmp_path, wake=log.wake)
            service.start(log)
            log.append(*events)
            stats = service.metrics.stats("loki")
            await until(lambda: stats.position == 10)
            await service.close()
        assert len(receiver.requests) == 3  # the partly refused batch was not sent again
        assert sorted(line for _, _, line in loki.lines) == sorted(e.to_json().decode() for e in events[3:])
        assert stats.skipped == {"refused": 3} and stats.shipped == 7 and stats.failures == 0

    asyncio.run(body())


def test_tls_verifies_the_receiver_against_the_configured_ca(tmp_path: Path) -> None:
    cert, key = ensure_auto_certificate(tmp_path / "tls", ["localhost"])

    async def body() -> None:
        loki, log = Loki(), MemoryLog()
        log.append(*sample_events(3))
        async with serving(Receiver(loki), tls=(cert, key)) as url:
            unverified = ShippingService(loki_config(url), tmp_path / "a", wake=log.wake)
            unverified.start(log)  # the system CAs do not know this receiver: retried, never sent
            stats = unverified.metrics.stats("loki")
            await until(lambda: stats.failures >= 2)
            await unverified.close()
            assert not loki.lines
            trusting = loki_config(url, tls={"ca_file": str(tmp_path / "tls" / "ca.pem")})
            verified = ShippingService(trusting, tmp_path / "b", wake=log.wake)
            verified.start(log)
            await until(lambda: len(loki.lines) == 3)
            await verified.close()

    asyncio.run(body())


def test_the_lag_grows_while_the_receiver_is_down_and_returns_to_zero(tmp_path: Path) -> None:
    events = sample_events(5, start=1_796_000_000.0)

    async def body() -> None:
        loki, log = Loki(), MemoryLog()
        loki.failing = [503] * 1000  # down until cleared
        async with serving(Receiver(loki)) as url:
            now = 1_796_000_060.0
            service = ShippingService(loki_config(url), tmp_path, wake=log.wake, clock=lambda: now)
            registry = CollectorRegistry(auto_describe=False)
            registry.register(service.metrics)
            service.start(log)
            log.append(*events)
            stats = service.metrics.stats("loki")
            await until(lambda: stats.failures >= 3)
            labels = {"shipper": "loki"}
            assert registry.get_sample_value("garrison_audit_ship_lag_entries", labels) == 5
            assert registry.get_sample_value("garrison_audit_ship_lag_seconds", labels) == pytest.approx(60.0)
            loki.failing.clear()
            await until(lambda: stats.position == 5)
            assert registry.get_sample_value("garrison_audit_ship_lag_entries", labels) == 0
            assert registry.get_sample_value("garrison_audit_ship_lag_seconds", labels) == 0
            await service.close()
        assert len(loki.lines) == 5

    asyncio.run(body())
