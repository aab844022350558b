"""An audit intake for the emitters' tests, written from the intake contract (docs/audit.md), not from
the collector: ``POST /v1/events`` over real TLS, NDJSON, a client certificate of the trust domain or
the emit token, 200 with accepted/duplicates/rejected, 503 when told to be unavailable, no answer at
all when told to hang. It keeps what it accepted, in arrival order, with the origin it authenticated.

``Receiver`` runs in the caller's event loop (in-process emitters); ``ThreadedReceiver`` runs one on
its own loop in a thread, for emitters in other processes (a gateway, a sidecar). ``intake_pki``
writes what the emitters trust: the collector's local CA at ``state_dir/audit/tls/ca.pem``, its
server certificate, and the emit token at ``state_dir/audit/emit.token`` (0600).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httptools
from certs import TestCA

from garrison.events.schema import Event, EventError
from garrison.pki.identity import spiffe_id

TD = "shop.local"


@dataclass
class IntakePki:
    ca: TestCA | None
    cert: Path
    key: Path
    token: str
    client_ca: Path | None = None  # the mesh bundle client certificates chain to


def intake_pki(state_dir: Path, token: str | None = None, ca: TestCA | None = None) -> IntakePki:
    """The collector's TLS (a CA of its own unless ``ca`` is given) and emit token under ``state_dir``."""
    tls = state_dir / "audit" / "tls"
    tls.mkdir(parents=True, exist_ok=True)
    ca = ca or TestCA.create("Test audit CA")
    ca.write(tls / "ca.pem")
    cert, key = ca.issue(
        tls,
        "server",
        common_name="audit",
        uris=(f"spiffe://{TD}/audit",),
        dns=("localhost",),
        ips=("127.0.0.1",),
        usage=ssl_server_usage(),
    )
    return IntakePki(ca, cert, key, write_token(state_dir, token))


def write_token(state_dir: Path, token: str | None = None) -> str:
    """The emit token, as the collector leaves it at ``state_dir/audit/emit.token`` (0600)."""
    token = token or secrets.token_urlsafe(32)
    token_file = state_dir / "audit" / "emit.token"
    token_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(token + "\n")
    return token


def ssl_server_usage() -> Any:
    from cryptography.x509.oid import ExtendedKeyUsageOID

    return ExtendedKeyUsageOID.SERVER_AUTH


@dataclass
class Batch:
    origin: str
    ids: list[str]
    authorization: bool


@dataclass
class Receiver:
    """See the module docstring. ``mode``: "ok", "unavailable" (503) or "hang" (never answers)."""

    pki: IntakePki
    client_ca: Path | None = None
    mode: str = "ok"
    reject_types: set[str] = field(default_factory=set)
    events: list[Event] = field(default_factory=list)
    batches: list[Batch] = field(default_factory=list)
    requests: int = 0
    connections: int = 0
    refused: dict[int, int] = field(default_factory=dict)
    _seen: set[str] = field(default_factory=set)
    _server: asyncio.Server | None = None
    _release: asyncio.Event | None = None
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)
    port: int = 0

    def context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(self.pki.cert), str(self.pki.key))
        if self.client_ca is not None:
            context.verify_mode = ssl.CERT_OPTIONAL  # a certificate, or the token
            context.load_verify_locations(cafile=str(self.client_ca))
        return context

    async def start(self, port: int = 0) -> int:
        self._release = asyncio.Event()
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", port, ssl=self.context())
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        """Stop listening and drop every connection (the collector went away)."""
        if self._release is not None:
            self._release.set()
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.transport.abort()
            await self._server.wait_closed()
            self._server = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def ids(self) -> list[str]:
        return [event.id for event in self.events]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        self.connections += 1
        try:
            while await self._one(reader, writer):
                pass
        except (ConnectionError, ssl.SSLError, httptools.HttpParserError, asyncio.IncompleteReadError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        request = _Request()
        parser = httptools.HttpRequestParser(request)
        while not request.done:
            chunk = await reader.read(65536)
            if not chunk:
                return False
            parser.feed_data(chunk)
        self.requests += 1
        if self.mode == "hang":
            assert self._release is not None
            await self._release.wait()
            return False
        origin = self._origin(writer, request.headers.get(b"authorization"))
        if request.url != b"/v1/events" or parser.get_method() != b"POST":
            status, body = 404, {"error": "not found"}
        elif origin is None:
            status, body = 401, {"error": "no valid credential"}
        elif self.mode == "unavailable":
            status, body = 503, {"error": "the log cannot be written"}
        else:
            status, body = 200, self._take(bytes(request.body), origin, b"authorization" in request.headers)
        if status != 200:
            self.refused[status] = self.refused.get(status, 0) + 1
        data = json.dumps(body).encode()
        writer.write(
            b"HTTP/1.1 %d X\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
            % (status, len(data), data)
        )
        await writer.drain()
        return True

    def _origin(self, writer: asyncio.StreamWriter, authorization: bytes | None) -> str | None:
        ssl_object = writer.get_extra_info("ssl_object")
        found = spiffe_id(ssl_object.getpeercert()) if ssl_object is not None else None
        if found is not None and found.startswith(f"spiffe://{TD}/"):
            return found
        if authorization == f"Bearer {self.pki.token}".encode():
            return "token"
        return None

    def _take(self, body: bytes, origin: str, authorization: bool) -> dict[str, Any]:
        accepted, duplicates, rejected, ids = 0, 0, [], []
        for number, line in enumerate(body.split(b"\n")[:-1], 1):
            try:
                event = Event.from_json(line)
            except EventError as exc:
                rejected.append({"line": number, "error": str(exc)})
                continue
            if event.type in self.reject_types:
                rejected.append({"line": number, "error": "refused by the test"})
                continue
            if event.id in self._seen:
                duplicates += 1
                continue
            self._seen.add(event.id)
            self.events.append(event)
            ids.append(event.id)
            accepted += 1
        self.batches.append(Batch(origin, ids, authorization))
        return {"accepted": accepted, "duplicates": duplicates, "rejected": rejected}


class _Request:
    def __init__(self) -> None:
        self.url = b""
        self.headers: dict[bytes, bytes] = {}
        self.body = bytearray()
        self.done = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.lower()] = value

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.done = True


class ThreadedReceiver:
    """A ``Receiver`` on its own event loop in a daemon thread."""

    def __init__(self, receiver: Receiver) -> None:
        self.receiver = receiver
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self) -> ThreadedReceiver:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.receiver.start(), self.loop).result(10)
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.receiver.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()

    def events(self) -> list[Event]:
        return list(self.receiver.events)
