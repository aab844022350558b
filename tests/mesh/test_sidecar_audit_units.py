"""The sidecar's mesh.edge bookkeeping without sockets: once per pair, again after EDGE_REPEAT, and
a bounded set of pairs."""

from __future__ import annotations

import pytest

from garrison.events.schema import Event
from garrison.mesh.sidecar import audit as sidecar_audit
from garrison.mesh.sidecar.audit import EDGE_REPEAT, SidecarAudit


class Recorder:
    def __init__(self) -> None:
        self.events: list[Event] = []

    def emit(self, event: Event) -> None:
        self.events.append(event)


def test_an_edge_is_reported_once_then_hourly(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [0.0]
    recorder = Recorder()
    audit = SidecarAudit(recorder, clock=lambda: now[0])  # type: ignore[arg-type]
    for _ in range(100):
        audit.allowed("spiffe://td/svc/orders", "payments")
    audit.allowed("spiffe://td/svc/inventory", "payments")
    now[0] += EDGE_REPEAT
    audit.allowed("spiffe://td/svc/orders", "payments")
    edges = [(event.type, event.actor.service, event.target) for event in recorder.events]
    assert edges == [
        ("mesh.edge", "spiffe://td/svc/orders", "payments"),
        ("mesh.edge", "spiffe://td/svc/inventory", "payments"),
        ("mesh.edge", "spiffe://td/svc/orders", "payments"),
    ]


def test_the_pairs_remembered_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sidecar_audit, "EDGE_CAP", 4)
    recorder = Recorder()
    audit = SidecarAudit(recorder, clock=lambda: 0.0)  # type: ignore[arg-type]
    for i in range(10):
        audit.allowed(f"spiffe://td/svc/s{i}", "payments")
    assert len(audit._edges) == 4 and len(recorder.events) == 10
    audit.allowed("spiffe://td/svc/s9", "payments")  # still remembered: no new event
    audit.allowed("spiffe://td/svc/s0", "payments")  # forgotten (the oldest): reported again
    assert len(recorder.events) == 11
