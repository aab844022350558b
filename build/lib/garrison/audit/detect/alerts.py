"""From a rule's hit to an ``audit.alert`` event: deduplicated, rate-limited, suppressible.

- **Deduplicated**: while an alert for (rule, actor) is open (for the rule's window of event time
  after it was raised), further hits are counted in that alert's tally and in
  ``garrison_audit_alerts_suppressed_total{reason="duplicate"}``; no new alert.
- **Rate-limited**: at most ``rate_limit`` alerts per rule per minute of event time; beyond that,
  ``reason="rate"``. A flood of distinct attackers cannot flood the log or the responders.
- **Suppressible**: an operator's suppression (suppressions.py) drops the alert, ``reason="suppressed"``.

The alert carries the rule, severity, actor, a summary, the count, the ids of its triggering events
(at most ``MAX_IDS``) and the first few of them inline (at most ``MAX_INLINE``, within
``INLINE_BYTES``), so the log alone explains it.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass

from garrison.audit.detect.correlation import Hit, actor_key
from garrison.audit.detect.suppressions import Suppressions
from garrison.audit.pipeline import AlertRaised, LoggedEvent
from garrison.events.schema import Event

__all__ = ["AlertGate", "Counters"]

MAX_IDS = 100
MAX_INLINE = 3
INLINE_BYTES = 8 * 1024
MAX_OPEN = 10_000  # open (deduplicating) alerts kept; the oldest is forgotten first


@dataclass(slots=True)
class _Open:
    alert_id: str
    until: float
    count: int


class Counters:
    """What the metrics report: alerts raised per rule, alerts not raised per (rule, reason)."""

    def __init__(self) -> None:
        self.raised: dict[str, int] = {}
        self.suppressed: dict[tuple[str, str], int] = {}

    def suppress(self, rule: str, reason: str) -> None:
        self.suppressed[(rule, reason)] = self.suppressed.get((rule, reason), 0) + 1


class AlertGate:
    """Decides which hits become alerts and builds their events."""

    def __init__(self, suppressions: Suppressions, counters: Counters) -> None:
        self.suppressions = suppressions
        self.counters = counters
        self._open: OrderedDict[tuple[str, str], _Open] = OrderedDict()
        self._minute: dict[str, tuple[int, int]] = {}  # rule -> (minute of event time, alerts in it)

    def admit(self, hit: Hit, now: float, raised_at: float) -> tuple[Event, AlertRaised | None] | None:
        """The alert event for ``hit`` (and what to hand the responder), or None when it is a
        duplicate, over the rate, or suppressed. ``now`` is the triggering event's time, ``raised_at``
        the collector's clock (the alert event's time)."""
        rule = hit.settings.name
        actor = actor_key(hit.actor)
        key = (rule, actor)
        current = self._open.get(key)
        if current is not None and now < current.until:
            current.count += 1
            self.counters.suppress(rule, "duplicate")
            return None
        if self.suppressions.suppressed(rule, actor):
            self.counters.suppress(rule, "suppressed")
            return None
        minute, used = self._minute.get(rule, (-1, 0))
        this_minute = int(now // 60)
        used = used if minute == this_minute else 0
        if used >= hit.settings.rate_limit:
            self.counters.suppress(rule, "rate")
            return None
        self._minute[rule] = (this_minute, used + 1)
        event = self._event(hit, actor, raised_at)
        self._open[key] = _Open(event.id, now + hit.settings.window, 1)
        self._open.move_to_end(key)
        while len(self._open) > MAX_OPEN:
            self._open.popitem(last=False)
        self.counters.raised[rule] = self.counters.raised.get(rule, 0) + 1
        raised = None
        if hit.settings.responses:
            s = hit.settings
            raised = AlertRaised(event.id, rule, s.severity, hit.actor, s.responses, hit.summary)
        return event, raised

    def duplicates(self, rule: str, actor: str) -> int:
        """Hits counted into the open alert for (rule, actor) (0 when none is open)."""
        current = self._open.get((rule, actor))
        return current.count - 1 if current else 0

    @staticmethod
    def _event(hit: Hit, actor: str, raised_at: float) -> Event:
        s = hit.settings
        entries = hit.entries
        details: dict[str, object] = {
            "rule": s.name,
            "severity": s.severity,
            "actor": actor,
            "summary": hit.summary,
            "count": len(entries),
            "window": s.window,
            "responses": list(s.responses),
            "event_ids": [e.event.id for e in entries[:MAX_IDS]],
            "first_seq": entries[0].seq,
            "last_seq": entries[-1].seq,
            "events": _inline(entries),
        }
        return Event(
            component="audit",
            type="audit.alert",
            outcome="success",
            actor=hit.actor,
            target=s.name,
            trace_id=entries[-1].event.trace_id,
            details=details,
            time=raised_at,
        )


def _inline(entries: list[LoggedEvent]) -> list[object]:
    """The first few triggering events as logged, within a byte budget (an alert is one log line)."""
    inline: list[object] = []
    used = 0
    for entry in entries[:MAX_INLINE]:
        size = len(entry.line)
        if used + size > INLINE_BYTES:
            break
        inline.append(json.loads(entry.line))
        used += size
    return inline
