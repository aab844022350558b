"""Each correlation rule fires on its pattern, and none fires on a realistic benign mix."""

from __future__ import annotations

from detect_harness import T0, Harness, benign_traffic, ev, request


def test_benign_mix_raises_nothing() -> None:
    h = Harness()
    assert h.feed(benign_traffic(20_000)) == []


def _fired(events: list, rule: str, **config: object) -> list:
    return [a for a in Harness(**config).feed(events) if a.details["rule"] == rule]


def test_brute_force_per_account() -> None:
    tries = [ev("auth.login", T0 + i, "failure", subject="alice", ip=f"203.0.113.{i}") for i in range(10)]
    alerts = _fired(tries, "brute_force_account")
    assert len(alerts) == 1
    alert = alerts[0]
    assert alert.actor.subject == "alice" and alert.details["actor"] == "subject:alice"
    assert alert.details["count"] == 10 and len(alert.details["event_ids"]) == 10
    assert alert.details["event_ids"][-1] == tries[-1].id and alert.details["events"][0]["id"] == tries[0].id
    assert alert.details["responses"] == ["lock_account"]
    assert _fired(tries[:9], "brute_force_account") == []
    spread = [ev("auth.login", T0 + i * 60, "failure", subject="alice") for i in range(10)]  # 1/min: under
    assert _fired(spread, "brute_force_account") == []


def test_brute_force_per_ip_and_credential_stuffing() -> None:
    same_user = [ev("auth.login", T0 + i, "failure", subject="bob", ip="203.0.113.9") for i in range(20)]
    assert len(_fired(same_user, "brute_force_ip")) == 1
    assert _fired(same_user, "credential_stuffing") == []
    many_users = [ev("auth.login", T0 + i, "failure", subject=f"user{i}", ip="203.0.113.7") for i in range(5)]
    stuffing = _fired(many_users, "credential_stuffing")
    assert len(stuffing) == 1 and stuffing[0].details["actor"] == "ip:203.0.113.7"
    assert stuffing[0].details["responses"] == ["block_ip"]
    assert _fired(many_users[:4], "credential_stuffing") == []


def test_mfa_failures() -> None:
    fails = [ev("auth.mfa", T0 + i * 10, "failure", subject="carol", ip="203.0.113.3") for i in range(5)]
    assert len(_fired(fails, "mfa_failures")) == 1
    assert _fired(fails[:4], "mfa_failures") == []


def test_token_reuse_one_event_suffices() -> None:
    alerts = _fired([ev("token.reuse", T0, "denied", subject="dave", client="web")], "token_reuse")
    assert len(alerts) == 1 and alerts[0].details["responses"] == ["revoke_tokens"]


def test_revoked_token_use() -> None:
    revoked = ev("token.rejected", T0, "denied", component="gateway", ip="203.0.113.4", reason="revoked")
    expired = ev("token.rejected", T0, "denied", component="gateway", ip="203.0.113.5", reason="expired")
    assert len(_fired([revoked], "revoked_token_use")) == 1
    assert _fired([expired], "revoked_token_use") == []


def test_scanning_burst_from_one_address() -> None:
    probes = [request(T0 + i * 0.1, "203.0.113.66", f"/admin{i}.php", 404) for i in range(30)]
    alerts = _fired(probes, "scanning")
    assert len(alerts) == 1 and alerts[0].details["actor"] == "ip:203.0.113.66"
    assert _fired(probes[:29], "scanning") == []
    slow = [request(T0 + i * 3, "203.0.113.66", "/missing", 404) for i in range(30)]  # 20/min: under
    assert _fired(slow, "scanning") == []


def test_lateral_movement_and_secret_reads_outside_policy() -> None:
    denied = [
        ev("mesh.call", T0 + i, "denied", component="mesh", service="spiffe://shop/web", target="payments")
        for i in range(5)
    ]
    alerts = _fired(denied, "lateral_movement")
    assert len(alerts) == 1 and alerts[0].details["responses"] == ["quarantine_service"]
    secrets = [
        ev(
            "secret.read",
            T0 + i,
            "denied",
            component="vault",
            service="spiffe://shop/web",
            target="kv/payments",
        )
        for i in range(3)
    ]
    assert len(_fired(secrets, "secret_denied")) == 1
    allowed = [
        ev("secret.read", T0 + i, component="vault", service="spiffe://shop/web", target="kv/web")
        for i in range(9)
    ]
    assert _fired(allowed, "secret_denied") == []


def test_threshold_window_severity_and_responses_are_configurable() -> None:
    tries = [ev("auth.login", T0 + i, "failure", subject="erin") for i in range(3)]
    rules = {"brute_force_account": {"threshold": 3, "severity": "critical", "responses": []}}
    alerts = _fired(tries, "brute_force_account", rules=rules)
    assert len(alerts) == 1 and alerts[0].details["severity"] == "critical"
    assert alerts[0].details["responses"] == []
    off = {"token_reuse": {"enabled": False}}
    assert _fired([ev("token.reuse", T0, "denied", subject="x")], "token_reuse", rules=off) == []


def test_key_sets_are_bounded() -> None:
    h = Harness(max_keys=100)
    h.feed(
        [
            ev("auth.login", T0 + i * 0.001, "failure", subject=f"u{i}", ip=f"10.0.{i // 250}.{i % 250}")
            for i in range(5000)
        ]
    )
    for rule in h.detector.rules:
        assert len(rule.window) <= 100


def test_detection_switched_off_raises_nothing() -> None:
    h = Harness(enabled=False)
    assert h.detector.sigma is None
    assert h.feed([ev("token.reuse", T0, "denied", subject="x")]) == []
