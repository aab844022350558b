"""The sidecar's decisions (Gate) and its file identity, without sockets."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from mesh_sidecars import CONFIG, MeshPki, svc

from garrison.config.loader import parse_config
from garrison.mesh.policy import CallPolicy, gateway_id
from garrison.mesh.sidecar.gate import Gate, service_of
from garrison.mesh.sidecar.identity import FileIdentity, StaticState
from garrison.mesh.sidecar.request import Reject, Request, split_headers


@pytest.fixture(scope="module")
def gate() -> Gate:
    text = CONFIG.format(state="/tmp/unused", orders_app=1, payments_app=2, orders_in=3, payments_in=4)
    return Gate("payments", CallPolicy.from_config(parse_config(text).config))


@pytest.mark.parametrize(
    ("spiffe_id", "service"),
    [
        (svc("orders"), "orders"),
        (gateway_id("shop.local"), None),
        ("spiffe://shop.local/svc/", None),
        ("spiffe://shop.local/svc/a/b", None),
        ("spiffe://shop.local/svcx/a", None),
    ],
)
def test_service_of(spiffe_id: str, service: str | None) -> None:
    assert service_of(spiffe_id) == service


def test_gate_decisions_and_state(gate: Gate) -> None:
    assert gate.inbound(svc("orders"), "GET", "/charges/1") is None
    assert gate.inbound(None, "GET", "/charges/1") == "no_identity"
    assert gate.inbound(svc("inventory"), "GET", "/charges/1") == "policy"
    gate.apply(StaticState(revoked=frozenset({svc("orders")})))
    assert gate.inbound(svc("orders"), "GET", "/charges/1") == "revoked"
    gate.apply(StaticState(quarantined=frozenset({"orders"})))
    assert gate.inbound(svc("orders"), "GET", "/charges/1") == "caller_quarantined"
    assert gate.outbound("orders") == "peer_quarantined"
    gate.apply(StaticState(quarantined=frozenset({"payments"})))
    assert gate.inbound(svc("orders"), "GET", "/charges/1") == "quarantined"
    assert gate.outbound("orders") == "quarantined"
    assert gate.version == 3


def test_owned_hop_by_hop_and_connection_named_headers_are_dropped() -> None:
    headers = split_headers(
        [
            (b"Garrison-Caller", b"x"),
            (b"garrison_caller_service", b"x"),
            (b"X-Garrison-Subject", b"x"),
            (b"Connection", b"keep-alive, X-Secret"),
            (b"X-Secret", b"x"),
            (b"Host", b"evil"),
            (b"Accept", b"*/*"),
        ]
    )
    assert headers.kept == [b"Accept: */*\r\n"]


@pytest.mark.parametrize(
    ("method", "raw", "framing", "has_body"),
    [
        (b"POST", [(b"Content-Length", b"12")], b"content-length: 12\r\n", True),
        (b"POST", [(b"Transfer-Encoding", b"chunked")], b"transfer-encoding: chunked\r\n", True),
        (b"POST", [], b"content-length: 0\r\n", False),  # a bodiless POST says so
        (b"GET", [], None, False),
        (b"GET", [(b"Content-Length", b"0")], None, False),
    ],
)
def test_the_upstream_head_keeps_the_bodys_framing_and_carries_no_body(
    method: bytes, raw: list[tuple[bytes, bytes]], framing: bytes | None, has_body: bool
) -> None:
    request = Request(method, b"/charges", None, split_headers(raw), True)
    head = request.upstream_request(b"/charges", b"payments", b"")
    assert request.has_body is has_body
    assert request.request_done is not has_body  # a bodiless request is complete at its head
    assert head.endswith(b"\r\n\r\n")  # the head only: the body streams after it
    lines = head.lower().split(b"\r\n")
    framing_lines = [line + b"\r\n" for line in lines if line.startswith((b"content-length", b"transfer-"))]
    assert framing_lines == ([framing] if framing else [])


@pytest.mark.parametrize("raw", [[(b"Transfer-Encoding", b"gzip, chunked")], [(b"Content-Length", b"+5")]])
def test_ambiguous_framing_is_refused(raw: list[tuple[bytes, bytes]]) -> None:
    with pytest.raises(Reject):
        split_headers(raw)


def test_a_half_replaced_pair_is_refused_and_the_old_certificate_kept(tmp_path: Path) -> None:
    pki = MeshPki()
    pki.issue(tmp_path / "a", svc("orders"))
    identity = FileIdentity.from_directory(tmp_path / "a")
    pki.issue(tmp_path / "b", svc("payments"))
    shutil.copy(tmp_path / "b" / "cert.pem", tmp_path / "a" / "cert.pem")  # the key not yet replaced
    with pytest.raises(ValueError, match="does not match"):
        identity.reload()
    assert identity.spiffe_id == svc("orders")
    shutil.copy(tmp_path / "b" / "key.pem", tmp_path / "a" / "key.pem")
    identity.reload()
    assert identity.spiffe_id == svc("payments")
