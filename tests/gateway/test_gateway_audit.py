"""A real gateway (workers: 2, each with its own emitter) sending its audit events to an intake that
follows the contract (tests/helpers/audit_receiver.py) over TLS with the emit token: ``http.request``
per request, ``token.rejected`` with a hint and never the token, ``gateway.blocked``; and what is still
in memory at SIGTERM delivered before the workers exit."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from audit_receiver import Receiver, ThreadedReceiver, intake_pki
from gateway_harness import RecordingUpstream, http_call, stop_process, wait_until
from test_gateway_jwt import Issuer, bearer, jwt_gateway
from test_gateway_revocations import admin, minted

from garrison.events.schema import Event

pytestmark = pytest.mark.process


@pytest.fixture
def issuer() -> Iterator[Issuer]:
    server = Issuer()
    yield server
    server.stop()


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[ThreadedReceiver]:
    threaded = ThreadedReceiver(Receiver(intake_pki(tmp_path / "state"))).start()
    yield threaded
    threaded.stop()


def of(receiver: ThreadedReceiver, type_: str) -> list[Event]:
    return [event for event in receiver.events() if event.type == type_]


def test_gateway_workers_emit_requests_refused_tokens_and_blocked_clients(
    gateway_factory: Any,
    upstream: RecordingUpstream,
    issuer: Issuer,
    receiver: ThreadedReceiver,
    tmp_path: Path,
) -> None:
    audit = {"listen": f"127.0.0.1:{receiver.receiver.port}", "emitter": {"flush_interval": 0.05}}
    gw = jwt_gateway(
        lambda up, overrides: gateway_factory(
            up, {**overrides, "audit": audit, "state_dir": str(tmp_path / "state")}
        ),
        upstream,
        issuer,
        workers=2,
    )
    token, jti, exp = minted(issuer)
    code, _, _ = http_call(
        gw.port,
        "/orders/1?page=2",
        {**bearer(token), "User-Agent": "sqlmap/1.7", "Referer": "https://x.test/"},
    )
    assert code == 200
    assert admin(gw, "POST", f"jti={jti}&until={exp}")[0] == 200
    assert http_call(gw.port, "/orders/1", bearer(token))[0] == 401  # revoked
    assert http_call(gw.port, "/orders/1", bearer("not.a.token"))[0] == 401  # invalid
    wait_until(lambda: len(of(receiver, "token.rejected")) == 2, timeout=30, what=lambda: gw.stderr_tail())

    requests = of(receiver, "http.request")
    ok = next(event for event in requests if event.details["status"] == 200)
    assert (ok.component, ok.outcome, ok.target) == ("gateway", "success", "/orders")
    assert ok.actor.ip == "127.0.0.1"
    assert (ok.actor.subject, ok.actor.client) == ("user-42", "web")
    assert ok.details["path"] == "/orders/1" and ok.details["query"] == "page=2"
    assert ok.details["user_agent"] == "sqlmap/1.7" and ok.details["referer"] == "https://x.test/"
    assert ok.request_id and ok.trace_id and ok.details["method"] == "GET"
    revoked, invalid = sorted(of(receiver, "token.rejected"), key=lambda e: e.details["reason"] != "revoked")
    assert (revoked.details["reason"], invalid.details["reason"]) == ("revoked", "invalid")
    assert revoked.target is not None and revoked.target.startswith("hmac:")
    raw = json.dumps([event.to_dict() for event in receiver.events()])
    assert token not in raw and token.split(".")[2] not in raw  # the hint, never the token

    block = "/blocklist?ip=127.0.0.1&for=1m&reason=test"
    assert http_call(gw.admin_port, block, gw.admin_headers(), method="POST")[0] == 200
    for _ in range(3):
        assert http_call(gw.port, "/orders/1", bearer(token))[0] == 403
    # Events still in memory at SIGTERM are delivered before the workers exit.
    assert stop_process(gw.proc, grace=30) == 0  # workers: N takes a few seconds to stop
    blocked = of(receiver, "gateway.blocked")
    assert blocked and {event.details["reason"] for event in blocked} == {"blocklist"}
    assert len(blocked) <= 2  # one per client and worker, however often it knocks
    host = socket.gethostname()
    assert {event.instance for event in receiver.events()} <= {f"{host}:w0", f"{host}:w1"}
    assert {batch.origin for batch in receiver.receiver.batches} == {"token"}
    refused = [event for event in of(receiver, "http.request") if event.details["status"] == 403]
    assert len(refused) == 3 and all(event.outcome == "denied" for event in refused)
