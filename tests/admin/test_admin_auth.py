"""The admin guard's decisions and the admin token file, without sockets (admin/auth.py)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from garrison.admin.auth import (
    AdminGuard,
    AdminTokenError,
    load_or_create_admin_token,
    read_admin_token,
)
from garrison.web.simplehttp import SimpleRequest, SimpleResponse

TOKEN = "t" * 43


def ok(request: SimpleRequest) -> SimpleResponse:
    return SimpleResponse(200, b"ok")


def status(guard: AdminGuard, method: bytes, host: bytes | None, **headers: bytes) -> int:
    sent = {name.replace("_", "-").encode(): value for name, value in headers.items()}
    if host is not None:
        sent[b"host"] = host
    response = guard(SimpleRequest(method, b"/blocklist", sent))
    assert isinstance(response, SimpleResponse)
    return response.status


def test_a_loopback_listener_opens_reads_and_guards_changes() -> None:
    guard = AdminGuard(ok, "127.0.0.1", 9901, TOKEN)
    assert status(guard, b"GET", b"127.0.0.1:9901") == 200
    assert status(guard, b"GET", b"localhost:9901") == 200
    assert status(guard, b"POST", b"127.0.0.1:9901") == 401
    assert status(guard, b"POST", b"127.0.0.1:9901", authorization=b"Bearer " + TOKEN.encode()) == 200
    assert status(guard, b"POST", b"127.0.0.1:9901", authorization=b"bearer " + TOKEN.encode()) == 200
    assert status(guard, b"POST", b"127.0.0.1:9901", authorization=b"Basic " + TOKEN.encode()) == 401
    assert status(guard, b"POST", b"127.0.0.1:9901", authorization=b"Bearer " + TOKEN[:-1].encode()) == 401
    assert guard.denied == {"credential": 3}


def test_a_listener_off_loopback_guards_reads_too() -> None:
    guard = AdminGuard(ok, "10.0.0.5", 9901, TOKEN, tls=True)
    assert status(guard, b"GET", b"10.0.0.5:9901") == 401
    assert status(guard, b"GET", b"10.0.0.5:9901", authorization=b"Bearer " + TOKEN.encode()) == 200
    assert status(guard, b"GET", b"localhost:9901") == 421  # not on loopback: localhost is someone else
    assert status(guard, b"GET", b"10.0.0.6:9901") == 421  # not the address it is bound to
    verified = SimpleRequest(b"POST", b"/blocklist", {b"host": b"10.0.0.5:9901"}, peer_certificate=True)
    assert isinstance(response := guard(verified), SimpleResponse) and response.status == 200


def test_host_rules() -> None:
    wildcard = AdminGuard(ok, "0.0.0.0", 9901, TOKEN, names=frozenset({"admin.shop.internal"}), tls=True)
    token = b"Bearer " + TOKEN.encode()
    assert status(wildcard, b"GET", b"192.0.2.7:9901", authorization=token) == 200  # any own IP literal
    assert status(wildcard, b"GET", b"[::1]:9901", authorization=token) == 200
    assert status(wildcard, b"GET", b"admin.shop.internal:9901", authorization=token) == 200
    assert status(wildcard, b"GET", b"ADMIN.shop.internal:9901", authorization=token) == 200
    assert status(wildcard, b"GET", b"rebound.example:9901", authorization=token) == 421
    assert status(wildcard, b"GET", b"192.0.2.7:9902", authorization=token) == 421
    assert status(wildcard, b"GET", b"192.0.2.7", authorization=token) == 421  # https default port 443
    assert status(wildcard, b"GET", None, authorization=token) == 421
    for junk in (b"user@127.0.0.1:9901", b"127.0.0.1:9901/x", b"127.0.0.1:99999", b""):
        assert status(wildcard, b"GET", junk, authorization=token) == 421, junk


def test_origin_rules() -> None:
    guard = AdminGuard(ok, "127.0.0.1", 9901, TOKEN)
    token = b"Bearer " + TOKEN.encode()
    host = b"127.0.0.1:9901"
    assert status(guard, b"POST", host, authorization=token, origin=b"http://127.0.0.1:9901") == 200
    for origin in (b"http://evil.example", b"null", b"https://127.0.0.1:9901", b"http://127.0.0.1:8443"):
        assert status(guard, b"POST", host, authorization=token, origin=origin) == 403, origin
        assert status(guard, b"GET", host, origin=origin) == 403, origin


def test_the_token_never_shows_in_repr() -> None:
    assert TOKEN not in repr(AdminGuard(ok, "127.0.0.1", 9901, TOKEN))


def test_token_file_is_created_once_0600(tmp_path: Path) -> None:
    path = tmp_path / "state" / "admin.token"
    first = load_or_create_admin_token(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_admin_token(path) == first == read_admin_token(path)
    assert len(first) >= 43 and first != load_or_create_admin_token(tmp_path / "other.token")


def test_unusable_token_files_are_refused_with_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "admin.token"
    with pytest.raises(AdminTokenError, match="start the gateway once"):
        read_admin_token(path)
    path.write_text("x" * 40 + "\n")
    os.chmod(path, 0o640)
    with pytest.raises(AdminTokenError, match="chmod 600"):
        load_or_create_admin_token(path)
    os.chmod(path, 0o600)
    assert read_admin_token(path) == "x" * 40
    path.write_text("short\n")
    with pytest.raises(AdminTokenError, match="at least 16") as caught:
        read_admin_token(path)
    assert "short" not in str(caught.value)
