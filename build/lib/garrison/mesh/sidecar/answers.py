"""The answering half of a sidecar connection: per-request state, the sidecar's own answers, and what
happens once an answer is complete (the access line, the next pipelined request, keep-alive or close).

An answer may come before the request's body was read (a denial at the head, an upstream that
answered early, a failure mid-body). Then the connection closes after it, as the proxy core closes:
``connection: close`` in the answer, a half-close, the rest of the body read and dropped for a
moment (proxy/connection.py, lingering close). Keep-alive only when the whole request was read,
so the next request on the connection can never start inside an unread body.

Part of ``RelayConnection`` (relay.py), split by concern as the gateway's client connection is:
``AnsweringRelay`` (here) <- ``ForwardingRelay`` (forward.py: the upstream half) <- ``RelayConnection``
(relay.py: the parser callbacks and the connection's life).
"""

from __future__ import annotations

import json
from collections import deque
from typing import TYPE_CHECKING

from garrison.mesh.sidecar.request import Request
from garrison.proxy.connection import PAUSE_BUFFER, PAUSE_PIPELINE, PAUSE_UPSTREAM, ProxyConnection
from garrison.proxy.http1 import status_line
from garrison.proxy.state import CLOSING, IDLE, SERVING
from garrison.proxy.state import ResponsePhase as Phase

if TYPE_CHECKING:
    from garrison.mesh.sidecar.server import Side

__all__ = ["KEEPALIVE_TIMEOUT", "AnsweringRelay"]

KEEPALIVE_TIMEOUT = 75.0


class AnsweringRelay(ProxyConnection):
    """Per-connection request state and answers; the side (``Side``) records and decides."""

    def __init__(self, side: Side) -> None:
        super().__init__(side.loop)
        self.side = side
        self.url = b""
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self.head_size = 0
        self.parsing: Request | None = None
        self.active: Request | None = None
        self.pending: deque[Request] = deque()

    # -- the side's decision ---------------------------------------------------------------------
    def handle(self, request: Request) -> None:
        """Answer the request, or ``forward`` it (inbound: policy; outbound: peer)."""
        raise NotImplementedError

    def _start(self, request: Request) -> None:
        self.active = request
        self.handle(request)

    # -- answers ------------------------------------------------------------------------------------
    def answer_json(
        self, request: Request, status: int, error: str, message: str, extra: bytes = b""
    ) -> None:
        """The sidecar's own answer: a JSON body ``{"error", "message"}`` (``extra``: header lines)."""
        body = json.dumps({"error": error, "message": message}).encode()
        request.status = status
        request.close_after = request.close_after or self.side.draining or not request.request_done
        self.write(
            b"".join(
                (
                    status_line(status),
                    b"content-type: application/json\r\ncontent-length: %d\r\n" % len(body),
                    request.trace,
                    extra,
                    b"connection: close\r\n" if request.close_after else b"",
                    b"\r\n",
                    b"" if request.method == b"HEAD" else body,
                )
            )
        )
        request.response = Phase.DONE
        self.finish(request)

    def finish(self, request: Request) -> None:
        """The answer is complete: log it, then the next request, keep-alive, or close."""
        if request is not self.active:
            return
        self.active = None
        if not request.request_done:
            request.close_after = True  # the rest of its body is unread: never parsed as a request
        if request.body:  # held for it, never sent (answered without an upstream)
            request.body.clear()
            self._resume(PAUSE_BUFFER)
        self.side.record(request)
        if request.close_after or self.side.draining or self.state >= CLOSING:
            self._close()
            return
        if self.pending:
            self._resume(PAUSE_PIPELINE)
            self._start(self.pending.popleft())
        elif self.parsing is None and self.state is SERVING:
            self._wait(IDLE, KEEPALIVE_TIMEOUT)

    def _close(self, linger: bool = False) -> None:
        """Close; half-close and linger when input is unread (a body, or whatever followed)."""
        if self.transport is not None and self.state < CLOSING:
            if self.paused:
                # Lingering is reading and dropping: a paused transport would leave the input
                # unread, and the close would reset the connection under the answer.
                self.paused = 0
                self.transport.resume_reading()
            self._close_transport(linger=linger or self.parsing is not None)

    def _upstream_detached(self) -> None:
        """The active request no longer has an upstream connection: its write pause goes too."""
        self._resume(PAUSE_UPSTREAM)

    def serving(self, request: Request) -> bool:
        return request is self.active and self.state < CLOSING
