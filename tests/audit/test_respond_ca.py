"""quarantine_service against a real CA process: the quarantine reaches it, the collector lifts it at
expiry — also when the collector restarted in between (the undo file) — and never lifts a quarantine
it did not set."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ca_harness import TRUST_DOMAIN, CaProcess
from responder_harness import Trail, alert, config, eventually

from garrison.audit.respond import AdminResponder, responder_for

pytestmark = pytest.mark.process  # real processes


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CaProcess]:
    process = CaProcess(tmp_path_factory.mktemp("ca")).init().start()
    try:
        yield process
    finally:
        process.stop()


def quarantined(ca: CaProcess) -> list[str]:
    answer = ca.admin("GET", "/quarantine", token=False)
    names: list[str] = answer.json()["quarantined"]
    return names


def collector(
    ca: CaProcess, directory: Path, trail: Trail, clock: Any = None, **responses: Any
) -> AdminResponder:
    """A responder with a state dir of its own, reaching the CA's admin listener with the CA's token."""
    cfg = config(
        directory,
        {"ca_admin": f"http://127.0.0.1:{ca.admin_port}", **responses},
        trust_domain=TRUST_DOMAIN,
        mesh={"ca": {"admin": {"listen": "127.0.0.1:0", "token_file": str(ca.state_dir / "admin.token")}}},
    )
    return responder_for(cfg, directory, trail, **({"clock": clock} if clock else {}))


def pending(directory: Path) -> list[dict[str, Any]]:
    path = directory / "audit" / "responses-undo.json"
    undos: list[dict[str, Any]] = json.loads(path.read_text())["undos"] if path.exists() else []
    return undos


def test_quarantine_reaches_the_ca_and_is_lifted_at_expiry(ca: CaProcess, tmp_path: Path) -> None:
    trail = Trail()

    async def body() -> None:
        responder = collector(ca, tmp_path, trail, quarantine_service={"for": "1s"})
        await responder.start()
        await responder.respond(
            alert(["quarantine_service"], service=f"spiffe://{TRUST_DOMAIN}/svc/payments")
        )
        await responder.drain()
        assert "payments" in quarantined(ca)
        assert [u["target"] for u in pending(tmp_path)] == ["payments"]
        await eventually(lambda: "payments" not in quarantined(ca), what="the quarantine to be lifted")
        await eventually(lambda: trail.responses("quarantine_service", "undone"))
        await responder.stop()

    asyncio.run(body())
    done = trail.only("quarantine_service", "done")
    assert done.target == "payments" and done.details["status"] == 200 and done.details["expiry"]
    undone = trail.only("quarantine_service", "undone")
    assert undone.details["phase"] == "undo" and undone.details["released"] is True
    assert undone.details["call"] == "DELETE /quarantine" and undone.outcome == "success"
    assert pending(tmp_path) == []


def test_a_restarted_collector_lifts_what_the_last_one_set(ca: CaProcess, tmp_path: Path) -> None:
    first, second = Trail(), Trail()
    later = [0.0]

    async def before_restart() -> None:
        responder = collector(ca, tmp_path, first, quarantine_service={"for": "1h"})
        await responder.start()
        await responder.respond(alert(["quarantine_service"], service="orders"))
        await responder.drain()
        await responder.stop()

    async def after_restart() -> None:
        import time

        later[0] = time.time() + 2 * 3600  # the new collector starts after the hour is over
        responder = collector(ca, tmp_path, second, clock=lambda: later[0])
        await responder.start()
        await eventually(lambda: second.responses("quarantine_service", "undone"))
        await responder.stop()

    asyncio.run(before_restart())
    assert "orders" in quarantined(ca)
    assert [u["target"] for u in pending(tmp_path)] == ["orders"]
    asyncio.run(after_restart())
    assert "orders" not in quarantined(ca)
    assert second.only("quarantine_service", "undone").details["released"] is True
    assert pending(tmp_path) == []


def test_a_quarantine_set_by_someone_else_is_left_alone(ca: CaProcess, tmp_path: Path) -> None:
    trail = Trail()
    assert ca.admin("POST", "/quarantine?service=inventory&reason=operator").status_code == 200

    async def body() -> None:
        responder = collector(ca, tmp_path, trail, quarantine_service={"for": "1ms"})
        await responder.start()
        await responder.respond(alert(["quarantine_service"], service="inventory"))
        await responder.drain()
        await responder.stop()

    try:
        asyncio.run(body())
        skipped = trail.only("quarantine_service", "in_force")
        assert skipped.outcome == "unknown" and "will not lift" in skipped.details["error"]
        assert pending(tmp_path) == [] and "inventory" in quarantined(ca)
    finally:
        ca.admin("DELETE", "/quarantine?service=inventory")
