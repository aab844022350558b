"""HTTP/1.1 pieces the proxy core (and the gateway's side listeners) add on top of llhttp (httptools).

llhttp already refuses bare LF, obs-fold, invalid tokens, CR/LF/NUL in values, CL+TE together,
duplicate Content-Length and bad chunk sizes. What it leaves to us, and these helpers decide:
a Transfer-Encoding other than exactly ``chunked`` (llhttp accepts ``gzip, chunked`` and the
like), Content-Length syntax beyond digits, and the hop-by-hop header set.
"""

from __future__ import annotations

from http import HTTPStatus

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"expect",
    }
)
"""Headers that describe one connection, never forwarded. ``expect`` is answered by the gateway."""

# Headers the gateway sets itself on upstream requests; a client's copy is dropped (or, from a
# trusted proxy, merged by the forwarding logic), and ``Connection`` may not name them.
GATEWAY_SET = frozenset(
    {
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"x-forwarded-port",
        b"x-real-ip",
        b"forwarded",
        b"x-request-id",
        b"traceparent",
        b"host",
        b"content-length",
    }
)

OWNED_PREFIX = b"x-garrison-"

REASONS: dict[int, bytes] = {status.value: status.phrase.encode() for status in HTTPStatus}

MAX_CONTENT_LENGTH_DIGITS = 18


class BadFraming(ValueError):
    """A request whose body framing is ambiguous; answered with 400 and the connection closed."""


def parse_content_length(value: bytes) -> int:
    """Digits only: ``+5``, ``-1``, ``5, 5``, `` 5`` and over-long values are refused."""
    if not value.isdigit() or len(value) > MAX_CONTENT_LENGTH_DIGITS:
        raise BadFraming("invalid Content-Length")
    return int(value)


def check_transfer_encoding(value: bytes) -> None:
    """Exactly ``chunked`` (letter case aside), nothing stacked or padded."""
    if value.lower() != b"chunked":
        raise BadFraming("unsupported Transfer-Encoding")


def connection_tokens(value: bytes) -> list[bytes]:
    """The header names listed in a ``Connection`` header, lower-cased."""
    return [token.strip().lower() for token in value.split(b",") if token.strip()]


def status_line(status: int) -> bytes:
    return b"HTTP/1.1 %d %s\r\n" % (status, REASONS.get(status, b"Unknown"))


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked body."""
    return b"%x\r\n%s\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"

CONTINUE_LINE = b"HTTP/1.1 100 Continue\r\n\r\n"
"""The interim answer to ``Expect: 100-continue``: sent only once the request may go on (allowed,
an upstream connection ready), so a refused request never makes its client send the body."""
