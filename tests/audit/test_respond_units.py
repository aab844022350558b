"""Automated responses without a component: what each action plans, the config's bounds, and the
responder's own bounds (skips, a full cap, failures, dry run) against addresses that refuse."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from pydantic import ValidationError
from responder_harness import Trail, alert, config

from garrison.audit.respond import responder_for
from garrison.audit.respond.actions import Plan, Skip, plan
from garrison.audit.respond.targets import targets_for
from garrison.config.audit_responses import ResponsesConfig
from garrison.telemetry import logging as log

TD = "shop.local"


def settings(**values: Any) -> ResponsesConfig:
    return ResponsesConfig.model_validate(values)


def test_block_ip_plans_the_gateway_call_with_its_expiry() -> None:
    planned = plan("block_ip", alert(["block_ip"], ip="::ffff:203.0.113.7"), settings(), TD)
    assert isinstance(planned, Plan)
    assert (planned.target, planned.component, planned.seconds, planned.undo) == (
        "203.0.113.7",
        "gateway",
        900.0,
        None,
    )
    assert planned.do.path == "/blocklist"
    assert dict(planned.do.params) == {
        "ip": "203.0.113.7",
        "for": "900.000s",
        "reason": "garrison audit: rule test.rule (alert a1)",
    }
    assert not planned.loopback
    looped = plan("block_ip", alert(["block_ip"], ip="127.0.0.1"), settings(), TD)
    assert isinstance(looped, Plan) and looped.loopback  # not exempt by default: blocked, and logged


@pytest.mark.parametrize(
    ("action", "actor", "reason"),
    [
        ("block_ip", {"subject": "alice"}, "no IP address"),
        ("block_ip", {"ip": "not-an-ip"}, "not an IP address"),
        ("block_ip", {"ip": "10.1.2.3"}, "never_block (10.0.0.0/8)"),
        ("revoke_tokens", {"ip": "203.0.113.7"}, "no subject or client"),
        ("quarantine_service", {"subject": "alice"}, "no service"),
        ("quarantine_service", {"service": "spiffe://other.local/svc/x"}, "not a service of this trust"),
        ("quarantine_service", {"service": "../etc"}, "not a valid service name"),
        ("lock_account", {"client": "app"}, "no username"),
        ("shutdown_everything", {"ip": "203.0.113.7"}, "unknown action"),
    ],
)
def test_an_actor_without_what_the_action_needs_is_skipped(
    action: str, actor: dict[str, str], reason: str
) -> None:
    planned = plan(action, alert([action], **actor), settings(never_block=["10.0.0.0/8"]), TD)
    assert isinstance(planned, Skip) and reason in planned.reason


def test_the_other_actions_plan_their_calls() -> None:
    user = plan("revoke_tokens", alert([], subject="alice", client="web"), settings(), TD)
    client = plan("revoke_tokens", alert([], client="web"), settings(), TD)
    assert isinstance(user, Plan) and isinstance(client, Plan)
    assert (user.target, user.seconds, user.do.params["subject"]) == ("subject:alice", None, "alice")
    assert (client.target, client.do.params["client_id"]) == ("client:web", "web")
    service = plan("quarantine_service", alert([], service=f"spiffe://{TD}/svc/payments"), settings(), TD)
    assert isinstance(service, Plan) and service.undo is not None
    assert (service.target, service.component, service.undo.method) == ("payments", "ca", "DELETE")
    locked = plan("lock_account", alert([], subject="bob"), settings(lock_account={"for": "2m"}), TD)
    assert isinstance(locked, Plan) and dict(locked.do.params)["for"] == "120.000s"
    off = plan("lock_account", alert([], subject="bob"), settings(lock_account={"enabled": False}), TD)
    assert isinstance(off, Skip)


def test_the_config_caps_expiry_and_refuses_unknown_keys() -> None:
    assert settings(block_ip={"for": "24h"}).block_ip.for_ == 86400.0
    for bad in (
        {"block_ip": {"for": "25h"}},
        {"block_ip": {"for": 0}},
        {"blok_ip": {}},
        {"gateways": ["ftp://x"]},
    ):
        with pytest.raises(ValidationError):
            settings(**bad)
    with pytest.raises(ValidationError):
        settings(never_block=["not-a-cidr"])


def test_targets_derive_from_the_admin_listeners(tmp_path: Path) -> None:
    derived = targets_for(
        config(
            tmp_path,
            {},
            gateway={"admin": {"listen": "0.0.0.0:9911"}},
            identity={"admin": {"listen": "127.0.0.1:9912", "token_file": str(tmp_path / "idp.token")}},
            mesh={"ca": {"admin": {"listen": "127.0.0.1:0"}}},
        ),
        tmp_path,
    )
    assert [t.url for t in derived.gateways] == ["http://127.0.0.1:9911"]
    assert derived.gateways[0].token_file == tmp_path / "admin.token"
    assert derived.identity is not None and derived.identity.url == "http://127.0.0.1:9912"
    assert derived.identity.token_file == tmp_path / "idp.token"
    assert derived.ca is None  # port 0: nothing to derive, audit.responses.ca_admin must say
    listed = targets_for(
        config(tmp_path, {"gateways": ["http://10.0.0.1:9901/", "http://10.0.0.2:9901"]}), tmp_path
    )
    assert [t.url for t in listed.gateways] == ["http://10.0.0.1:9901", "http://10.0.0.2:9901"]


def test_skips_unknown_targets_and_unreachable_components_are_recorded(
    tmp_path: Path, refused_port: int
) -> None:
    registry = CollectorRegistry()
    trail = Trail()
    url = f"http://127.0.0.1:{refused_port}"
    cfg = config(
        tmp_path,
        {"gateways": [url], "attempts": 2, "backoff": "1ms"},
        gateway={"admin": {"listen": "127.0.0.1:0"}},
    )
    (tmp_path / "admin.token").write_text("t" * 43 + "\n")
    (tmp_path / "admin.token").chmod(0o600)

    async def body() -> None:
        responder = responder_for(cfg, tmp_path, trail, registry)
        await responder.start()
        await responder.respond(
            alert(["block_ip", "revoke_tokens", "lock_account"], ip="203.0.113.9", subject="eve")
        )
        await responder.drain()
        await responder.stop()

    asyncio.run(body())
    failed = trail.only("block_ip", "failed")
    assert failed.outcome == "failure" and failed.target == "203.0.113.9"
    assert "ConnectError" in failed.details["error"] and "status" not in failed.details
    assert failed.details["expiry"] and failed.details["for_seconds"] == 900.0
    for action in ("revoke_tokens", "lock_account"):  # no identity in this file: a failure that says so
        assert "no identity admin URL" in trail.only(action, "failed").details["error"]
    sample = registry.get_sample_value
    assert sample("garrison_audit_responses_total", {"action": "block_ip", "outcome": "failure"}) == 1.0
    assert sample("garrison_audit_responses_total", {"action": "lock_account", "outcome": "failure"}) == 1.0


def test_dry_run_records_what_it_would_do_and_calls_nothing(tmp_path: Path, refused_port: int) -> None:
    trail = Trail()
    cfg = config(
        tmp_path,
        {
            "dry_run": True,
            "gateways": [f"http://127.0.0.1:{refused_port}"],
            "quarantine_service": {"for": "1m"},
        },
        mesh={"ca": {"admin": {"listen": "127.0.0.1:0"}}},
    )

    async def body() -> None:
        responder = responder_for(cfg, tmp_path, trail)
        await responder.start()
        await responder.respond(alert(["block_ip", "quarantine_service"], ip="203.0.113.9", service="orders"))
        await responder.drain()
        await responder.stop()

    asyncio.run(body())
    block = trail.only("block_ip", "dry_run")
    assert block.outcome == "success" and block.details["dry_run"] is True
    assert block.details["would"].startswith("POST /blocklist?ip=203.0.113.9&for=900.000s&reason=")
    assert block.details["endpoints"] == f"http://127.0.0.1:{refused_port}"
    quarantine = trail.only("quarantine_service", "dry_run")
    assert "no mesh CA admin URL" in quarantine.details["endpoints"]
    assert not (tmp_path / "audit" / "responses-undo.json").exists()  # nothing to undo: nothing done


def test_actions_beyond_max_active_are_recorded_as_busy_not_run(tmp_path: Path, refused_port: int) -> None:
    """One action held in its back-off (an injected sleep) fills ``max_active: 1``; the next alerts'
    actions are counted and recorded once, with how many were dropped."""
    trail = Trail()
    registry = CollectorRegistry()
    cfg = config(tmp_path, {"gateways": [f"http://127.0.0.1:{refused_port}"], "attempts": 2, "max_active": 1})
    (tmp_path / "admin.token").write_text("t" * 43 + "\n")
    (tmp_path / "admin.token").chmod(0o600)

    async def body() -> None:
        release = asyncio.Event()
        held = asyncio.Event()

        async def held_sleep(seconds: float) -> None:
            held.set()
            await release.wait()

        responder = responder_for(cfg, tmp_path, trail, registry)
        responder.executor.caller._sleep = held_sleep
        await responder.start()
        await responder.respond(alert(["block_ip"], ip="203.0.113.1"))
        await held.wait()
        for n in range(2, 5):
            await responder.respond(alert(["block_ip"], alert_id=f"a{n}", ip=f"203.0.113.{n}"))
        await asyncio.sleep(0)  # let the busy reporter run
        while not trail.responses("block_ip", "busy"):
            await asyncio.sleep(0.01)
        release.set()
        await responder.drain()
        await responder.stop()

    asyncio.run(body())
    busy = trail.only("block_ip", "busy")
    assert busy.details["dropped"] == 3 and busy.outcome == "failure"
    assert trail.only("block_ip", "failed").target == "203.0.113.1"
    sample = registry.get_sample_value(
        "garrison_audit_responses_total", {"action": "block_ip", "outcome": "failure"}
    )
    assert sample == 4.0


def test_a_corrupt_undo_file_is_reported_not_fatal(tmp_path: Path) -> None:
    path = tmp_path / "audit" / "responses-undo.json"
    path.parent.mkdir()
    path.write_text(
        json.dumps({"version": 1, "undos": [{"action": "block_ip", "target": "x", "until": 1}, "junk"]})
    )
    trail = Trail()

    async def body() -> int:
        responder = responder_for(config(tmp_path, {}), tmp_path, trail)
        await responder.start()
        count = len(responder.undos.entries)
        await responder.stop()
        return count

    assert asyncio.run(body()) == 0  # block_ip has no undo of the collector's: the entry is refused


def test_blocking_a_loopback_address_is_logged_loudly(
    tmp_path: Path, refused_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    stream = io.StringIO()
    monkeypatch.setattr(log, "_stream", stream)
    trail = Trail()
    cfg = config(tmp_path, {"block_ip": {"dry_run": True}, "gateways": [f"http://127.0.0.1:{refused_port}"]})

    async def body() -> None:
        responder = responder_for(cfg, tmp_path, trail)
        await responder.start()
        await responder.respond(alert(["block_ip"], rule="auth.bruteforce", ip="127.0.0.1"))
        await responder.drain()
        await responder.stop()

    asyncio.run(body())
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    [warning] = [line for line in lines if line["event"] == "audit.response.blocking_loopback"]
    assert (
        warning["level"] == "warning" and warning["ip"] == "127.0.0.1" and "never_block" in warning["message"]
    )
    assert trail.only("block_ip", "dry_run").target == "127.0.0.1"
