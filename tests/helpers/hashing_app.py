"""An app that hashes the request bodies it gets, for streaming tests: nothing is kept but a digest.

``HashingApp`` is an HTTP/1.1 server on 127.0.0.1:0 run by its own asyncio loop in a thread. Each
request body is fed to SHA-256 as llhttp delivers it; when the request is complete the app answers
``{"sha256", "bytes", "framing"}`` and records an ``Upload``. Two behaviours a test can ask for:

- ``throttle``: after every ``throttle[0]`` body bytes it stops reading for ``throttle[1]`` seconds,
  so the app is slower than the client and a proxy in between has to hold the difference (or apply
  flow control);
- ``early``: it answers at the end of the head with this status and ``connection: close``, then
  reads and drops the body (as nginx answers an oversized upload), and records nothing;
- ``abort_after``: it resets the connection once it has read that many body bytes (a crash).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
from dataclasses import dataclass

import httptools


@dataclass(frozen=True)
class Upload:
    """One request body as the app saw it."""

    target: bytes
    headers: dict[bytes, bytes]  # lower-cased names (the last value of a repeated one)
    sha256: str
    size: int
    framing: str  # "chunked", "length" or "none"


class _AppConnection(asyncio.Protocol):
    def __init__(self, app: HashingApp) -> None:
        self.app = app
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.target = b""
        self.headers: dict[bytes, bytes] = {}
        self.digest = hashlib.sha256()
        self.size = 0
        self.since_pause = 0
        self.answered = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.app.transports.add(transport)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.abort()

    def on_message_begin(self) -> None:
        self.target, self.headers, self.digest, self.size, self.answered = b"", {}, hashlib.sha256(), 0, False

    def on_url(self, url: bytes) -> None:
        self.target += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.lower()] = value

    def on_headers_complete(self) -> None:
        if self.app.early is not None:
            self._answer(self.app.early, {"error": "early"}, close=True)

    def on_body(self, body: bytes) -> None:
        self.digest.update(body)
        self.size += len(body)
        if self.app.abort_after is not None and self.size >= self.app.abort_after:
            if self.transport is not None:
                self.transport.abort()
            return
        throttle = self.app.throttle
        if throttle is None or self.transport is None:
            return
        self.since_pause += len(body)
        if self.since_pause >= throttle[0]:
            self.since_pause = 0
            self.transport.pause_reading()
            self.app.loop.call_later(throttle[1], self._resume)

    def _resume(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def on_message_complete(self) -> None:
        if self.answered:
            if self.transport is not None:
                self.transport.close()
            return
        headers = self.headers
        framing = (
            "chunked"
            if b"transfer-encoding" in headers
            else ("length" if b"content-length" in headers else "none")
        )
        upload = Upload(self.target, headers, self.digest.hexdigest(), self.size, framing)
        self.app.record(upload)
        self._answer(200, {"sha256": upload.sha256, "bytes": upload.size, "framing": framing}, close=False)

    def _answer(self, status: int, document: dict[str, object], close: bool) -> None:
        self.answered = True
        body = json.dumps(document).encode()
        head = b"HTTP/1.1 %d X\r\ncontent-type: application/json\r\ncontent-length: %d\r\n" % (
            status,
            len(body),
        )
        if self.transport is not None:
            self.transport.write(head + (b"connection: close\r\n" if close else b"") + b"\r\n" + body)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.app.transports.discard(self.transport)
        self.transport = None


class HashingApp:
    """See the module docstring."""

    def __init__(
        self,
        throttle: tuple[int, float] | None = None,
        early: int | None = None,
        abort_after: int | None = None,
    ) -> None:
        self.throttle = throttle
        self.early = early
        self.abort_after = abort_after
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="hashing-app", daemon=True)
        self.port = 0
        self.uploads: list[Upload] = []
        self.transports: set[asyncio.BaseTransport] = set()  # open connections, aborted at stop
        self._server: asyncio.Server | None = None

    def start(self) -> HashingApp:
        self.thread.start()
        self.port = asyncio.run_coroutine_threadsafe(self._listen(), self.loop).result(10)
        return self

    async def _listen(self) -> int:
        self._server = await self.loop.create_server(lambda: _AppConnection(self), "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    def record(self, upload: Upload) -> None:
        self.uploads.append(upload)  # appended on the app's thread, read by the test's (GIL)

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
            for transport in list(self.transports):
                transport.abort()
            for _ in range(5):
                await asyncio.sleep(0)  # let connection_lost callbacks run
            if self._server is not None:
                await self._server.wait_closed()

        try:
            asyncio.run_coroutine_threadsafe(close(), self.loop).result(10)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()
