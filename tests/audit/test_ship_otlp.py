"""The OTLP shipper against a receiver on a real socket that parses each request into the real
``ExportLogsServiceRequest`` (opentelemetry-proto) with protobuf's json_format, unknown fields refused.

OTLP/JSON differs from the proto3 JSON mapping in one place: trace and span ids are hex, not base64.
The receiver converts them as an OpenTelemetry collector does before parsing, and checks their length.
"""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from ship_receivers import MemoryLog, Receiver, Seen, sample_events, secret_file, serving, until

from garrison.audit.ship.service import ShippingService
from garrison.config.audit_shipping import ShippingConfig
from garrison.events.schema import Actor, Event

pytestmark = pytest.mark.process  # uvicorn receivers on port-0 sockets


def parse_export(seen: Seen) -> ExportLogsServiceRequest:
    assert seen.method == "POST" and seen.path == "/v1/logs"
    assert seen.headers["content-type"] == "application/json"
    raw = json.loads(seen.body)
    for resource in raw["resourceLogs"]:
        for scope in resource["scopeLogs"]:
            for record in scope["logRecords"]:
                assert isinstance(record["timeUnixNano"], str) and record["timeUnixNano"].isdigit()
                if "traceId" in record:
                    assert len(record["traceId"]) == 32
                    record["traceId"] = base64.b64encode(bytes.fromhex(record["traceId"])).decode()
    request = ExportLogsServiceRequest()
    json_format.ParseDict(raw, request, ignore_unknown_fields=False)
    return request


class Collector:
    def __init__(self) -> None:
        self.requests: list[ExportLogsServiceRequest] = []
        self.reject_first = 0

    def __call__(self, seen: Seen) -> tuple[int, dict[str, str], bytes]:
        self.requests.append(parse_export(seen))
        if self.reject_first:
            rejected, self.reject_first = self.reject_first, 0
            partial = {"partialSuccess": {"rejectedLogRecords": str(rejected), "errorMessage": "bad"}}
            return 200, {}, json.dumps(partial).encode()
        return 200, {}, b"{}"

    def records(self) -> list[Any]:
        return [
            record
            for request in self.requests
            for resource in request.resource_logs
            for scope in resource.scope_logs
            for record in scope.log_records
        ]


def otlp_config(url: str, **extra: Any) -> ShippingConfig:
    spec = {"name": "otel", "type": "otlp", "url": url, "batch_wait": 0, "retry_initial": 0.01}
    return ShippingConfig.model_validate({"shippers": [{**spec, "retry_max": 0.05, **extra}]})


def test_records_parse_into_the_real_export_request(tmp_path: Path) -> None:
    events = sample_events(3)
    alert = Event(
        component="audit",
        type="audit.alert",
        outcome="success",
        actor=Actor(ip="198.51.100.7"),
        details={"rule": "brute_force", "severity": "high", "count": 12, "ratio": 0.5, "ok": True},
        trace_id="not-hex",
    )
    events.append(alert)

    async def body() -> None:
        collector, log = Collector(), MemoryLog()
        receiver = Receiver(collector)
        token = secret_file(tmp_path / "otel.token", "t0ken-value")
        async with serving(receiver) as url:
            config = otlp_config(url, service_name="shop-audit", auth={"bearer_token_file": token})
            service = ShippingService(config, tmp_path, wake=log.wake)
            service.start(log)
            log.append(*events)
            stats = service.metrics.stats("otel")
            await until(lambda: stats.position == 4)
            await service.close()
        assert receiver.requests[0].headers["authorization"] == "Bearer t0ken-value"
        resource = collector.requests[0].resource_logs[0].resource
        assert [(a.key, a.value.string_value) for a in resource.attributes] == [
            ("service.name", "shop-audit")
        ]
        records = collector.records()
        assert len(records) == 4 and stats.shipped == 4
        for record, entry in zip(records, log.entries, strict=True):
            event = entry.event
            assert record.time_unix_nano == round(event.time * 1e6) * 1000
            assert record.body.string_value == entry.line.decode()
            attributes = {a.key: a.value for a in record.attributes}
            assert attributes["id"].string_value == event.id
            assert attributes["type"].string_value == event.type
            assert attributes["actor.ip"].string_value == event.actor.ip
            assert attributes["log.seq"].int_value == entry.seq
        assert (records[0].severity_number, records[0].severity_text) == (9, "INFO")  # success
        assert (records[1].severity_number, records[1].severity_text) == (13, "WARN")  # failure
        assert records[0].trace_id == bytes.fromhex(events[0].trace_id or "")
        last = {a.key: a.value for a in records[3].attributes}
        assert (records[3].severity_number, records[3].severity_text) == (17, "ERROR")  # a high alert
        assert records[3].trace_id == b"" and last["trace_id"].string_value == "not-hex"
        assert last["details.count"].int_value == 12 and last["details.ratio"].double_value == 0.5
        assert last["details.ok"].bool_value is True

    asyncio.run(body())


def test_partially_rejected_records_are_counted_as_skipped(tmp_path: Path) -> None:
    async def body() -> None:
        collector, log = Collector(), MemoryLog()
        collector.reject_first = 2
        async with serving(Receiver(collector)) as url:
            service = ShippingService(otlp_config(url, batch_max=5), tmp_path, wake=log.wake)
            service.start(log)
            log.append(*sample_events(10))
            stats = service.metrics.stats("otel")
            await until(lambda: stats.position == 10)
            await service.close()
        assert len(collector.requests) == 2  # the partial success was not sent again
        assert stats.shipped == 8 and stats.skipped == {"refused": 2} and stats.failures == 0

    asyncio.run(body())


def test_an_outage_is_retried_with_the_same_records(tmp_path: Path) -> None:
    async def body() -> None:
        collector, log = Collector(), MemoryLog()
        statuses = [503, 502, 200]

        def flaky(seen: Seen) -> tuple[int, dict[str, str], bytes]:
            status, headers, answer = collector(seen)
            return (
                (statuses.pop(0), {"retry-after": "0"}, b"")
                if statuses[0] != 200
                else (status, headers, answer)
            )

        async with serving(Receiver(flaky)) as url:
            service = ShippingService(otlp_config(url), tmp_path, wake=log.wake)
            service.start(log)
            log.append(*sample_events(4))
            stats = service.metrics.stats("otel")
            await until(lambda: stats.position == 4)
            await service.close()
        assert len(collector.requests) == 3 and stats.failures == 2 and stats.shipped == 4
        bodies = {record.body.string_value for record in collector.records()}
        assert bodies == {entry.line.decode() for entry in log.entries}

    asyncio.run(body())
