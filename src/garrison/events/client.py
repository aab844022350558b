"""The emitter's side of the intake: ``POST /v1/events`` on one keep-alive HTTPS connection.

Hand-built request and httptools (llhttp) for the response, not httpx: the emitter runs inside the
mesh sidecar, whose resident memory is held under 40 MB, and httpx with its dependencies costs
several MB there for one fixed request shape. The answer is the intake contract's
(/work/prompts/contract.md, docs/audit.md): 200 with ``accepted``, ``duplicates`` and ``rejected``
lines once the events are durable; 503 when nothing could be stored; 401 for a credential refused.

The credential is the component's workload certificate when it has one (``client_context``, asked
again for each connection: it rotates), and then the collector must present the SPIFFE ID the mesh
CA gives it (``spiffe://<td>/audit``); else the emit token (``state_dir/audit/emit.token``, read at
each connection: a missing file means the collector has not started yet) and a context that trusts
the intake's CA (settings.py says which) with host-name checking.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httptools

from garrison.admin.auth import AdminTokenError, read_admin_token
from garrison.events.settings import EmitterSettings
from garrison.pki.identity import spiffe_id

__all__ = ["Answer", "IntakeClient", "IntakeUnavailable"]

CONNECT_TIMEOUT = 10.0
ANSWER_TIMEOUT = 30.0  # the collector answers after its fsync: a slow disk is not a dead collector
MAX_ANSWER = 1024 * 1024


class IntakeUnavailable(Exception):
    """The batch was not taken: no connection, no credential, a timeout, or a 503/401/5xx answer.
    The emitter keeps the batch (spool) and tries again later. The message carries no secret."""


@dataclass
class Answer:
    """A 2xx/4xx answer the emitter acts on: ``rejected`` lines are never sent again."""

    status: int
    accepted: int = 0
    duplicates: int = 0
    rejected: list[dict[str, Any]] = field(default_factory=list)


class _Response:
    """httptools callbacks for one response. Keep-alive is read in ``on_message_complete``: once the
    message is complete llhttp clears its flags (the content-length among them), and a response without
    one reads as "until EOF", i.e. never keep-alive: every batch would open a new TLS connection."""

    def __init__(self) -> None:
        self.body = bytearray()
        self.done = False
        self.keep_alive = False
        self.parser: httptools.HttpResponseParser | None = None

    def on_body(self, body: bytes) -> None:
        if len(self.body) + len(body) > MAX_ANSWER:
            raise IntakeUnavailable("the collector's answer is too large")
        self.body += body

    def on_message_complete(self) -> None:
        self.done = True
        self.keep_alive = self.parser is not None and bool(self.parser.should_keep_alive())


ContextSource = Callable[[], ssl.SSLContext | None]


class IntakeClient:
    """One connection to the intake, opened when needed and kept alive between batches."""

    def __init__(self, settings: EmitterSettings, client_context: ContextSource | None = None) -> None:
        self.settings = settings
        self._client_context = client_context
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._token: str | None = None
        self._head = b""
        self.answer_timeout = ANSWER_TIMEOUT

    def __repr__(self) -> str:  # the token never appears in a repr
        return f"IntakeClient({self.settings.url!r})"

    async def post(self, body: bytes) -> Answer:
        """Send one NDJSON body; the answer, or IntakeUnavailable (the connection is then closed)."""
        try:
            if self._writer is None or self._writer.is_closing():
                await self._connect()
            assert self._writer is not None and self._reader is not None
            self._writer.write(self._head + b"content-length: %d\r\n\r\n" % len(body) + body)
            async with asyncio.timeout(self.answer_timeout):
                await self._writer.drain()
                status, data, keep_alive = await self._read_answer(self._reader)
        except IntakeUnavailable:
            await self.close()
            raise
        except (OSError, TimeoutError, ssl.SSLError, httptools.HttpParserError, EOFError) as exc:
            await self.close()
            raise IntakeUnavailable(f"{type(exc).__name__}: {exc}") from None
        if not keep_alive:
            await self.close()
        return self._judge(status, data)

    def _judge(self, status: int, data: bytes) -> Answer:
        if status == 200:
            try:
                body = json.loads(data)
                rejected = body.get("rejected") or []
                return Answer(200, int(body.get("accepted", 0)), int(body.get("duplicates", 0)), rejected)
            except (ValueError, TypeError, AttributeError):
                raise IntakeUnavailable("the collector's answer is not the intake's JSON") from None
        if status == 401:
            self._token = None  # read again: the collector may have made a new one
            raise IntakeUnavailable("the collector refused the credential (401)")
        if status in (400, 413):
            return Answer(status)  # the batch itself is refused: sending it again changes nothing
        raise IntakeUnavailable(f"the collector answered {status}")

    async def _read_answer(self, reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
        response = _Response()
        parser = response.parser = httptools.HttpResponseParser(response)
        while not response.done:
            chunk = await reader.read(65536)
            if not chunk:
                raise EOFError("the collector closed the connection")
            parser.feed_data(chunk)
        return parser.get_status_code(), bytes(response.body), response.keep_alive

    async def _connect(self) -> None:
        settings = self.settings
        context, authorization = self._credential()
        host = settings.host
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(
                host,
                settings.port,
                ssl=context,
                server_hostname=host if context is not None else None,
            ),
            CONNECT_TIMEOUT,
        )
        self._reader, self._writer = reader, writer
        if context is not None and not context.check_hostname:
            ssl_object = writer.get_extra_info("ssl_object")
            presented = spiffe_id(ssl_object.getpeercert()) if ssl_object is not None else None
            if presented != settings.collector_id:
                raise IntakeUnavailable(
                    f"the intake presented {presented!r}, not the collector ({settings.collector_id})"
                )
        self._head = b"POST /v1/events HTTP/1.1\r\nhost: %s\r\ncontent-type: application/x-ndjson\r\n%s" % (
            settings.authority.encode(),
            authorization,
        )

    def _credential(self) -> tuple[ssl.SSLContext | None, bytes]:
        """The TLS context to connect with and the Authorization line (empty with a certificate)."""
        settings = self.settings
        if not settings.tls:
            return None, self._bearer()
        workload = self._client_context() if self._client_context is not None else None
        if workload is not None and settings.mesh_ca_issues():
            return workload, b""  # verifies the mesh bundle; the collector's SPIFFE ID is checked above
        trust = settings.trust_file()
        context = ssl.create_default_context(cafile=str(trust) if trust is not None else None)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        return context, self._bearer()

    def _bearer(self) -> bytes:
        if self._token is None:
            try:
                self._token = read_admin_token(self.settings.token_path)
            except AdminTokenError as exc:
                raise IntakeUnavailable(f"no emit token yet: {exc}") from None
        return b"authorization: Bearer %s\r\n" % self._token.encode()

    async def close(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is None:
            return
        writer.close()
        try:
            async with asyncio.timeout(1.0):
                await writer.wait_closed()
        except (OSError, TimeoutError, ssl.SSLError):
            pass
