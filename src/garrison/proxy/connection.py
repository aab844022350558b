"""The protocol-neutral half of a client connection: its one state, flow control and output.

``ProxyConnection`` is the base of the gateway's ``ClientConnection`` (and of the mesh sidecar's to
come). It owns what any HTTP/1.1 proxy connection has whatever its policy: the state machine of
proxy/state.py (every change goes through ``_enter``, which refuses a transition the table does not
list), the deadline the server's sweeper enforces in that state, the reasons reading is paused,
and output gathered per event and written once (on loopback the write() system call costs more
than all the Python of a request). Closing half-closes first when unread input remains.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

from garrison.proxy.state import CLOSED, CLOSING, IDLE, LEGAL, ConnectionState, IllegalTransition

# Why reading from the client is paused; reading resumes when no reason is left.
PAUSE_PIPELINE, PAUSE_BUFFER, PAUSE_UPSTREAM = 1, 2, 4
LINGER_SECONDS = 1.0
# Request body held while no upstream connection is ready for it (one being opened, an earlier
# pipelined request still being answered); past this, reading pauses (PAUSE_BUFFER).
MAX_BUFFERED_BODY = 256 * 1024


class ProxyConnection:
    """An asyncio protocol by its methods, not by subclassing ``asyncio.Protocol``: a plain class is
    what mypyc compiles to a native class (fixed attribute slots, native method calls), and this is
    the hottest object of the data plane. uvloop and asyncio only call the methods below.
    ``as_protocol`` gives it the type the event loop's signatures ask for."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        # An httptools parser (untyped, hence Any) from connection_made to connection_lost only: it
        # holds bound methods of this object, a reference cycle (see ClientConnection._release).
        self.parser: Any = None
        self.peer = "0.0.0.0"
        self.paused = 0
        # One state (proxy/state.py): what the connection is reading, and whether it is closing;
        # the server's sweeper enforces the matching timeout against `deadline`.
        self.state = IDLE
        self.deadline = 0.0
        self.out: list[bytes] = []

    # -- asyncio's protocol methods (what asyncio.Protocol would inherit); subclasses override -------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        pass

    def data_received(self, data: bytes) -> None:
        pass

    def eof_received(self) -> bool | None:
        return None  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        pass

    def pause_writing(self) -> None:
        pass

    def resume_writing(self) -> None:
        pass

    def as_protocol(self) -> asyncio.Protocol:
        return cast(asyncio.Protocol, self)  # see the class docstring

    # -- output and flow control ---------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        self.out.append(data)

    def flush(self) -> None:
        out = self.out
        if not out:
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        if self.transport is not None and self.state < CLOSING:
            self.transport.write(data)

    def _wait(self, state: ConnectionState, timeout: float) -> None:
        """Enter a state whose timeout runs from now."""
        if state not in LEGAL[self.state]:  # _enter, inlined: this runs several times a request
            raise IllegalTransition(self.state, state)
        self.state = state
        self.deadline = self.loop.time() + timeout

    def _enter(self, state: ConnectionState) -> None:
        if state not in LEGAL[self.state]:
            raise IllegalTransition(self.state, state)
        self.state = state

    def _pause(self, reason: int) -> None:
        if not self.paused and self.transport is not None and self.state < CLOSING:
            self.transport.pause_reading()
        self.paused |= reason

    def _resume(self, reason: int) -> None:
        if not self.paused & reason:
            return
        self.paused &= ~reason
        if not self.paused and self.transport is not None and self.state < CLOSING:
            self.transport.resume_reading()

    def _close_transport(self, linger: bool) -> None:
        """Flush and close; with ``linger`` (unread request body), half-close first."""
        transport = self.transport
        assert transport is not None
        self.flush()
        if linger and transport.can_write_eof():
            self._enter(CLOSING)
            # Answered before the request body was all read: closing now, with unread bytes,
            # would send a TCP reset that can destroy the answer in flight. Half-close, keep
            # reading (and discarding) for a moment, then close (nginx's "lingering close").
            transport.write_eof()
            self.loop.call_later(LINGER_SECONDS, transport.close)
        else:
            self._enter(CLOSED)
            transport.close()
