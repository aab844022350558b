"""Path normalisation through the real gateway: what a route matches is exactly what the upstream gets.

Routes: ``/admin`` (prefix, named admin), ``/public`` (prefix, named public) and the ``/`` catch-all,
all to one recording upstream. For every accepted target the upstream must receive the same path the
access log says was matched, and the route in the access log must be the one that path selects.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest
from gateway_harness import GatewayProcess, RawClient, RecordingUpstream

_ids = itertools.count()


@pytest.fixture(scope="module")
def gw(module_gateway_factory, module_upstream: RecordingUpstream) -> GatewayProcess:
    routes = [
        {
            "match": {"path": "/admin", "prefix": True},
            "service": "rec",
            "auth": {"require": "none"},
            "name": "admin",
        },
        {
            "match": {"path": "/public", "prefix": True},
            "service": "rec",
            "auth": {"require": "none"},
            "name": "public",
        },
        {
            "match": {"path": "/", "prefix": True},
            "service": "rec",
            "auth": {"require": "none"},
            "name": "catchall",
        },
    ]
    return module_gateway_factory(module_upstream, {"routes": routes})


@pytest.fixture
def upstream(module_upstream: RecordingUpstream) -> Iterator[RecordingUpstream]:
    module_upstream.settle()  # let a previous test's late arrivals land before forgetting them
    module_upstream.reset()
    yield module_upstream
    module_upstream.reset()


def send(gw: GatewayProcess, target: bytes) -> tuple[int, str]:
    request_id = f"paths-{next(_ids)}"
    with RawClient(gw.port) as client:
        client.send(
            b"GET %s HTTP/1.1\r\nHost: test.local\r\nX-Request-Id: %s\r\n\r\n" % (target, request_id.encode())
        )
        response = client.read_response()
    return response.status, request_id


ACCEPTED = [
    # (raw target, path the upstream must get, route)
    (b"//admin", b"/admin", "admin"),
    (b"/%61dmin", b"/admin", "admin"),
    (b"/%61%64%6D%69%6E/x", b"/admin/x", "admin"),
    (b"/api%2e%2e/admin", b"/api../admin", "catchall"),
    (b"/ADMIN", b"/ADMIN", "catchall"),
    (b"/Admin/x", b"/Admin/x", "catchall"),
    (b"/public/../admin", b"/admin", "admin"),
    (b"/public/%2e%2e/admin", b"/admin", "admin"),
    (b"/public/./x/../../admin/", b"/admin/", "admin"),
    (b"/public///x", b"/public/x", "public"),
    (b"/adminx", b"/adminx", "catchall"),
    (b"/admin.", b"/admin.", "catchall"),
    (b"/public/%2561dmin", b"/public/%2561dmin", "public"),
    (b"/public/%c3%a9", b"/public/%C3%A9", "public"),
]

REFUSED = [
    b"/public/..%2Fadmin",
    b"/public/..%2fadmin",
    b"/public/%2e%2e%2fadmin",
    b"/admin;x",
    b"/public;/../admin",
    b"/admin%3Bx",
    b"/public/..%5Cadmin",
    b"/public\\..\\admin",
    b"/../admin",
    b"/public/../../admin",
    b"/%2e%2e/admin",
    b"/admin%00",
    b"/admin%zz",
    b"/admin%",
]


@pytest.mark.parametrize(("target", "path", "route"), ACCEPTED, ids=[c[0].decode() for c in ACCEPTED])
def test_upstream_gets_the_matched_path(
    gw: GatewayProcess, upstream: RecordingUpstream, target: bytes, path: bytes, route: str
) -> None:
    status, request_id = send(gw, target)
    assert status == 200
    (request,) = upstream.wait_for_requests(1)
    assert request.head.startswith(b"GET %s HTTP/1.1\r\n" % path)
    assert request.target == path
    line = gw.log_for(request_id)
    assert line["path"].encode() == request.path == path
    assert line["route"] == route
    assert line["status"] == 200


def test_query_is_passed_through_unchanged(gw: GatewayProcess, upstream: RecordingUpstream) -> None:
    status, request_id = send(gw, b"/%61dmin/x?next=%2F..%2Fadmin&a=%61")
    assert status == 200
    (request,) = upstream.wait_for_requests(1)
    assert request.target == b"/admin/x?next=%2F..%2Fadmin&a=%61"
    line = gw.log_for(request_id)
    assert (line["path"], line["route"]) == ("/admin/x", "admin")


# Issue 7, item 5: routed to the open /public route and forwarded as they were, these reach
# /admin/x at an upstream that decodes the path once more (and then resolves the dot segments).
DOUBLE_ENCODED = [
    b"/public/%252e%252e/admin/x",
    b"/public/..%252fadmin/x",
    b"/public/%252E%252E%252Fadmin/x",
    b"/public/..%255cadmin/x",
    b"/public/%25252e%25252e/admin/x",
    b"/public/%25%32%65%25%32%65/admin/x",
]


def _assert_refused(gw: GatewayProcess, upstream: RecordingUpstream, target: bytes) -> None:
    with RawClient(gw.port) as client:
        client.send(b"GET %s HTTP/1.1\r\nHost: test.local\r\n\r\n" % target)
        response = client.read_response()
        assert response.status == 400
        assert response.json()["error"] == "bad_request"
        assert target not in response.body
        assert client.closed_by_peer(1.0)
    assert upstream.settle() == []


@pytest.mark.parametrize("target", REFUSED, ids=[t.decode() for t in REFUSED])
def test_ambiguous_paths_are_refused(gw: GatewayProcess, upstream: RecordingUpstream, target: bytes) -> None:
    _assert_refused(gw, upstream, target)


@pytest.mark.parametrize("target", DOUBLE_ENCODED, ids=[t.decode() for t in DOUBLE_ENCODED])
def test_double_encoded_traversal_never_reaches_the_upstream(
    gw: GatewayProcess, upstream: RecordingUpstream, target: bytes
) -> None:
    _assert_refused(gw, upstream, target)


def test_overlong_target_is_refused(gw: GatewayProcess, upstream: RecordingUpstream) -> None:
    """Over the 8 KiB target limit (414) and so also over max_header_bytes here (431)."""
    target = b"/public/" + b"a" * 9000
    with RawClient(gw.port) as client:
        client.send(b"GET %s HTTP/1.1\r\nHost: test.local\r\n\r\n" % target)
        response = client.read_response()
    assert response.status in (414, 431)
    assert upstream.settle() == []
