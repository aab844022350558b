"""The HTTP side every shipper shares: one httpx client per receiver, its TLS, its credentials, and
what a whole answer means for the batch it carried.

Credentials come from files named in the config (never inline), read at start and again after a
401 or 403 (a rotated password or key is picked up without a restart); they live in request
headers only, never in a log line, an error or a repr. httpx's exceptions end here: the shipper
sees ``ShipError`` (try again later) and ``TooLarge`` (split the batch).

What an answer means, the same for Loki, Elasticsearch and OTLP: 2xx stored; 413 too large (the
shipper halves the batch); 400 refused for good (the receiver judged the content: an entry too old
for Loki, a malformed body): counted and skipped, never retried, since retrying cannot change the
verdict; everything else (429, 5xx, 401/403, 404, a connection that fails) is an outage or a
fixable misconfiguration, retried with back-off for as long as it lasts: the lag grows, nothing is
dropped.
"""

from __future__ import annotations

import base64
import ssl
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from garrison.audit.pipeline import LoggedEvent
from garrison.config.audit_shipping import ShipperAuth, ShipperTls
from garrison.telemetry import logging as log

__all__ = [
    "Answer",
    "Credentials",
    "Delivery",
    "Receiver",
    "ShipError",
    "ShippingSetupError",
    "TooLarge",
    "whole_answer",
]

MAX_ANSWER = 1024 * 1024  # bytes of an answer we read (a bulk answer for 10,000 items is ~1 MiB)


class ShippingSetupError(Exception):
    """A shipper cannot start (an unreadable credential or CA file); the message names the file."""


class ShipError(Exception):
    """The request failed as a whole and is to be tried again (the message says why, no secrets)."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class TooLarge(Exception):
    """The receiver refused the request's size (413): send the batch in halves."""


@dataclass(slots=True)
class Delivery:
    """What became of a batch: entries to send again, and entries the receiver refused for good."""

    retry: list[LoggedEvent] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> entries
    error: str | None = None  # the receiver's complaint, shortened
    retry_after: float | None = None


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: bytes
    retry_after: float | None

    def text(self, limit: int = 300) -> str:
        return self.body[:limit].decode("utf-8", "replace")


def _read_secret(path: str) -> str:
    file = Path(path)
    try:
        info = file.stat()
        text = file.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ShippingSetupError(f"cannot read the credential file {path}: {type(exc).__name__}") from None
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ShippingSetupError(f"the credential file {path} is accessible to other users: chmod 600 {path}")
    if not text or "\n" in text or not text.isprintable():
        raise ShippingSetupError(f"the credential file {path} must hold one line")
    return text


class Credentials:
    """The Authorization header a shipper sends, read from its files."""

    def __init__(self, auth: ShipperAuth) -> None:
        self._auth = auth
        self._header: str | None = None
        self.reload()

    def reload(self) -> None:
        auth = self._auth
        if auth.password_file is not None and auth.username is not None:
            pair = f"{auth.username}:{_read_secret(auth.password_file)}".encode()
            self._header = "Basic " + base64.b64encode(pair).decode("ascii")
        elif auth.bearer_token_file is not None:
            self._header = "Bearer " + _read_secret(auth.bearer_token_file)
        elif auth.api_key_file is not None:
            self._header = "ApiKey " + _read_secret(auth.api_key_file)

    def headers(self) -> dict[str, str]:
        return {} if self._header is None else {"Authorization": self._header}

    def __repr__(self) -> str:
        return f"Credentials(configured={self._header is not None})"


def tls_context(tls: ShipperTls) -> ssl.SSLContext:
    """Verification on, against ``ca_file`` or the system's CAs, unless explicitly switched off."""
    try:
        context = ssl.create_default_context(cafile=tls.ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ShippingSetupError(f"cannot load the CA file {tls.ca_file}: {type(exc).__name__}") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls.insecure_skip_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class Receiver:
    """POSTs to one receiver; translates transport failures into ``ShipError``."""

    def __init__(
        self,
        name: str,
        base_url: str,
        auth: ShipperAuth,
        tls: ShipperTls,
        timeout: float,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.name = name
        self.base_url = base_url.rstrip("/")
        self.credentials = Credentials(auth)
        self._client = httpx.AsyncClient(
            verify=tls_context(tls), timeout=timeout, transport=transport, follow_redirects=False
        )

    async def post(self, path: str, body: bytes, content_type: str, headers: dict[str, str]) -> Answer:
        sent = {"Content-Type": content_type, **headers, **self.credentials.headers()}
        try:
            async with self._client.stream("POST", self.base_url + path, content=body, headers=sent) as reply:
                data = bytearray()
                async for chunk in reply.aiter_bytes():
                    data += chunk
                    if len(data) > MAX_ANSWER:
                        break
        except httpx.HTTPError as exc:
            raise ShipError(f"{type(exc).__name__} talking to {self.base_url}") from None
        if reply.status_code in (401, 403):
            self._reload_credentials()
        return Answer(reply.status_code, bytes(data[:MAX_ANSWER]), _retry_after(reply.headers))

    def _reload_credentials(self) -> None:
        try:
            self.credentials.reload()
        except ShippingSetupError as exc:
            log.error("audit.ship.credentials", shipper=self.name, error=str(exc))

    async def aclose(self) -> None:
        await self._client.aclose()


def _retry_after(headers: httpx.Headers) -> float | None:
    value = headers.get("retry-after", "")
    return float(value) if value.isdigit() else None


def whole_answer(answer: Answer, entries: Sequence[LoggedEvent]) -> Delivery | None:
    """The Delivery an answer decides by its status alone; None for 2xx (the body may say more)."""
    if 200 <= answer.status < 300:
        return None
    if answer.status == 413:
        raise TooLarge
    if answer.status == 400:
        return Delivery(skipped={"refused": len(entries)}, error=f"HTTP 400: {answer.text()}")
    return Delivery(
        retry=list(entries), error=f"HTTP {answer.status}: {answer.text()}", retry_after=answer.retry_after
    )
