"""Strict HTTP/1.1 handling at the gateway, through a real process and real sockets.

Every refused request must get its 4xx status, the connection must be closed after it, and the
recording upstream must have seen either nothing or exactly the one legitimate request, never a
second (smuggled) one. The smuggled request in these payloads always asks for ``/smuggled``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from gateway_harness import GatewayProcess, RawClient, RecordedRequest, RecordingUpstream, Reply, get

SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: test.local\r\n\r\n"
MAX_BODY = 1024
MAX_HEADER_BYTES = 4 * 1024
HEADER_TIMEOUT = 0.5


@pytest.fixture(scope="module")
def gw(module_gateway_factory, module_upstream: RecordingUpstream) -> GatewayProcess:
    return module_gateway_factory(module_upstream)


@pytest.fixture
def upstream(module_upstream: RecordingUpstream) -> Iterator[RecordingUpstream]:
    module_upstream.settle()  # let a previous test's late arrivals land before forgetting them
    module_upstream.reset()
    yield module_upstream
    module_upstream.reset()


def refused(
    gw: GatewayProcess, upstream: RecordingUpstream, data: bytes, status: int
) -> list[RecordedRequest]:
    """Send ``data``; expect ``status`` and a closed connection; return what the upstream received."""
    with RawClient(gw.port) as client:
        client.send(data)
        response = client.read_response()
        assert response.status == status, (response.status, response.body)
        assert response.header("connection") == b"close"
        assert response.header("content-type") == b"application/json"
        assert client.closed_by_peer(1.0), "the gateway kept the connection open after refusing"
    seen = upstream.settle()
    assert all(b"smuggled" not in request.target for request in seen), seen
    assert all(not request.complete for request in seen), "a refused request reached the upstream whole"
    return seen


def assert_nothing_smuggled(seen: list[RecordedRequest]) -> None:
    assert len(seen) <= 1, [r.head for r in seen]
    assert all(b"smuggled" not in request.target for request in seen), seen


# -- framing: Content-Length and Transfer-Encoding -----------------------------------------------------
def _post(*header_lines: bytes, body: bytes = b"") -> bytes:
    return (
        b"POST /upload HTTP/1.1\r\nHost: test.local\r\n"
        + b"".join(h + b"\r\n" for h in header_lines)
        + b"\r\n"
        + body
    )


FRAMING_CASES = {
    "cl_then_te": _post(b"Content-Length: 5", b"Transfer-Encoding: chunked", body=b"0\r\n\r\n" + SMUGGLED),
    "te_then_cl": _post(b"Transfer-Encoding: chunked", b"Content-Length: 40", body=b"0\r\n\r\n" + SMUGGLED),
    "te_xchunked": _post(b"Transfer-Encoding: xchunked", body=b"0\r\n\r\n" + SMUGGLED),
    "te_vertical_tab_chunked": _post(b"Transfer-Encoding: \x0bchunked", body=b"0\r\n\r\n" + SMUGGLED),
    "te_line_starting_with_space": (
        b"POST /upload HTTP/1.1\r\n Transfer-Encoding: chunked\r\nHost: test.local\r\n"
        b"Content-Length: 5\r\n\r\n0\r\n\r\n" + SMUGGLED
    ),
    "te_chunked_identity": _post(b"Transfer-Encoding: chunked, identity", body=b"0\r\n\r\n" + SMUGGLED),
    "te_chunked_tab": _post(b"Transfer-Encoding: chunked\t", body=b"0\r\n\r\n" + SMUGGLED),
    "te_in_two_lines": _post(
        b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked", body=b"0\r\n\r\n" + SMUGGLED
    ),
    "te_chunked_then_identity_lines": _post(
        b"Transfer-Encoding: chunked", b"Transfer-Encoding: identity", body=b"0\r\n\r\n" + SMUGGLED
    ),
    "te_gzip_chunked": _post(b"Transfer-Encoding: gzip, chunked", body=b"0\r\n\r\n" + SMUGGLED),
    "te_identity": _post(b"Transfer-Encoding: identity", body=b"0\r\n\r\n" + SMUGGLED),
    "cl_plus": _post(b"Content-Length: +5", body=b"hello" + SMUGGLED),
    "cl_negative": _post(b"Content-Length: -1", body=b"hello" + SMUGGLED),
    "cl_list": _post(b"Content-Length: 5, 5", body=b"hello" + SMUGGLED),
    "cl_two_headers_same": _post(b"Content-Length: 5", b"Content-Length: 5", body=b"hello" + SMUGGLED),
    "cl_two_headers_differ": _post(b"Content-Length: 5", b"Content-Length: 45", body=b"hello" + SMUGGLED),
    "cl_hex": _post(b"Content-Length: 0x5", body=b"hello" + SMUGGLED),
    "cl_overflow": _post(b"Content-Length: 100000000000000000000", body=b"hello" + SMUGGLED),
    "chunk_size_not_hex": _post(b"Transfer-Encoding: chunked", body=b"zz\r\nhello\r\n0\r\n\r\n" + SMUGGLED),
    "chunk_size_overflow": _post(
        b"Transfer-Encoding: chunked", body=b"fffffffffffffffffff\r\nhello\r\n0\r\n\r\n" + SMUGGLED
    ),
    "chunk_size_bare_lf": _post(b"Transfer-Encoding: chunked", body=b"5\nhello\r\n0\r\n\r\n" + SMUGGLED),
    "chunk_data_longer_than_size": _post(
        b"Transfer-Encoding: chunked", body=b"3\r\nhello\r\n0\r\n\r\n" + SMUGGLED
    ),
}


@pytest.mark.parametrize("data", FRAMING_CASES.values(), ids=FRAMING_CASES.keys())
def test_ambiguous_framing_is_refused(gw: GatewayProcess, upstream: RecordingUpstream, data: bytes) -> None:
    seen = refused(gw, upstream, data, 400)
    # Only a head whose framing was fine can have left (a bad chunk is seen after the head is sent).
    assert_nothing_smuggled(seen)


def test_te_with_optional_whitespace_is_plain_chunked(
    gw: GatewayProcess, upstream: RecordingUpstream
) -> None:
    """``Transfer-Encoding:  chunked`` (extra OWS) is valid HTTP; the gateway re-frames it canonically."""
    data = _post(b"Transfer-Encoding:   chunked", body=b"5\r\nhello\r\n0\r\n\r\n")
    with RawClient(gw.port) as client:
        client.send(data)
        assert client.read_response().status == 200
    (request,) = upstream.wait_for_requests(1)
    assert request.header("transfer-encoding") == b"chunked"
    assert request.header("content-length") is None
    assert request.body == b"hello"
    assert upstream.settle() == [request]


# -- header syntax ---------------------------------------------------------------------------------------
SYNTAX_CASES = {
    "bare_lf_everywhere": b"GET / HTTP/1.1\nHost: test.local\n\n",
    "bare_lf_after_header": b"GET / HTTP/1.1\r\nHost: test.local\nX-A: b\r\n\r\n",
    "bare_lf_in_value": b"GET / HTTP/1.1\r\nHost: test.local\r\nX-A: a\nTransfer-Encoding: chunked\r\n\r\n",
    "obs_fold": b"GET / HTTP/1.1\r\nHost: test.local\r\nX-A: a\r\n b\r\n\r\n",
    "obs_fold_tab": b"GET / HTTP/1.1\r\nHost: test.local\r\nX-A: a\r\n\tb\r\n\r\n",
    "cr_in_value": b"GET / HTTP/1.1\r\nHost: test.local\r\nX-A: a\rb\r\n\r\n",
    "nul_in_value": b"GET / HTTP/1.1\r\nHost: test.local\r\nX-A: a\x00b\r\n\r\n",
    "space_in_name": b"GET / HTTP/1.1\r\nHost: test.local\r\nX A: b\r\n\r\n",
    "space_before_colon": b"GET / HTTP/1.1\r\nHost: test.local\r\nX-A : b\r\n\r\n",
    "paren_in_name": b"GET / HTTP/1.1\r\nHost: test.local\r\nX(A): b\r\n\r\n",
    "two_hosts": b"GET / HTTP/1.1\r\nHost: test.local\r\nHost: other.local\r\n\r\n",
    "no_host_http11": b"GET / HTTP/1.1\r\nX-A: b\r\n\r\n",
    "host_with_space": b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
    "host_with_slash": b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n",
    "host_with_userinfo": b"GET / HTTP/1.1\r\nHost: user@a\r\n\r\n",
    "lowercase_method": b"get / HTTP/1.1\r\nHost: test.local\r\n\r\n",
    "absolute_form_other_host": b"GET http://a.example/x HTTP/1.1\r\nHost: b.example\r\n\r\n",
    "absolute_form_userinfo": b"GET http://u@a.example/x HTTP/1.1\r\nHost: a.example\r\n\r\n",
    "asterisk_form": b"OPTIONS * HTTP/1.1\r\nHost: test.local\r\n\r\n",
    "fragment": b"GET /a#b HTTP/1.1\r\nHost: test.local\r\n\r\n",
    "expect_other": b"GET / HTTP/1.1\r\nHost: test.local\r\nExpect: 200-ok\r\n\r\n",
}
SYNTAX_STATUS = {"expect_other": 417}


@pytest.mark.parametrize("name", SYNTAX_CASES)
def test_malformed_head_is_refused(gw: GatewayProcess, upstream: RecordingUpstream, name: str) -> None:
    seen = refused(gw, upstream, SYNTAX_CASES[name], SYNTAX_STATUS.get(name, 400))
    assert seen == []


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"GET / HTTP/2.0\r\nHost: test.local\r\n\r\n", id="http2_0_request_line"),
        pytest.param(b"GET /\r\n\r\n", id="http0_9_no_headers"),
    ],
)
def test_unsupported_http_version_is_refused(
    gw: GatewayProcess, upstream: RecordingUpstream, data: bytes
) -> None:
    with RawClient(gw.port) as client:
        client.send(data)
        response = client.read_response()
    assert response.status in (400, 505)
    assert upstream.settle() == []


# -- upgrades and CONNECT --------------------------------------------------------------------------------
def test_h2c_upgrade_is_not_implemented(gw: GatewayProcess, upstream: RecordingUpstream) -> None:
    data = (
        b"GET / HTTP/1.1\r\nHost: test.local\r\nConnection: Upgrade, HTTP2-Settings\r\n"
        b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n" + SMUGGLED
    )
    assert refused(gw, upstream, data, 501) == []


def test_websocket_upgrade_is_not_implemented(gw: GatewayProcess, upstream: RecordingUpstream) -> None:
    data = (
        b"GET /ws HTTP/1.1\r\nHost: test.local\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n" + SMUGGLED
    )
    assert refused(gw, upstream, data, 501) == []


def test_connect_is_not_implemented(gw: GatewayProcess, upstream: RecordingUpstream) -> None:
    assert refused(gw, upstream, b"CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\n\r\n", 501) == []


# -- limits ----------------------------------------------------------------------------------------------
def test_header_block_over_max_header_bytes(gw: GatewayProcess, upstream: RecordingUpstream) -> None:
    headers = b"".join(b"X-Pad-%d: %s\r\n" % (i, b"a" * 400) for i in range(12))  # ~5 KiB, 12 fields
    data = b"GET / HTTP/1.1\r\nHost: test.local\r\n" + headers + b"\r\n"
    assert len(data) > MAX_HEADER_BYTES
    assert refused(gw, upstream, data, 431) == []


def test_more_headers_than_max_headers(gw: GatewayProcess, upstream: RecordingUpstream) -> None:
    headers = b"".join(b"X-H%d: v\r\n" % i for i in range(25))
    data = b"GET / HTTP/1.1\r\nHost: test.local\r\n" + headers + b"\r\n"
    assert len(data) < MAX_HEADER_BYTES
    assert refused(gw, upstream, data, 431) == []


def test_giant_unterminated_header_line_is_431_not_a_hang(
    gw: GatewayProcess, upstream: RecordingUpstream
) -> None:
    data = b"GET / HTTP/1.1\r\nHost: test.local\r\nX-Giant: " + b"a" * (3 * MAX_HEADER_BYTES)
    start = time.monotonic()
    assert refused(gw, upstream, data, 431) == []
    assert time.monotonic() - start < HEADER_TIMEOUT + 0.3, (
        "answered by the header timeout, not the size limit"
    )


def test_giant_header_line_sent_in_pieces(gw: GatewayProcess, upstream: RecordingUpstream) -> None:
    with RawClient(gw.port) as client:
        client.send(b"GET / HTTP/1.1\r\nHost: test.local\r\nX-Giant: ")
        for _ in range(6):
            try:
                client.send(b"a" * 1024)
            except (BrokenPipeError, ConnectionResetError):
                break
            time.sleep(0.01)
        response = client.read_response()
        assert response.status == 431
        assert client.closed_by_peer(1.0)
    assert upstream.settle() == []


def test_whitespace_padded_header_block_over_max_header_bytes(
    gw: GatewayProcess, upstream: RecordingUpstream
) -> None:
    data = b"GET / HTTP/1.1\r\nHost: test.local\r\nX-Pad:" + b" " * (3 * MAX_HEADER_BYTES) + b"a\r\n\r\n"
    assert refused(gw, upstream, data, 431) == []


def test_giant_unterminated_header_on_a_keep_alive_connection(
    gw: GatewayProcess, upstream: RecordingUpstream
) -> None:
    with RawClient(gw.port) as client:
        client.send(get("/first"))
        assert client.read_response().status == 200
        start = time.monotonic()
        client.send(b"GET / HTTP/1.1\r\nHost: test.local\r\nX-Giant: " + b"a" * (3 * MAX_HEADER_BYTES))
        response = client.read_response()
        assert (response.status, time.monotonic() - start < HEADER_TIMEOUT) == (431, True)


def test_body_over_max_body_with_content_length(gw: GatewayProcess, upstream: RecordingUpstream) -> None:
    body = b"x" * (MAX_BODY + 1)
    data = _post(b"Content-Length: %d" % len(body), body=body)
    assert refused(gw, upstream, data, 413) == []


def test_content_length_over_max_body_refused_before_the_body(
    gw: GatewayProcess, upstream: RecordingUpstream
) -> None:
    with RawClient(gw.port) as client:
        client.send(_post(b"Content-Length: 1000000000"))
        response = client.read_response()
        assert response.status == 413
        assert client.closed_by_peer(1.0)
    assert upstream.settle() == []


def test_chunked_body_over_max_body(gw: GatewayProcess, upstream: RecordingUpstream) -> None:
    chunks = b"".join(b"100\r\n" + b"y" * 256 + b"\r\n" for _ in range(6))  # 1536 bytes > 1 KiB
    data = _post(b"Transfer-Encoding: chunked", body=chunks + b"0\r\n\r\n" + SMUGGLED)
    seen = refused(gw, upstream, data, 413)
    assert_nothing_smuggled(seen)
    for request in seen:  # the head may have gone ahead; never more than max_body of the body
        assert len(request.body) <= MAX_BODY


def test_chunked_body_at_max_body_is_accepted(gw: GatewayProcess, upstream: RecordingUpstream) -> None:
    chunks = b"".join(b"100\r\n" + b"y" * 256 + b"\r\n" for _ in range(4))  # exactly 1 KiB
    with RawClient(gw.port) as client:
        client.send(_post(b"Transfer-Encoding: chunked", body=chunks + b"0\r\n\r\n"))
        assert client.read_response().status == 200
    (request,) = upstream.wait_for_requests(1)
    assert request.body == b"y" * MAX_BODY


def test_chunked_trailers_are_bounded(gw: GatewayProcess, upstream: RecordingUpstream) -> None:
    trailers = b"".join(b"X-T%d: %s\r\n" % (i, b"t" * 200) for i in range(60))  # 12 KiB, 60 fields
    data = _post(b"Transfer-Encoding: chunked", body=b"1\r\na\r\n0\r\n" + trailers + b"\r\n")
    with RawClient(gw.port) as client:
        client.send(data)
        response = client.read_response()
    assert response.status in (400, 431)


# -- timeouts --------------------------------------------------------------------------------------------
def test_slowloris_head_gets_408_and_close(gw: GatewayProcess, upstream: RecordingUpstream) -> None:
    with RawClient(gw.port, timeout=HEADER_TIMEOUT + 1.0) as client:
        start = time.monotonic()
        client.send(b"GET / HTTP/1.1\r\nHost: test.local\r\nX-Slow: ")
        response = client.read_response()
        elapsed = time.monotonic() - start
        assert response.status == 408
        assert HEADER_TIMEOUT - 0.05 <= elapsed <= HEADER_TIMEOUT + 1.0
        assert client.closed_by_peer(1.0)
    assert upstream.settle() == []


def test_trickled_head_still_times_out(gw: GatewayProcess, upstream: RecordingUpstream) -> None:
    """Bytes arriving slowly do not extend the header deadline."""
    with RawClient(gw.port, timeout=HEADER_TIMEOUT + 1.0) as client:
        start = time.monotonic()
        client.send(b"GET / HTTP/1.1\r\n")
        for _ in range(20):
            try:
                client.send(b"X-A: b\r\n")
            except (BrokenPipeError, ConnectionResetError):
                break
            if client.closed_by_peer(0.1):
                break
        assert time.monotonic() - start <= HEADER_TIMEOUT + 1.0
        assert client.eof or client.closed_by_peer(1.0)
        assert b"HTTP/1.1 408 " in client.received
    assert upstream.settle() == []


def test_stalled_body_gets_408(gw: GatewayProcess, upstream: RecordingUpstream) -> None:
    with RawClient(gw.port) as client:
        client.send(_post(b"Content-Length: 100", body=b"only a part"))
        response = client.read_response()
        assert response.status == 408
        assert client.closed_by_peer(1.0)
    seen = upstream.settle()
    assert len(seen) <= 1 and not any(r.complete for r in seen)


def test_no_100_continue_for_http10_clients(gw: GatewayProcess, upstream: RecordingUpstream) -> None:
    with RawClient(gw.port) as client:
        client.send(
            b"POST /e HTTP/1.0\r\nHost: test.local\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n"
        )
        client.closed_by_peer(0.2)  # read whatever the gateway sends before the body
        assert b" 100 " not in client.received
        client.send(b"ok")
        assert client.read_response().status == 200


# -- request targets -------------------------------------------------------------------------------------
def test_absolute_form_with_matching_host_is_routed_in_origin_form(
    gw: GatewayProcess, upstream: RecordingUpstream
) -> None:
    with RawClient(gw.port) as client:
        client.send(b"GET http://a.example/x?q=1 HTTP/1.1\r\nHost: a.example\r\n\r\n")
        assert client.read_response().status == 200
    (request,) = upstream.wait_for_requests(1)
    assert request.head.startswith(b"GET /x?q=1 HTTP/1.1\r\n")
    assert request.header("host") == b"a.example"


def test_absolute_form_without_host_uses_its_authority(
    gw: GatewayProcess, upstream: RecordingUpstream
) -> None:
    with RawClient(gw.port) as client:
        client.send(b"GET http://A.Example:8080/x HTTP/1.1\r\nHost: a.example:8080\r\n\r\n")
        assert client.read_response().status == 200
    (request,) = upstream.wait_for_requests(1)
    assert request.head.startswith(b"GET /x HTTP/1.1\r\n")
    assert request.header("host") == b"a.example:8080"


# -- pipelining ------------------------------------------------------------------------------------------
def test_pipelined_requests_are_served_in_order(gw: GatewayProcess, upstream: RecordingUpstream) -> None:
    upstream.handler = lambda request: Reply(body=b'{"path":"%s"}' % request.path, delay=0.05)
    body = b"0123456789"
    data = (
        get("/one")
        + b"POST /two HTTP/1.1\r\nHost: test.local\r\nContent-Length: 10\r\n\r\n"
        + body
        + get("/three")
    )
    with RawClient(gw.port) as client:
        client.send(data)
        responses = [client.read_response() for _ in range(3)]
        assert [r.status for r in responses] == [200, 200, 200]
        assert [r.json()["path"] for r in responses] == ["/one", "/two", "/three"]
        assert not client.closed_by_peer(0.1), "a keep-alive connection was closed"
    seen = upstream.wait_for_requests(3)
    assert [r.path for r in seen] == [b"/one", b"/two", b"/three"]
    assert seen[1].body == body
    assert upstream.settle() == seen


def test_refusal_after_a_good_pipelined_request(gw: GatewayProcess, upstream: RecordingUpstream) -> None:
    """The good request is answered first; then the bad one is refused and nothing else is read."""
    data = (
        get("/good")
        + _post(b"Content-Length: 3", b"Transfer-Encoding: chunked", body=b"0\r\n\r\n")
        + SMUGGLED
    )
    with RawClient(gw.port) as client:
        client.send(data)
        first = client.read_response()
        second = client.read_response()
        assert (first.status, second.status) == (200, 400)
        assert client.closed_by_peer(1.0)
    seen = upstream.settle()
    assert [r.path for r in seen] == [b"/good"]
