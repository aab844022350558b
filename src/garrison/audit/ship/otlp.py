"""OTLP/HTTP logs: ``POST /v1/logs``, the JSON encoding of ExportLogsServiceRequest.

One resource (``service.name``), one scope (``garrison.audit``), a log record per event:
``timeUnixNano`` (as a string, as proto3 JSON writes 64-bit integers), severity from the outcome
(an ``audit.alert`` from its own severity), the logged line as the body, and the event's fields as
attributes (``actor.ip``, ``details.status``...). ``traceId`` is set when the event's trace id is 32
hex digits (OTLP/JSON writes ids in hex, not base64); it is an attribute either way. An answer's
``partialSuccess.rejectedLogRecords`` are records the receiver refused for good (the protocol says
not to retry them): counted as skipped.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from typing import Any

from garrison.audit.pipeline import LoggedEvent
from garrison.audit.ship.loki import unix_nanos
from garrison.audit.ship.receiver import Delivery, Receiver, whole_answer
from garrison.config.audit_shipping import OtlpShipperConfig
from garrison.events.schema import Event

__all__ = ["LOGS_PATH", "OtlpSink", "any_value", "export_body", "log_record", "severity"]

LOGS_PATH = "/v1/logs"
_TRACE_ID = re.compile(r"^[0-9a-f]{32}$")
_BY_OUTCOME = {
    "success": (9, "INFO"),
    "unknown": (9, "INFO"),
    "failure": (13, "WARN"),
    "denied": (13, "WARN"),
}
_BY_ALERT = {"low": (9, "INFO"), "medium": (13, "WARN"), "high": (17, "ERROR"), "critical": (21, "FATAL")}


def severity(event: Event) -> tuple[int, str]:
    """OpenTelemetry's SeverityNumber and text for an event."""
    if event.type == "audit.alert" and event.details.get("severity") in _BY_ALERT:
        return _BY_ALERT[event.details["severity"]]
    return _BY_OUTCOME.get(event.outcome, (17, "ERROR"))


def any_value(value: Any) -> dict[str, Any]:
    """A JSON value as an OTLP AnyValue (by exact type first: this runs per attribute per event)."""
    kind = type(value)
    if kind is str:
        return {"stringValue": value}
    if kind is bool:
        return {"boolValue": value}
    if kind is int:
        return {"intValue": str(value)}
    if kind is float:
        return {"doubleValue": value}
    if isinstance(value, list):
        return {"arrayValue": {"values": [any_value(item) for item in value]}}
    if isinstance(value, dict):
        return {"kvlistValue": {"values": [{"key": str(k), "value": any_value(v)} for k, v in value.items()]}}
    if isinstance(value, str | bool | int | float):  # subclasses (an IntEnum, a str subclass)
        return any_value(json.loads(json.dumps(value)))
    return {}


def _attributes(event: Event) -> list[dict[str, Any]]:
    attributes = [
        {"key": "id", "value": {"stringValue": event.id}},
        {"key": "component", "value": {"stringValue": event.component}},
        {"key": "instance", "value": {"stringValue": event.instance}},
        {"key": "type", "value": {"stringValue": event.type}},
        {"key": "outcome", "value": {"stringValue": event.outcome}},
    ]
    for key, value in event.actor.to_dict().items():
        attributes.append({"key": "actor." + key, "value": {"stringValue": value}})
    for key in ("target", "trace_id", "request_id", "origin"):
        text = getattr(event, key)
        if text is not None:
            attributes.append({"key": key, "value": {"stringValue": text}})
    for key, value in event.details.items():
        attributes.append({"key": "details." + key, "value": any_value(value)})
    attributes.append({"key": "v", "value": {"intValue": str(event.version)}})
    return attributes


def log_record(entry: LoggedEvent, observed: int) -> dict[str, Any]:
    event = entry.event
    number, text = severity(event)
    record: dict[str, Any] = {
        "timeUnixNano": str(unix_nanos(event.time)),
        "observedTimeUnixNano": str(observed),
        "severityNumber": number,
        "severityText": text,
        "body": {"stringValue": entry.line.decode("utf-8", "replace")},
        "attributes": [*_attributes(event), {"key": "log.seq", "value": {"intValue": str(entry.seq)}}],
    }
    if event.trace_id is not None and _TRACE_ID.match(event.trace_id) and set(event.trace_id) != {"0"}:
        record["traceId"] = event.trace_id
    return record


def export_body(entries: Sequence[LoggedEvent], service_name: str, observed: int) -> bytes:
    body = {
        "resourceLogs": [
            {
                "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": service_name}}]},
                "scopeLogs": [
                    {
                        "scope": {"name": "garrison.audit", "version": "1"},
                        "logRecords": [log_record(entry, observed) for entry in entries],
                    }
                ],
            }
        ]
    }
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def _rejected(answer: bytes) -> tuple[int, str | None]:
    try:
        partial = json.loads(answer or b"{}").get("partialSuccess") or {}
        return int(partial.get("rejectedLogRecords") or 0), partial.get("errorMessage")
    except (ValueError, TypeError, AttributeError):
        return 0, None


class OtlpSink:
    def __init__(self, spec: OtlpShipperConfig, receiver: Receiver) -> None:
        self.receiver = receiver
        self._service_name = spec.service_name

    async def send(self, entries: Sequence[LoggedEvent]) -> Delivery:
        body = export_body(entries, self._service_name, time.time_ns())
        answer = await self.receiver.post(LOGS_PATH, body, "application/json", {})
        decided = whole_answer(answer, entries)
        if decided is not None:
            return decided
        rejected, message = _rejected(answer.body)
        if rejected <= 0:
            return Delivery()
        return Delivery(skipped={"refused": min(rejected, len(entries))}, error=str(message)[:300])

    async def aclose(self) -> None:
        await self.receiver.aclose()
