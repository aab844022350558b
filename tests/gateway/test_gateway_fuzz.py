"""Hypothesis throws arbitrary and mutated requests at ONE running gateway, each on a fresh connection.

Whatever arrives, the gateway must stay up, keep answering valid requests, answer with well-formed
HTTP/1.1 responses only (never a 500 of its own), and forward only requests a strict parser accepts.
"""

from __future__ import annotations

import contextlib
import json
import re
import time

import pytest
from gateway_harness import GatewayProcess, RawClient, RecordingUpstream, get
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

STATUS_LINE = re.compile(rb"HTTP/1\.1 ([1-5]\d\d) [^\r\n]*\r\n")
FUZZ = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture(scope="module")
def gw(module_gateway_factory, module_upstream: RecordingUpstream) -> GatewayProcess:
    limits = {"header_timeout": "0.3s", "body_timeout": "0.3s", "max_body": "4KiB"}
    return module_gateway_factory(module_upstream, {"gateway": {"limits": limits}})


# -- reading what comes back -----------------------------------------------------------------------------
def _chunked_end(data: bytes, pos: int) -> int | None:
    while True:
        eol = data.find(b"\r\n", pos)
        if eol < 0:
            return None
        size = int(data[pos:eol], 16)
        pos = eol + 2
        if size == 0:
            return pos + 2 if data[pos : pos + 2] == b"\r\n" else None
        pos += size + 2
        if pos > len(data):
            return None


def check_responses(data: bytes) -> tuple[list[int], bool]:
    """Statuses of the complete responses in ``data`` (each must start with a status line), and
    whether ``data`` ends exactly after the last one."""
    statuses: list[int] = []
    pos = 0
    while pos < len(data):
        match = STATUS_LINE.match(data, pos)
        if match is None:
            rest = data[pos:]
            assert b"\r\n" not in rest and b"HTTP/1.1 ".startswith(rest[:9]), f"not a response: {data!r}"
            return statuses, False  # a status line still arriving
        end = data.find(b"\r\n\r\n", pos)
        if end < 0:
            return statuses, False
        status = int(match.group(1))
        head = data[pos : end + 4].lower()
        pos = end + 4
        length = re.search(rb"\r\ncontent-length: (\d+)\r\n", head)
        if 100 <= status < 200 or status in (204, 304):
            pass
        elif b"\r\ntransfer-encoding: chunked\r\n" in head:
            chunk_end = _chunked_end(data, pos)
            if chunk_end is None:
                return statuses, False
            pos = chunk_end
        elif length is not None:
            size = int(length.group(1))
            rest = data[pos:]
            if len(rest) >= size and (len(rest) == size or STATUS_LINE.match(data, pos + size)):
                pos += size
            elif not (rest == b"" or rest.startswith(b"HTTP/1.1 ")):  # else: the answer to a HEAD
                return statuses, False
        statuses.append(status)
    return statuses, True


def talk(port: int, data: bytes) -> bytes:
    """Send ``data``; read until the gateway closes, or it has answered and gone quiet."""
    with RawClient(port, timeout=3.0) as client:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            client.send(data)
        deadline = time.monotonic() + 3.0
        while not client.eof and time.monotonic() < deadline:
            statuses, at_boundary = check_responses(bytes(client.received))
            final = [s for s in statuses if s >= 200]
            if final and at_boundary:
                if not client._recv(0.05):  # answered and nothing more is coming
                    break
            else:
                client._recv(deadline - time.monotonic())
        return bytes(client.received)


def assert_healthy(gw: GatewayProcess, upstream: RecordingUpstream, received: bytes) -> None:
    assert gw.alive(), gw.stderr_tail()
    statuses, _ = check_responses(received)
    assert received, "the gateway closed without answering"
    assert statuses or received.startswith(b"HTTP/1.1 "), received
    assert 500 not in statuses, f"the gateway failed internally: {received[:300]!r}"
    assert upstream.errors == [], f"the gateway forwarded bytes a strict parser refuses: {upstream.errors}"


def assert_still_serving(gw: GatewayProcess) -> None:
    with RawClient(gw.port) as client:
        client.send(get("/still/alive"))
        assert client.read_response().status == 200
    for line in gw.stderr_text().splitlines():
        record = json.loads(line)  # a traceback would not be JSON
        assert record["level"] != "error", record


# -- strategies ------------------------------------------------------------------------------------------
METHODS = [b"GET", b"POST", b"PUT", b"HEAD", b"DELETE", b"OPTIONS", b"PATCH", b"CONNECT", b"TRACE", b"PRI"]
TARGETS = [
    b"/",
    b"/a/b?c=d",
    b"//admin",
    b"/%2e%2e/x",
    b"/a/..%2fb",
    b"/a;b",
    b"*",
    b"http://a.example/x",
    b"https://u@a.example/",
    b"a.example:443",
    b"/\x00",
    b"/%",
    b"/a#b",
    b"/" + b"a" * 5000,
]
VERSIONS = [b"HTTP/1.1", b"HTTP/1.0", b"HTTP/1.2", b"HTTP/2.0", b"HTTP/0.9", b"http/1.1", b"HTTP/1.1 x", b""]
SAFE_HEADERS = [
    (b"Connection", b"close"),
    (b"Connection", b"keep-alive, X-Drop"),
    (b"X-Drop", b"1"),
    (b"X-Forwarded-For", b"1.2.3.4, 10.0.0.1"),
    (b"Forwarded", b"for=6.6.6.6"),
    (b"X-Request-Id", b"<script>"),
    (b"X-Request-Id", b"fuzz-1"),
    (b"traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
    (b"TE", b"trailers"),
    (b"Upgrade", b"h2c"),
    (b"X_Under", b"1"),
    (b"X-Garrison-Subject", b"admin"),
    (b"Expect", b"100-continue"),
    (b"Accept", b"*/*"),
]
RISKY_HEADERS = [
    (b"Content-Length", b"-1"),
    (b"Content-Length", b"5, 5"),
    (b"Transfer-Encoding", b"chunked, identity"),
    (b"Transfer-Encoding", b"gzip, chunked"),
    (b"Transfer-Encoding", b"xchunked"),
    (b"Connection", b"Upgrade"),
    (b"Expect", b"fail"),
    (b"Host", b"other.local"),
    (b"Host", b"a b"),
    (b"X-A", b"a\x00b"),
    (b"X A", b"b"),
]
TOKEN_CHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
PATH_CHARS = "abcXYZ0189-._~!$&'()*+,=:@/%;?"
VISIBLE = st.characters(min_codepoint=0x21, max_codepoint=0x7E)
valid_header = st.one_of(
    st.sampled_from(SAFE_HEADERS),
    st.tuples(
        st.text(TOKEN_CHARS, min_size=1, max_size=12).map(str.encode),
        st.text(VISIBLE, max_size=40).map(str.encode),
    ),
)
any_header = st.one_of(
    valid_header,
    st.sampled_from(RISKY_HEADERS),
    st.tuples(st.binary(min_size=1, max_size=8), st.binary(max_size=20)),
)


@st.composite
def bodies(draw: st.DrawFn, clean: bool) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """(framing headers, body bytes): none, Content-Length (right or wrong), or chunked (maybe broken)."""
    kinds = ["none", "length", "chunked"] + ([] if clean else ["wrong_length", "broken_chunked"])
    kind = draw(st.sampled_from(kinds))
    data = draw(st.binary(max_size=300))
    if kind == "none":
        return [], b""
    if kind == "length":
        return [(b"Content-Length", b"%d" % len(data))], data
    if kind == "wrong_length":
        return [(b"Content-Length", b"%d" % draw(st.integers(0, 6000)))], data
    pieces = draw(st.lists(st.binary(min_size=1, max_size=50), max_size=5))
    framed = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces)
    if kind == "broken_chunked":
        size_line = draw(st.sampled_from([b"zz", b"fffffffffffffffffff", b"-1", b"5 ", b"5;x=y", b""]))
        framed += size_line + b"\r\n" + data + b"\r\n"
    return [(b"Transfer-Encoding", b"chunked")], framed + b"0\r\n\r\n"


@st.composite
def mutated_requests(draw: st.DrawFn) -> bytes:
    """Four in ten are valid requests with odd but legal parts; the rest take risky parts and then
    byte-level damage (replace, insert, delete, duplicate) anywhere."""
    clean = draw(st.integers(0, 9)) < 4

    def part(valid: st.SearchStrategy[bytes], invalid: st.SearchStrategy[bytes]) -> bytes:
        return draw(valid if clean else st.one_of(valid, valid, invalid))

    method = part(st.sampled_from(METHODS[:7]), st.one_of(st.sampled_from(METHODS), st.binary(max_size=8)))
    target = part(
        st.text(PATH_CHARS.replace("%", "").replace(";", ""), max_size=40).map(lambda t: b"/" + t.encode()),
        st.one_of(st.sampled_from(TARGETS), st.binary(max_size=40).map(lambda b: b"/" + b)),
    )
    version = part(
        st.sampled_from(VERSIONS[:2]), st.one_of(st.sampled_from(VERSIONS), st.binary(max_size=10))
    )
    eol = part(st.just(b"\r\n"), st.sampled_from([b"\n", b"\r", b"\r\r\n"]))
    separator = part(st.sampled_from([b": ", b":", b":\t", b":   "]), st.sampled_from([b" : ", b"\t:", b""]))
    framing, body = draw(bodies(clean))
    extra = draw(st.lists(valid_header if clean else any_header, max_size=6))
    if (
        any(name.lower() in (b"content-length", b"transfer-encoding", b"expect") for name, _ in extra)
        and clean
    ):
        extra = [
            (n, v) for n, v in extra if n.lower() not in (b"content-length", b"transfer-encoding", b"expect")
        ]
    headers = draw(st.permutations([(b"Host", b"test.local"), *extra, *framing]))
    head = method + b" " + target + b" " + version + eol
    head += b"".join(name + separator + value + eol for name, value in headers)
    data = bytearray(head + eol + body)
    if draw(st.booleans()):
        data += draw(st.sampled_from([get("/pipelined"), b"GET /smuggled HTTP/1.1\r\n\r\n", b"\r\n"]))
    for _ in range(0 if clean else draw(st.integers(0, 3))):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        op = draw(st.sampled_from(["replace", "insert", "delete", "duplicate"]))
        byte = draw(st.sampled_from([0, 9, 10, 13, 32, 44, 58, 59, 127, 255, ord("0"), ord("a")]))
        if op == "replace":
            data[at] = byte
        elif op == "insert":
            data.insert(at, byte)
        elif op == "delete":
            del data[at]
        else:
            end = draw(st.integers(at, min(len(data), at + 40)))
            data[at:at] = data[at:end]
    return bytes(data)


# -- the tests -------------------------------------------------------------------------------------------
# Each test runs its Hypothesis loop and then checks the gateway still serves, so the check never
# depends on test order (pytest-xdist may split a module between workers).
def test_arbitrary_bytes(gw: GatewayProcess, module_upstream: RecordingUpstream) -> None:
    @FUZZ
    @given(data=st.binary(max_size=2048))
    def fuzz(data: bytes) -> None:
        assert_healthy(gw, module_upstream, talk(gw.port, data))

    fuzz()
    assert_still_serving(gw)


def test_mutated_requests(gw: GatewayProcess, module_upstream: RecordingUpstream) -> None:
    @FUZZ
    @given(data=mutated_requests())
    def fuzz(data: bytes) -> None:
        assert_healthy(gw, module_upstream, talk(gw.port, data))

    fuzz()
    assert_still_serving(gw)
    assert len([r for r in module_upstream.requests if r.complete]) > 10, "too few fuzz requests were valid"
    # "GET /smuggled HTTP/1.1" is appended without a Host, so it is never a valid request of its own.
    assert all(request.path != b"/smuggled" for request in module_upstream.requests)
