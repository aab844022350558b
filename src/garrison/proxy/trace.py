"""Request ids and W3C trace context, as any proxy on the core continues or starts them.

Shared by the gateway (gateway/head.py) and the mesh sidecar: a request that crosses both keeps one
trace id, so the edge's and the mesh's access-log lines of one call can be joined.
"""

from __future__ import annotations

import re
from random import getrandbits, randbytes

__all__ = ["request_id_for", "trace_context", "trace_for"]

_REQUEST_ID_RE = re.compile(rb"[A-Za-z0-9._:-]{1,128}")
_TRACEPARENT_RE = re.compile(rb"00-([0-9a-f]{32})-[0-9a-f]{16}-([0-9a-f]{2})")
_ZERO_TRACE = b"0" * 32


def request_id_for(candidate: bytes | None) -> bytes:
    """The client's request id when it is well-formed, else a new random one."""
    if candidate is not None and _REQUEST_ID_RE.fullmatch(candidate):
        return candidate
    return b"%032x" % getrandbits(128)


def trace_for(traceparent: bytes | None) -> tuple[bytes, bytes, bytes]:
    """(trace id, our span id, flags): continue a valid W3C traceparent, else start a trace."""
    span = b"%016x" % getrandbits(64)
    if traceparent is not None:
        match = _TRACEPARENT_RE.fullmatch(traceparent.strip())
        if match is not None and match.group(1) != _ZERO_TRACE:
            return match.group(1), span, match.group(2)
    return b"%032x" % getrandbits(128), span, b"01"


class _IdPool:
    """Hex digits for new ids, drawn 64 requests' worth at a time: one random draw and one hex
    conversion per 64 requests instead of per request. The ids were never secrets (a request id and
    a trace id are sent to upstreams and back to the client); they need only not repeat."""

    __slots__ = ("at", "digits")

    SIZE = 80  # hex digits: a request id (32), a trace id (32) and a span id (16)
    BATCH = 64

    def __init__(self) -> None:
        self.digits = b""
        self.at = 0

    def take(self) -> bytes:
        at = self.at
        if at >= len(self.digits):
            self.digits = randbytes(self.SIZE // 2 * self.BATCH).hex().encode()
            at = 0
        self.at = at + self.SIZE
        return self.digits[at : at + self.SIZE]


_ids = _IdPool()


def trace_context(request_id: bytes | None, traceparent: bytes | None) -> tuple[bytes, bytes, bytes, bytes]:
    """(request id, trace id, our span id, flags) for a request with these two headers (or None).

    A request with neither, the usual case at the edge, takes all three ids from the pool."""
    if request_id is None and traceparent is None:
        ids = _ids.take()
        return ids[:32], ids[32:64], ids[64:], b"01"
    return (request_id_for(request_id), *trace_for(traceparent))
