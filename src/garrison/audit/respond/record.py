"""The trail of every response: an `audit.response` event through the Appender, and the metrics.

One event per action, undo, failure, skip and dry run, so the log says what the collector did to
whom and why, in the same hash chain as the events that caused it (``details.alert_id`` joins them).

``details``: ``action``, ``phase`` (do | undo), ``result`` (done | undone | failed | skipped |
in_force | dry_run | busy), ``dry_run``, ``expiry`` (RFC 3339, absent when the action does not
expire), ``for_seconds``, ``status`` (the HTTP status; the worst of several gateways), ``call``
(method and path), ``error``, ``alert_id``, ``rule``. ``outcome``: success for done, undone and
dry_run; failure for failed and busy; unknown for skipped and in_force (nothing done, nothing wrong).

Metric (the contract's name): ``garrison_audit_responses_total{action,outcome}`` with outcome one of
success | failure | skipped | dry_run | undone | undo_failed; action an unknown name is "other", so
a rule cannot mint series. ``garrison_audit_responses_pending_undos``: quarantines to lift.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter, Gauge

from garrison.audit.pipeline import AlertRaised, Appender
from garrison.audit.respond.actions import ACTIONS
from garrison.events.schema import Actor, Event, Outcome, rfc3339
from garrison.telemetry import logging as log

__all__ = ["Recorder", "ResponseMetrics", "ResponseRecord"]

_OUTCOMES: Final[dict[str, Outcome]] = {
    "done": "success",
    "undone": "success",
    "dry_run": "success",
    "failed": "failure",
    "busy": "failure",
    "skipped": "unknown",
    "in_force": "unknown",
}
_METRIC_OUTCOME: Final = {
    ("do", "done"): "success",
    ("do", "dry_run"): "dry_run",
    ("do", "skipped"): "skipped",
    ("do", "in_force"): "skipped",
    ("undo", "undone"): "undone",
    ("undo", "dry_run"): "dry_run",
}


@dataclass(frozen=True)
class ResponseRecord:
    """One line of the trail, before it becomes an event."""

    action: str
    result: str  # a key of _OUTCOMES
    actor: Actor
    alert_id: str
    rule: str
    target: str | None = None
    phase: str = "do"
    dry_run: bool = False
    until: float | None = None
    seconds: float | None = None
    status: int | None = None
    call: str | None = None
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def event(self, instance: str) -> Event:
        details: dict[str, Any] = {
            "action": self.action[:64],
            "phase": self.phase,
            "result": self.result,
            "dry_run": self.dry_run,
            "alert_id": self.alert_id,
            "rule": self.rule,
        }
        optional = {
            "expiry": rfc3339(self.until) if self.until is not None else None,
            "for_seconds": self.seconds,
            "status": self.status,
            "call": self.call,
            "error": self.error[:500] if self.error else None,
        }
        details.update({k: v for k, v in optional.items() if v is not None})
        details.update(self.extra)
        return Event(
            component="audit",
            type="audit.response",
            outcome=_OUTCOMES[self.result],
            actor=self.actor,
            target=self.target[:1024] if self.target else None,
            details=details,
            instance=instance,
        )

    @classmethod
    def for_alert(cls, alert: AlertRaised, action: str, result: str, **fields: Any) -> ResponseRecord:
        return cls(action, result, alert.actor, alert.alert_id, alert.rule, **fields)


class ResponseMetrics:
    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.responses = Counter(
            "garrison_audit_responses",
            "Automated response actions, by action and outcome (success, failure, skipped, dry_run, "
            "undone, undo_failed).",
            ["action", "outcome"],
            registry=registry,
        )
        self.pending_undos = Gauge(
            "garrison_audit_responses_pending_undos",
            "Actions in force that the collector will undo at their expiry (quarantines).",
            registry=registry,
        )

    def count(self, record: ResponseRecord) -> None:
        outcome = _METRIC_OUTCOME.get((record.phase, record.result))
        if outcome is None:
            outcome = "undo_failed" if record.phase == "undo" else "failure"
        action = record.action if record.action in ACTIONS else "other"
        self.responses.labels(action, outcome).inc()


class Recorder:
    """Appends records and counts them; never raises (a log that refuses is logged, not fatal)."""

    def __init__(self, appender: Appender, metrics: ResponseMetrics, instance: str) -> None:
        self.appender = appender
        self.metrics = metrics
        self.instance = instance

    async def __call__(self, record: ResponseRecord, count: bool = True) -> None:
        if count:
            self.metrics.count(record)
        line: dict[str, Any] = {"action": record.action, "result": record.result, "target": record.target}
        if record.result in ("failed", "busy"):
            log.warn(
                "audit.response.failed", **line, phase=record.phase, error=record.error, status=record.status
            )
        else:
            log.log("audit.response", **line, phase=record.phase, dry_run=record.dry_run)
        try:
            await self.appender([record.event(self.instance)])
        except Exception as exc:  # the trail's failure must not stop the responses
            log.error("audit.response.record_failed", action=record.action, error=type(exc).__name__)
