"""Alerts are deduplicated, rate-limited and suppressible (with expiry); the baseline survives restarts."""

from __future__ import annotations

import json
from pathlib import Path

from detect_harness import T0, Clock, Harness, ev, request
from prometheus_client import CollectorRegistry, generate_latest

from garrison.audit.detect.suppressions import Suppressions, SuppressionsFull


def _reuse(at: float, subject: str = "dave") -> object:
    return ev("token.reuse", at, "denied", subject=subject, client="web")


def test_same_rule_and_actor_within_the_window_is_one_alert() -> None:
    h = Harness()
    alerts = h.feed([_reuse(T0 + i) for i in range(5)])  # window 600 s
    assert len(alerts) == 1
    assert h.detector.gate.duplicates("token_reuse", "subject:dave") == 4
    assert h.detector.counters.suppressed[("token_reuse", "duplicate")] == 4
    [again] = h.feed([_reuse(T0 + 601)])  # the window has passed: a new alert
    assert again.details["previous_repeats"] == 4
    assert len(h.feed([_reuse(T0 + 602, "erin")])) == 1  # another actor: its own alert
    assert [a.rule for a in h.responder.alerts] == ["token_reuse"] * 3
    assert h.responder.alerts[0].alert_id == h.alerts[0].id


def test_rate_limit_per_rule_counts_the_rest() -> None:
    h = Harness(rules={"token_reuse": {"rate_limit": 3}})
    alerts = h.feed([_reuse(T0 + i * 0.1, f"user{i}") for i in range(10)])
    assert len(alerts) == 3
    assert h.detector.counters.suppressed[("token_reuse", "rate")] == 7
    assert len(h.feed([_reuse(T0 + 60, "late")])) == 1  # the next minute has its own budget
    registry = CollectorRegistry()
    registry.register(h.detector.metrics)
    text = generate_latest(registry).decode()
    assert 'garrison_audit_alerts_total{rule="token_reuse"} 4.0' in text
    assert 'garrison_audit_alerts_suppressed_total{reason="rate",rule="token_reuse"} 7.0' in text


def test_suppression_per_rule_and_actor_expires(tmp_path: Path) -> None:
    clock = Clock()
    h = Harness(tmp_path, clock)
    h.detector.suppressions.add("scanning", "ip:203.0.113.66", 3600, "pentest")
    probes = [request(T0 + i * 0.1, "203.0.113.66", f"/p{i}", 404) for i in range(30)]
    assert [a for a in h.feed(probes) if a.details["rule"] == "scanning"] == []
    assert h.detector.counters.suppressed[("scanning", "suppressed")] >= 1
    other = [request(T0 + i * 0.1, "203.0.113.67", f"/p{i}", 404) for i in range(30)]
    assert len([a for a in h.feed(other) if a.details["rule"] == "scanning"]) == 1  # another actor
    # The suppression is on disk: a restarted collector keeps it; then it expires.
    clock.now = T0 + 1800
    again = Harness(tmp_path, clock)
    later = [request(T0 + 100 + i * 0.1, "203.0.113.66", f"/q{i}", 404) for i in range(30)]
    assert [a for a in again.feed(later) if a.details["rule"] == "scanning"] == []
    clock.now = T0 + 3601
    final = [request(T0 + 200 + i * 0.1, "203.0.113.66", f"/r{i}", 404) for i in range(30)]
    assert len([a for a in again.feed(final) if a.details["rule"] == "scanning"]) == 1
    assert again.detector.suppressions.entries() == []


def test_suppressions_are_bounded_and_validated(tmp_path: Path) -> None:
    store = Suppressions(tmp_path / "s.json", 2, Clock())
    store.add("scanning", None, 60, "")
    store.add(None, "ip:10.0.0.1", 60, "")
    store.add("scanning", None, 120, "renewal is always allowed")
    try:
        store.add("token_reuse", None, 60, "")
        raise AssertionError("a third suppression was accepted")
    except SuppressionsFull:
        pass
    for rule, actor, seconds in ((None, None, 60), ("x", "mac:1", 60), ("x", None, 0), ("x", None, 1e9)):
        try:
            store.add(rule, actor, seconds, "")
            raise AssertionError(f"accepted {rule} {actor} {seconds}")
        except ValueError:
            pass
    assert (tmp_path / "s.json").stat().st_mode & 0o777 == 0o600


def test_baseline_learns_then_alerts_once_per_new_pair_across_restarts(tmp_path: Path) -> None:
    def edge(at: float, caller: str, callee: str) -> object:
        return ev("mesh.edge", at, component="mesh", service=caller, target=callee)

    h = Harness(tmp_path, baseline_learning=3600)
    assert (
        h.feed([edge(T0, "spiffe://shop/orders", "payments"), edge(T0 + 10, "spiffe://shop/web", "orders")])
        == []
    )
    saved = json.loads((tmp_path / "baseline.json").read_text())
    assert saved["started"] == T0 and len(saved["edges"]) == 2
    # A restart during learning keeps learning from the original start.
    h2 = Harness(tmp_path, baseline_learning=3600)
    assert h2.feed([edge(T0 + 1000, "spiffe://shop/web", "cart")]) == []
    # After learning: known pairs are quiet, a new one alerts once, even across another restart.
    h3 = Harness(tmp_path, baseline_learning=3600)
    known = [
        edge(T0 + 4000, "spiffe://shop/web", "cart"),
        edge(T0 + 4001, "spiffe://shop/orders", "payments"),
    ]
    assert h3.feed(known) == []
    alerts = h3.feed([edge(T0 + 4002, "spiffe://shop/web", "payments")])
    assert [(a.details["rule"], a.details["actor"]) for a in alerts] == [
        ("new_service_edge", "service:spiffe://shop/web")
    ]
    h4 = Harness(tmp_path, baseline_learning=3600)
    assert h4.feed([edge(T0 + 9000, "spiffe://shop/web", "payments")]) == []


def test_alert_events_are_skipped_and_alert_lines_stay_bounded() -> None:
    h = Harness()
    big = "A" * 1000
    probes = [request(T0 + i * 0.01, "203.0.113.70", "/x/" + big, 404, "q=" + big) for i in range(30)]
    alerts = [a for a in h.feed(probes) if a.details["rule"] == "scanning"]
    assert len(alerts) == 1
    line = alerts[0].to_json()
    assert len(line) < 16 * 1024 and len(alerts[0].details["events"]) <= 3
    before = len(h.alerts)
    h.feed(list(h.alerts))  # the collector hands its own alerts back: no alert about alerts
    assert len(h.alerts) == before
