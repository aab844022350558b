"""The HTTPS redirect's decisions without sockets (garrison.gateway.redirect); the listener itself is
tested through real gateways in test_gateway_tls.py."""

from __future__ import annotations

import pytest

from garrison.config.loader import parse_config
from garrison.gateway.redirect import HttpsRedirect
from garrison.web.simplehttp import SimpleRequest

NAMES = ["shop.example", "*.apps.example", "localhost"]


def _answer(
    redirect: HttpsRedirect, target: bytes, host: bytes | None, port: int = 8443
) -> tuple[int, bytes]:
    headers = {} if host is None else {b"host": host}
    response = redirect.answer(SimpleRequest(b"GET", target, headers), port)
    location = b""
    for line in response.headers.split(b"\r\n"):
        if line.startswith(b"location: "):
            location = line[len(b"location: ") :]
    return response.status, location


@pytest.mark.parametrize(
    ("host", "location"),
    [
        (b"shop.example", b"https://shop.example:8443/p?q=1"),
        (b"SHOP.Example:8080", b"https://shop.example:8443/p?q=1"),
        (b"localhost", b"https://localhost:8443/p?q=1"),
        (b"a.apps.example", b"https://a.apps.example:8443/p?q=1"),
        (b"b.a.apps.example", b"https://b.a.apps.example:8443/p?q=1"),
    ],
)
def test_named_hosts_are_redirected(host: bytes, location: bytes) -> None:
    assert _answer(HttpsRedirect(None, NAMES), b"/p?q=1", host) == (308, location)


@pytest.mark.parametrize(
    "host",
    [
        b"evil.example",
        b"evil.example:443",
        b"shop.example.evil.example",
        b"apps.example",  # "*.apps.example" covers subdomains, not the domain itself
        b"evilapps.example",
        b"evil.test/x.apps.example",  # URL delimiters cannot pass as a subdomain
        b"evil.test?.apps.example",
        b"evil.test@a.apps.example",
        b"127.0.0.1",
        b"[::1]",
        b"",
        None,
    ],
)
def test_other_hosts_get_400_without_location(host: bytes | None) -> None:
    assert _answer(HttpsRedirect(None, NAMES), b"/p", host) == (400, b"")


def test_public_host_is_always_the_target() -> None:
    redirect = HttpsRedirect("Shop.Example", NAMES)
    assert _answer(redirect, b"/p", b"evil.example") == (308, b"https://shop.example:8443/p")
    assert _answer(redirect, b"/p", None) == (308, b"https://shop.example:8443/p")


def test_absolute_form_authority_is_the_requested_host() -> None:
    """RFC 9112 §3.2.2: the target's authority, not Host, says which host was asked for."""
    redirect = HttpsRedirect(None, NAMES)
    assert _answer(redirect, b"http://evil.example/p", b"shop.example") == (400, b"")
    assert _answer(redirect, b"http://shop.example:80/p", b"evil.example") == (
        308,
        b"https://shop.example:8443/p",
    )


def test_port_443_is_left_out_and_the_path_is_normalized() -> None:
    redirect = HttpsRedirect(None, NAMES)
    assert _answer(redirect, b"/a/./b/../c?x=%2F", b"shop.example", 443) == (
        308,
        b"https://shop.example/a/c?x=%2F",
    )
    assert _answer(redirect, b"/a/..%2fb", b"shop.example")[0] == 400


def test_names_come_from_route_hosts_and_server_names() -> None:
    config = parse_config(
        """
gateway:
  tls: {server_names: [gw.example]}
services:
  s: {targets: ["http://127.0.0.1:9"]}
routes:
  - match: {path: /, prefix: true, hosts: [shop.example, "*.apps.example"]}
    service: s
    auth: {require: none}
"""
    ).config
    redirect = HttpsRedirect.from_config(config)
    assert [redirect.host_for(h) for h in (b"gw.example", b"shop.example", b"x.apps.example")] == [
        b"gw.example",
        b"shop.example",
        b"x.apps.example",
    ]
    assert redirect.host_for(b"localhost") is None  # the default server name is replaced
    assert redirect.host_for(b"evil.example") is None
