"""Request ids and W3C trace context, as any proxy on the core continues or starts them.

Shared by the gateway (gateway/head.py) and the mesh sidecar: a request that crosses both keeps one
trace id, so the edge's and the mesh's access-log lines of one call can be joined.
"""

from __future__ import annotations

import re
from random import getrandbits

__all__ = ["request_id_for", "trace_for"]

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
