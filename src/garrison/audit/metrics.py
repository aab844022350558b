"""The collector's own metrics (docs/audit.md lists them), on the registry its admin listener serves.

Labels an emitter controls are capped: ``component`` and ``outcome`` come from the schema's fixed sets
(``Event.from_json`` refuses others), and ``type`` is free text, so the first ``MAX_TYPES`` types seen
get a series each and any type after them counts as ``other``: an emitter can raise counts but never
mint series without bound. The detection, response and shipping parts register their own metrics into
``registry`` (the same scrape).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from garrison.audit.pipeline import LoggedEvent

__all__ = ["MAX_TYPES", "REJECT_REASONS", "CollectorMetrics"]

MAX_TYPES = 200
# unauthenticated: no or a wrong credential; too_large: body, head or line count over the limit;
# bad_request: a body that is not NDJSON over HTTP/1.1; invalid: one line that is not a schema event;
# unavailable: the log could not be written (503).
REJECT_REASONS = frozenset({"unauthenticated", "too_large", "bad_request", "invalid", "unavailable"})
COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class CollectorMetrics:
    """Counters of what the intake received, refused and logged; the log's size and commit time."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self._types: set[str] = set()
        self.events = Counter(
            "garrison_audit_events",
            "Events logged, by component, type (the first 200 types seen, then `other`) and outcome.",
            ["component", "type", "outcome"],
            registry=self.registry,
        )
        self.rejected = Counter(
            "garrison_audit_intake_rejected",
            "Requests (or, for `invalid`, lines) the intake refused, by reason.",
            ["reason"],
            registry=self.registry,
        )
        self.duplicates = Counter(
            "garrison_audit_duplicates",
            "Events received again (an id already logged): acknowledged, not logged twice.",
            registry=self.registry,
        )
        self.entries = Gauge(
            "garrison_audit_log_entries", "Entries in the audit log.", registry=self.registry
        )
        self.commit_seconds = Histogram(
            "garrison_audit_commit_seconds",
            "Time from a batch's append to its durability (fsync), as the intake waited for it.",
            buckets=COMMIT_BUCKETS,
            registry=self.registry,
        )
        self.checkpoints = Counter(
            "garrison_audit_checkpoints", "Signed checkpoints written.", registry=self.registry
        )
        self.staged = Gauge(
            "garrison_audit_staged_entries",
            "Log entries handed to every after-commit stage (index, detection); the log's entries minus "
            "this is the stages' lag.",
            registry=self.registry,
        )
        self.stage_backlog = Gauge(
            "garrison_audit_stage_backlog",
            "Entries durable but not yet through the stages (intake waits above a bound).",
            registry=self.registry,
        )
        for reason in sorted(REJECT_REASONS):
            self.rejected.labels(reason)  # every reason present from the first scrape, at 0

    def watch_stages(self, through: Callable[[], int], backlog: Callable[[], int]) -> None:
        """Read the stages' position and backlog at each scrape (the feeder's counters)."""
        self.staged.set_function(lambda: float(through()))
        self.stage_backlog.set_function(lambda: float(backlog()))

    def _type_label(self, kind: str) -> str:
        if kind in self._types:
            return kind
        if len(self._types) < MAX_TYPES:
            self._types.add(kind)
            return kind
        return "other"

    def logged(self, entries: Sequence[LoggedEvent], log_size: int) -> None:
        counts: dict[tuple[str, str, str], int] = {}
        for entry in entries:
            event = entry.event
            key = (event.component, event.type, event.outcome)
            counts[key] = counts.get(key, 0) + 1
        for (component, kind, outcome), count in counts.items():
            self.events.labels(component, self._type_label(kind), outcome).inc(count)
        self.entries.set(log_size)

    def reject(self, reason: str, count: int = 1) -> None:
        self.rejected.labels(reason if reason in REJECT_REASONS else "bad_request").inc(count)
