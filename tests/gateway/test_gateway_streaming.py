"""Bodies streamed through the real gateway in both directions, HEAD, and keep-alive reuse."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from gateway_harness import GatewayProcess, RawClient, RecordingUpstream, Reply, get, payload, sha256

UPLOAD = 5 * 1024 * 1024
DOWNLOAD = 20 * 1024 * 1024


@pytest.fixture(scope="module")
def gw(module_gateway_factory, module_upstream: RecordingUpstream) -> GatewayProcess:
    overrides = {
        "gateway": {"limits": {"max_body": "8MiB", "body_timeout": "5s", "header_timeout": "5s"}},
        "services": {"rec": {"read_timeout": "10s"}},
    }
    return module_gateway_factory(module_upstream, overrides)


@pytest.fixture
def upstream(module_upstream: RecordingUpstream) -> Iterator[RecordingUpstream]:
    module_upstream.settle()  # let a previous test's late arrivals land before forgetting them
    module_upstream.reset()
    yield module_upstream
    module_upstream.reset()


def test_large_upload_with_content_length(gw: GatewayProcess, upstream: RecordingUpstream) -> None:
    body = payload(UPLOAD)
    with RawClient(gw.port, timeout=20) as client:
        client.send(
            b"PUT /upload HTTP/1.1\r\nHost: test.local\r\nContent-Length: %d\r\n\r\n" % len(body) + body
        )
        assert client.read_response().status == 200
    (request,) = upstream.wait_for_requests(1, timeout=10)
    assert request.header("content-length") == b"%d" % UPLOAD
    assert request.header("transfer-encoding") is None
    assert len(request.body) == UPLOAD
    assert sha256(request.body) == sha256(body)


def test_large_upload_chunked(gw: GatewayProcess, upstream: RecordingUpstream) -> None:
    body = payload(UPLOAD)
    step = 100_003  # odd chunk sizes, so chunks never line up with the gateway's reads
    framed = b"".join(
        b"%x\r\n%s\r\n" % (len(body[i : i + step]), body[i : i + step]) for i in range(0, UPLOAD, step)
    )
    with RawClient(gw.port, timeout=20) as client:
        client.send(b"POST /upload HTTP/1.1\r\nHost: test.local\r\nTransfer-Encoding: chunked\r\n\r\n")
        client.send(framed + b"0\r\n\r\n")
        assert client.read_response().status == 200
    (request,) = upstream.wait_for_requests(1, timeout=10)
    assert request.header("transfer-encoding") == b"chunked"
    assert request.header("content-length") is None
    assert sha256(request.body) == sha256(body)


def test_upload_with_expect_continue(gw: GatewayProcess, upstream: RecordingUpstream) -> None:
    body = payload(64 * 1024)
    with RawClient(gw.port) as client:
        client.send(
            b"POST /upload HTTP/1.1\r\nHost: test.local\r\nExpect: 100-continue\r\nContent-Length: %d\r\n\r\n"
            % len(body)
        )
        interim = client.read_head()
        assert interim.status == 100
        client.send(body)
        assert client.read_response().status == 200
    (request,) = upstream.wait_for_requests(1)
    assert request.header("expect") is None
    assert request.body == body


@pytest.mark.parametrize("framing", ["length", "chunked", "close"])
def test_large_download(gw: GatewayProcess, upstream: RecordingUpstream, framing: str) -> None:
    upstream.reply = Reply(
        size=DOWNLOAD, framing=framing, headers=((b"content-type", b"application/octet-stream"),)
    )
    with RawClient(gw.port, timeout=30) as client:
        client.send(get("/download"))
        response = client.read_response()
        assert response.status == 200
        assert len(response.body) == DOWNLOAD
        assert sha256(response.body) == sha256(payload(DOWNLOAD))
        if framing == "length":
            assert response.header("content-length") == b"%d" % DOWNLOAD
        else:
            assert response.header("transfer-encoding") == b"chunked"  # re-framed for an HTTP/1.1 client
        # The client connection survives even when the upstream's body ended with its close.
        upstream.reply = Reply()
        client.send(get("/again"))
        assert client.read_response().body == b'{"ok":true}'


def test_close_delimited_download_to_http10_client(gw: GatewayProcess, upstream: RecordingUpstream) -> None:
    upstream.reply = Reply(size=1024 * 1024, framing="close")
    with RawClient(gw.port, timeout=10) as client:
        client.send(b"GET /old HTTP/1.0\r\nHost: test.local\r\n\r\n")
        raw = client.read_until_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"transfer-encoding" not in head.lower()
    assert sha256(body) == sha256(payload(1024 * 1024))


@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_head_gets_headers_only(gw: GatewayProcess, upstream: RecordingUpstream, framing: str) -> None:
    upstream.reply = Reply(size=50_000, framing=framing)
    with RawClient(gw.port) as client:
        client.send(get("/thing", method="HEAD"))
        head = client.read_head()
        assert head.status == 200
        if framing == "length":
            assert head.header("content-length") == b"50000"
        assert head.header("transfer-encoding") is None
        upstream.reply = Reply()
        # Nothing follows the head: the next response on this connection starts cleanly.
        client.send(get("/next"))
        response = client.read_response()
        assert response.status == 200 and response.body == b'{"ok":true}'
    first, second = upstream.wait_for_requests(2)
    assert first.method == b"HEAD" and second.path == b"/next"


def test_keep_alive_and_upstream_pooling(gw: GatewayProcess, upstream: RecordingUpstream) -> None:
    with RawClient(gw.port) as client:
        for i in range(50):
            client.send(get(f"/ka/{i}"))
            response = client.read_response()
            assert response.status == 200, i
            assert response.header("connection") is None
    seen = upstream.wait_for_requests(50)
    assert [r.path for r in seen] == [f"/ka/{i}".encode() for i in range(50)]
    assert upstream.connections <= 2, f"{upstream.connections} upstream connections for 50 requests"
