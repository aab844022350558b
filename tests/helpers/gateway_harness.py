"""Real servers for gateway integration tests: a recording upstream, a gateway process, a raw client.

Imported by ``tests/conftest.py`` (which puts this directory on ``sys.path``) and by the test modules.

- ``RecordingUpstream``: an HTTP/1.1 server on 127.0.0.1:0, run by its own asyncio loop in a thread.
  It parses every request with llhttp (httptools) and records the exact bytes of its head, its
  decoded body and its framing, so a test can assert precisely what the gateway forwarded and how
  many distinct requests arrived. What it answers is a ``Reply`` (status, framing, size, delay, reset).
- ``GatewayProcess``: ``garrison gateway -c FILE --ready-file PATH`` started with ``subprocess``.
- ``RawClient``: a socket that sends exact bytes and reads responses, parsed with llhttp.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import random
import re
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httptools
import pytest
import yaml
from ports import reserved_port
from waiting import poll_until, wait_until

from garrison.core.ready import read_ready

GARRISON = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "garrison"
DEFAULT_BODY = b'{"ok":true}'


# -- deterministic payloads -------------------------------------------------------------------------
_PAYLOADS: dict[int, bytes] = {}
_PAYLOAD_LOCK = threading.Lock()


def payload(size: int) -> bytes:
    """``size`` pseudo-random bytes, the same for every caller (cached): big bodies to hash."""
    with _PAYLOAD_LOCK:
        data = _PAYLOADS.get(size)
        if data is None:
            data = _PAYLOADS[size] = random.Random(size).randbytes(size)
        return data


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- recording upstream -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Reply:
    """What the recording upstream answers.

    ``framing``: ``length`` (Content-Length), ``chunked``, or ``close`` (no length: the close ends it).
    ``size``: answer with ``payload(size)`` instead of ``body``. ``delay``: seconds before answering.
    ``reset``: answer nothing and reset the connection (RST).
    """

    status: int = 200
    body: bytes = DEFAULT_BODY
    headers: tuple[tuple[bytes, bytes], ...] = ((b"content-type", b"application/json"),)
    framing: str = "length"
    size: int | None = None
    delay: float = 0.0
    reset: bool = False
    chunk_size: int = 64 * 1024


@dataclass
class RecordedRequest:
    """One request as the upstream saw it."""

    connection: int
    method: bytes
    target: bytes
    version: str
    head: bytes  # request line and header block exactly as received, final CRLF CRLF included
    headers: list[tuple[bytes, bytes]]
    body: bytes = b""
    wire_body: bytes = b""  # the body bytes as framed on the wire (chunk sizes included)
    complete: bool = False

    @property
    def path(self) -> bytes:
        return self.target.split(b"?", 1)[0]

    def header_values(self, name: str) -> list[bytes]:
        wanted = name.lower().encode()
        return [value for key, value in self.headers if key.lower() == wanted]

    def header(self, name: str) -> bytes | None:
        values = self.header_values(name)
        assert len(values) <= 1, f"{name} appears {len(values)} times in {self.head!r}"
        return values[0] if values else None

    def header_names(self) -> set[bytes]:
        return {key.lower() for key, _ in self.headers}


def _chunked_wire_length(buf: bytearray, start: int) -> int:
    """Length of a complete chunked body (trailers included) starting at ``start`` in ``buf``."""
    pos = start
    while True:
        eol = buf.index(b"\r\n", pos)
        size = int(bytes(buf[pos:eol]).split(b";", 1)[0].strip(), 16)
        pos = eol + 2
        if size == 0:
            while True:
                eol = buf.index(b"\r\n", pos)
                if eol == pos:
                    return eol + 2 - start
                pos = eol + 2
        pos += size + 2


class _UpstreamConnection(asyncio.Protocol):
    def __init__(self, server: RecordingUpstream, number: int) -> None:
        self.server = server
        self.number = number
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.raw = bytearray()  # bytes of the message being parsed (and any that follow it)
        self.current: RecordedRequest | None = None
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = bytearray()
        self.head_end = 0

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server._transports.add(transport)  # type: ignore[arg-type]

    def connection_lost(self, exc: Exception | None) -> None:
        self.server._transports.discard(self.transport)  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        self.raw += data
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass  # the head is recorded; an upstream of ours never switches protocols
        except httptools.HttpParserError as exc:
            self.server._record_error(f"{type(exc).__name__}: {exc}", bytes(self.raw[:2000]))
            if self.transport is not None:
                self.transport.close()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = []
        self.body = bytearray()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        start = 0
        while self.raw[start : start + 2] == b"\r\n":
            start += 2  # llhttp skips empty lines before a request line
        end = self.raw.index(b"\r\n\r\n", start) + 4
        self.head_end = end
        request = RecordedRequest(
            connection=self.number,
            method=self.parser.get_method(),
            target=self.url,
            version=self.parser.get_http_version(),
            head=bytes(self.raw[start:end]),
            headers=list(self.headers),
        )
        self.current = request
        self.server._record(request)

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        request = self.current
        assert request is not None
        request.body = bytes(self.body)
        names = {key.lower(): value for key, value in request.headers}
        if names.get(b"transfer-encoding", b"").lower() == b"chunked":
            wire = _chunked_wire_length(self.raw, self.head_end)
        else:
            wire = int(names.get(b"content-length", b"0") or 0)
        request.wire_body = bytes(self.raw[self.head_end : self.head_end + wire])
        del self.raw[: self.head_end + wire]
        request.complete = True
        self.current = None
        keep_alive = bool(self.parser.should_keep_alive())
        reply = self.server.reply_for(request)
        if reply.delay:
            handle = self.server.loop.call_later(reply.delay, self._send, request, reply, keep_alive)
            self.server._timers.append(handle)
        else:
            self._send(request, reply, keep_alive)

    def _send(self, request: RecordedRequest, reply: Reply, keep_alive: bool) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if reply.reset:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
            return
        body = payload(reply.size) if reply.size is not None else reply.body
        head_only = request.method == b"HEAD" or reply.status in (204, 304)
        lines = [b"HTTP/1.1 %d Whatever\r\n" % reply.status, b"server: recorder/1.0\r\n"]
        lines.append(b"x-powered-by: recorder\r\n")
        lines.extend(b"%s: %s\r\n" % pair for pair in reply.headers)
        if reply.framing == "length":
            lines.append(b"content-length: %d\r\n" % len(body))
        elif reply.framing == "chunked":
            lines.append(b"transfer-encoding: chunked\r\n")
        close = reply.framing == "close" or not keep_alive
        if close:
            lines.append(b"connection: close\r\n")
        lines.append(b"\r\n")
        transport.write(b"".join(lines))
        if not head_only:
            if reply.framing == "chunked":
                step = reply.chunk_size
                for offset in range(0, len(body), step):
                    piece = body[offset : offset + step]
                    transport.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                transport.write(b"0\r\n\r\n")
            else:
                transport.write(body)
        if close:
            transport.close()


class RecordingUpstream:
    """A threaded asyncio HTTP/1.1 server that records every request it gets."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name="recording-upstream", daemon=True)
        self.port = 0
        self.reply = Reply()
        self.handler: Callable[[RecordedRequest], Reply] | None = None
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        self._errors: list[tuple[str, bytes]] = []
        self._connections = 0
        self._transports: set[asyncio.Transport] = set()
        self._timers: list[asyncio.TimerHandle] = []
        self._server: asyncio.Server | None = None

    # lifecycle
    def start(self) -> RecordingUpstream:
        self.thread.start()
        self.port = asyncio.run_coroutine_threadsafe(self._listen(), self.loop).result(10)
        return self

    def stop(self) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), self.loop).result(10)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    async def _listen(self) -> int:
        # A deep backlog: a burst of new upstream connections (tests/helpers/churn.py opens
        # hundreds at once) must not overflow it, or the retransmitted SYN misses connect_timeout.
        self._server = await self.loop.create_server(self._new_connection, "127.0.0.1", 0, backlog=1024)
        return int(self._server.sockets[0].getsockname()[1])

    def _new_connection(self) -> _UpstreamConnection:
        with self._lock:
            self._connections += 1
            number = self._connections
        return _UpstreamConnection(self, number)

    async def _shutdown(self) -> None:
        for timer in self._timers:
            timer.cancel()
        if self._server is not None:
            self._server.close()
        for transport in list(self._transports):
            transport.abort()
        for _ in range(5):
            await asyncio.sleep(0)  # let connection_lost callbacks run
        if self._server is not None:
            await self._server.wait_closed()

    # recording
    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(request)

    def _record_error(self, error: str, data: bytes) -> None:
        with self._lock:
            self._errors.append((error, data))

    def reply_for(self, request: RecordedRequest) -> Reply:
        handler = self.handler
        return handler(request) if handler is not None else self.reply

    # what tests read
    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    @property
    def errors(self) -> list[tuple[str, bytes]]:
        with self._lock:
            return list(self._errors)

    @property
    def connections(self) -> int:
        with self._lock:
            return self._connections

    def reset(self) -> None:
        """Forget what was recorded and go back to the default reply (between tests)."""
        with self._lock:
            self._requests.clear()
            self._errors.clear()
            self._connections = 0
        self.reply = Reply()
        self.handler = None

    def wait_for_requests(
        self, count: int, timeout: float = 3.0, complete: bool = True
    ) -> list[RecordedRequest]:
        def enough() -> list[RecordedRequest] | None:
            got = [r for r in self.requests if r.complete or not complete]
            return got if len(got) >= count else None

        def what() -> str:
            return f"{count} request(s); the upstream got {len(self.requests)}"

        return wait_until(enough, timeout, what=what)

    def settle(self, quiet: float = 0.15) -> list[RecordedRequest]:
        """Wait until nothing new arrives for ``quiet`` seconds; return every request recorded."""
        before = -1
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            now = len(self.requests)
            if now == before:
                break
            before = now
            time.sleep(quiet)
        return self.requests


def forwarded_elements(value: bytes) -> list[list[tuple[str, str]]]:
    """RFC 7239 ``Forwarded``: comma-separated elements of ``;``-separated pairs (quoted strings kept)."""
    tokens = re.findall(rb'"(?:[^"\\]|\\.)*"|[^,;=]+|[,;=]', value)
    elements: list[list[tuple[str, str]]] = [[]]
    key: bytes | None = None
    expect_value = False
    for token in tokens:
        if token == b",":
            elements.append([])
        elif token == b"=":
            expect_value = True
        elif token == b";":
            continue
        elif expect_value:
            assert key is not None
            elements[-1].append((key.strip().decode().lower(), token.strip().strip(b'"').decode()))
            key, expect_value = None, False
        else:
            key = token
    return elements


def forwarded_params(request: RecordedRequest) -> dict[str, str]:
    """The parameters of the single ``Forwarded`` element the upstream received (fails on more)."""
    value = request.header("forwarded")
    assert value is not None, request.head
    elements = forwarded_elements(value)
    assert len(elements) == 1, value
    params = dict(elements[0])
    assert len(params) == len(elements[0]), f"a parameter appears twice: {value!r}"
    return params


# -- gateway process --------------------------------------------------------------------------------
def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def base_config(directory: Path, upstream_port: int) -> dict[str, Any]:
    """The common test config: plaintext, small limits, one recording service, a catch-all route."""
    return {
        "state_dir": str(directory / "state"),
        "gateway": {
            "listen": "127.0.0.1:0",
            "tls": {"insecure_disable": True},
            "admin": {"listen": "127.0.0.1:0"},
            "access_log": {"path": str(directory / "access.log")},
            "limits": {
                "max_body": "1KiB",
                "max_header_bytes": "4KiB",
                "max_headers": 20,
                "header_timeout": "0.5s",
                "body_timeout": "0.5s",
            },
            "trusted_proxies": ["10.0.0.0/8"],
            "drain_timeout": "1s",
            "watch_config": False,
        },
        "services": {
            "rec": {
                "targets": [f"http://127.0.0.1:{upstream_port}"],
                "read_timeout": "1s",
                "connect_timeout": "0.5s",
            }
        },
        "routes": [
            {
                "match": {"path": "/", "prefix": True},
                "service": "rec",
                "auth": {"require": "none"},
                "name": "catchall",
            },
            {
                "match": {"path": "/admin", "prefix": True},
                "service": "rec",
                "auth": {"require": "none"},
                "name": "admin",
            },
        ],
    }


def stop_process(proc: subprocess.Popen[bytes] | None, grace: float) -> int | None:
    """SIGTERM, then SIGKILL after ``grace`` seconds; the exit code (None if never started)."""
    if proc is None:
        return None
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return proc.returncode


class GatewayProcess:
    """A ``garrison gateway`` process started on port 0; stopped with SIGTERM (then SIGKILL)."""

    def __init__(self, directory: Path, config: dict[str, Any]) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.config = config
        self.config_path = directory / "garrison.yaml"
        self.ready_path = directory / "ready.json"
        self.stderr_path = directory / "gateway.stderr"
        self.stdout_path = directory / "gateway.stdout"
        self.access_log_path = Path(config["gateway"].get("access_log", {}).get("path", "-"))
        self.state_dir = Path(config["state_dir"])
        self.proc: subprocess.Popen[bytes] | None = None
        self.listeners: dict[str, str] = {}

    def start(self, timeout: float = 60.0) -> GatewayProcess:  # a ceiling for a loaded machine
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        self.ready_path.unlink(missing_ok=True)
        with open(self.stderr_path, "wb") as err, open(self.stdout_path, "wb") as out:
            self.proc = subprocess.Popen(
                [str(GARRISON), "gateway", "-c", str(self.config_path), "--ready-file", str(self.ready_path)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                cwd=self.directory,
            )
        deadline = time.monotonic() + timeout
        while (ready := read_ready(self.ready_path)) is None:
            if self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"gateway exited with {self.proc.returncode}:\n{self.stderr_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"gateway not ready after {timeout} s:\n{self.stderr_tail()}")
            time.sleep(0.02)
        self.listeners = ready.listeners
        return self

    def stop(self) -> int | None:
        # A bound on a hang, not a measurement: on a loaded machine a `workers: 2` supervisor with a
        # mesh identity has been seen to need just over 5 s to stop its workers and exit.
        return stop_process(self.proc, grace=10.0)

    # addresses
    def _port(self, name: str) -> int:
        return int(self.listeners[name].rsplit(":", 1)[1])

    @property
    def port(self) -> int:
        return self._port("gateway")

    @property
    def admin_port(self) -> int:
        return self._port("admin")

    @property
    def admin_token(self) -> str:
        """The admin token the gateway created (0600) under its state dir."""
        return (self.state_dir / "admin.token").read_text().strip()

    def admin_headers(self) -> dict[str, str]:
        """What an authorized admin call sends: the token, and the listener's own address as Host."""
        return {"Authorization": f"Bearer {self.admin_token}", "Host": f"127.0.0.1:{self.admin_port}"}

    @property
    def redirect_port(self) -> int:
        return self._port("redirect")

    @property
    def scheme(self) -> str:
        return "http" if self.config["gateway"].get("tls", {}).get("insecure_disable") else "https"

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    @property
    def ca_path(self) -> Path:
        return self.state_dir / "tls" / "ca.pem"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # output
    def stderr_text(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stderr_tail(self, lines: int = 30) -> str:
        return "\n".join(self.stderr_text().splitlines()[-lines:])

    def access_log_lines(self) -> list[dict[str, Any]]:
        """Every access-log line so far, each parsed as JSON (a line that is not JSON fails the test)."""
        try:
            text = self.access_log_path.read_text()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def wait_access_log(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 3.0
    ) -> dict[str, Any]:
        """The first access-log line matching ``predicate`` (the log is flushed every 0.1 s)."""

        def find() -> dict[str, Any] | None:
            return next((line for line in self.access_log_lines() if predicate(line)), None)

        def what() -> str:
            return f"a matching access-log line in {self.access_log_lines()!r}"

        return wait_until(find, timeout, what=what)

    def log_for(self, request_id: str) -> dict[str, Any]:
        return self.wait_access_log(lambda line: line.get("request_id") == request_id)


# -- raw client -------------------------------------------------------------------------------------
@dataclass
class Response:
    status: int
    version: str
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    raw_head: bytes = b""

    def header_values(self, name: str) -> list[bytes]:
        wanted = name.lower().encode()
        return [value for key, value in self.headers if key.lower() == wanted]

    def header(self, name: str) -> bytes | None:
        values = self.header_values(name)
        assert len(values) <= 1, f"{name} appears {len(values)} times in {self.raw_head!r}"
        return values[0] if values else None

    def json(self) -> Any:
        return json.loads(self.body)


class _ResponseCollector:
    """httptools callbacks that turn a byte stream into ``Response`` objects."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.done: list[Response] = []
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []

    def on_message_begin(self) -> None:
        self._headers = []
        self._body = []

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        parser = self.parser
        self.done.append(
            Response(parser.get_status_code(), parser.get_http_version(), self._headers, b"".join(self._body))
        )


_HEAD_LINE = re.compile(rb"HTTP/(\d\.\d) (\d{3}) [^\r\n]*\r\n")


def parse_head(raw: bytes) -> Response:
    """A response head (without body) parsed by hand, for HEAD requests llhttp cannot frame."""
    match = _HEAD_LINE.match(raw)
    assert match is not None, f"not a response head: {raw[:200]!r}"
    headers = []
    for line in raw[match.end() :].split(b"\r\n"):
        if line:
            name, _, value = line.partition(b":")
            headers.append((name.lower(), value.strip()))
    return Response(int(match.group(2)), match.group(1).decode(), headers, b"", raw)


class RawClient:
    """One client connection that sends exact bytes and reads what comes back."""

    def __init__(
        self,
        port: int,
        *,
        timeout: float = 3.0,
        tls: ssl.SSLContext | None = None,
        server_hostname: str | None = "localhost",
    ) -> None:
        self.timeout = timeout
        sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        if tls is not None:
            try:
                sock = tls.wrap_socket(sock, server_hostname=server_hostname)
            except BaseException:
                sock.close()
                raise
        self.sock: socket.socket = sock
        self.buffer = bytearray()  # everything received and not yet consumed by read_head()
        self.received = bytearray()  # everything received
        self.eof = False
        self.collector = _ResponseCollector()
        self.parse_error: Exception | None = None

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _recv(self, timeout: float) -> bool:
        """Read once; False on timeout or EOF. A reset counts as EOF (the peer closed)."""
        if self.eof:
            return False
        self.sock.settimeout(max(timeout, 0.001))
        try:
            data = self.sock.recv(256 * 1024)
        except TimeoutError:
            return False
        except (ConnectionResetError, BrokenPipeError):
            data = b""
        except ssl.SSLError:
            data = b""
        if not data:
            self.eof = True
            return False
        self.received += data
        self.buffer += data
        if self.parse_error is None:
            try:
                self.collector.parser.feed_data(data)
            except httptools.HttpParserError as exc:
                self.parse_error = exc
        return True

    def read_response(self, timeout: float | None = None) -> Response:
        """The next complete response (llhttp framing); fails the test if none arrives in time."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while not self.collector.done and not self.eof:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._recv(left)
        assert self.parse_error is None, f"unparseable response: {self.parse_error}: {bytes(self.received)!r}"
        assert self.collector.done, f"no complete response (eof={self.eof}): {bytes(self.received[:500])!r}"
        response = self.collector.done.pop(0)
        self.buffer.clear()
        return response

    def read_head(self, timeout: float | None = None) -> Response:
        """Read one response head only (for HEAD requests); the body, if any, stays unread."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while b"\r\n\r\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not self._recv(left):
                break
        end = self.buffer.find(b"\r\n\r\n")
        assert end >= 0, f"no response head: {bytes(self.buffer[:500])!r}"
        head = bytes(self.buffer[: end + 4])
        del self.buffer[: end + 4]
        self.collector = _ResponseCollector()  # llhttp cannot frame a HEAD response; start again
        return parse_head(head)

    def read_until_closed(self, timeout: float | None = None) -> bytes:
        """Everything until the peer closes; fails if it stays open past the timeout."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while not self.eof:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._recv(left)
        assert self.eof, f"connection still open after the timeout; got {bytes(self.received[:300])!r}"
        return bytes(self.received)

    def closed_by_peer(self, timeout: float = 1.0) -> bool:
        """True if the peer closes within ``timeout`` (any unread bytes are consumed)."""
        deadline = time.monotonic() + timeout
        while not self.eof:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._recv(left)
        return True


def one_request(port: int, data: bytes, timeout: float = 3.0) -> Response:
    """Send ``data`` on a fresh connection and return the first response."""
    with RawClient(port, timeout=timeout) as client:
        client.send(data)
        return client.read_response()


def get(
    path: str, host: str = "test.local", headers: dict[str, str] | None = None, method: str = "GET"
) -> bytes:
    """A small well-formed request."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


@contextlib.contextmanager
def running_gateway(directory: Path, config: dict[str, Any]) -> Iterator[GatewayProcess]:
    gateway = GatewayProcess(directory, config).start()
    try:
        yield gateway
    finally:
        gateway.stop()


def tls_client_context(ca: Path, **versions: ssl.TLSVersion) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca))
    for attribute, value in versions.items():
        setattr(context, attribute, value)
    return context


__all__ = [
    "DEFAULT_BODY",
    "GARRISON",
    "GatewayProcess",
    "RawClient",
    "RecordedRequest",
    "RecordingUpstream",
    "Reply",
    "Response",
    "base_config",
    "deep_merge",
    "forwarded_elements",
    "forwarded_params",
    "get",
    "one_request",
    "parse_head",
    "payload",
    "poll_until",
    "running_gateway",
    "sha256",
    "stop_process",
    "tls_client_context",
    "wait_until",
]


# -- plain HTTP calls and the CLI -------------------------------------------------------------------
def http_call(
    port: int, path: str, headers: dict[str, str] | None = None, method: str = "GET"
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP request over a fresh connection: (status, lower-cased headers, body); 4xx/5xx included."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            body = response.read()
            return int(response.status), {k.lower(): v for k, v in response.headers.items()}, body
    except urllib.error.HTTPError as exc:
        body = exc.read()
        return int(exc.code), {k.lower(): v for k, v in exc.headers.items()}, body


def garrison_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the `garrison` command line as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "garrison", *args], capture_output=True, text=True, timeout=60, check=False
    )


class ThrowawayRedis:
    """A redis-server of the test's own, to kill and restart mid-run on the same port.

    The port is held (``ports.reserved_port``) from ``start()`` to ``stop()``: while the server is killed
    connections to it are refused, and nobody else can take it before the restart.
    """

    def __init__(self) -> None:
        self._reservation: contextlib.ExitStack | None = None
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            if os.environ.get("CI") == "true":
                pytest.fail("redis-server is not installed (CI must run these tests)")
            pytest.skip("redis-server is not installed")
        if self._reservation is None:
            self._reservation = contextlib.ExitStack()
            self.port = self._reservation.enter_context(reserved_port())
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(self._answers, timeout=10, what="redis-server to answer PING")

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        """Kill the server mid-run; its port stays held (and refuses connections) until ``stop()``."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None

    def stop(self) -> None:
        """Kill the server and give its port back."""
        self.kill()
        if self._reservation is not None:
            self._reservation.close()
            self._reservation = None
