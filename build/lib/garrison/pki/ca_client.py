"""The workload's side of the CA's API: one HTTPS request per connection, the CA's identity checked first.

Small on purpose: the CA answers one request per connection with a ``content-length``, and the client
must check that the server is the CA (``spiffe://<td>/ca``, chain under the bundle) BEFORE it sends a
join token, which a general-purpose HTTP client does not let one do between handshake and request.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from garrison.pki.workload_tls import PeerIdentityMismatch, peer_spiffe_id

__all__ = ["CaAnswer", "CaClient", "CaUnreachable"]

MAX_ANSWER = 1024 * 1024


class CaUnreachable(Exception):
    """No answer from the CA (connection, TLS or protocol failure); worth retrying."""


@dataclass(frozen=True)
class CaAnswer:
    status: int
    body: bytes

    def json(self) -> dict[str, Any]:
        payload = json.loads(self.body)
        if not isinstance(payload, dict):
            raise CaUnreachable("the CA answered something other than a JSON object")
        return payload

    def message(self) -> str:
        try:
            return str(self.json().get("message", self.status))
        except (ValueError, CaUnreachable):
            return f"HTTP {self.status}"


class CaClient:
    """Requests to the CA at ``url`` (https://host:port)."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme != "https" or parts.hostname is None:
            raise ValueError(f"the CA's url must be https://host:port, got {url!r}")
        self.host = parts.hostname
        self.port = parts.port or 443

    async def request(
        self,
        method: str,
        path: str,
        context: ssl.SSLContext,
        *,
        body: dict[str, str] | None = None,
        expect_ca: str | None = None,
        timeout: float = 30.0,
    ) -> CaAnswer:
        """``expect_ca``: the CA's SPIFFE ID; None accepts any ``spiffe://<td>/ca`` (the first join,
        before the trust domain is known). Raises CaUnreachable when there is no answer."""
        try:
            async with asyncio.timeout(timeout):
                return await self._exchange(method, path, context, body, expect_ca)
        except (OSError, TimeoutError, ValueError, IndexError) as exc:
            raise CaUnreachable(f"the CA at {self.host}:{self.port}: {type(exc).__name__}: {exc}") from None

    async def _exchange(
        self,
        method: str,
        path: str,
        context: ssl.SSLContext,
        body: dict[str, str] | None,
        expect_ca: str | None,
    ) -> CaAnswer:
        reader, writer = await asyncio.open_connection(self.host, self.port, ssl=context)
        try:
            found = peer_spiffe_id(writer.get_extra_info("ssl_object"))
            if found is None or not found.endswith("/ca") or (expect_ca is not None and found != expect_ca):
                raise PeerIdentityMismatch(f"the server is {found or 'not a Garrison CA'}, not the CA")
            payload = json.dumps(body).encode() if body is not None else b""
            host = f"[{self.host}]" if ":" in self.host else self.host
            head = (
                f"{method} {path} HTTP/1.1\r\nhost: {host}:{self.port}\r\n"
                f"content-type: application/json\r\ncontent-length: {len(payload)}\r\n"
                "connection: close\r\n\r\n"
            )
            writer.write(head.encode("ascii") + payload)
            raw = await reader.read(MAX_ANSWER + 1)
            while len(raw) <= MAX_ANSWER and (more := await reader.read(MAX_ANSWER + 1 - len(raw))):
                raw += more
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        return _parse(raw)


def _parse(raw: bytes) -> CaAnswer:
    if len(raw) > MAX_ANSWER:
        raise ValueError("the CA's answer is too large")
    head, separator, body = raw.partition(b"\r\n\r\n")
    if not separator:
        raise ValueError("incomplete answer")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length" and len(body) != int(value):
            raise ValueError("truncated answer")
    return CaAnswer(status, body)
