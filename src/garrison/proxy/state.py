"""The client connection's one state, and the response phase of an exchange, as explicit enums.

As h11 does, the connection is a small state machine rather than a set of flags: what it is reading
(a head, a body, nothing while it waits to answer, nothing between keep-alive requests) and whether
it is closing. Each state names the one timeout the server's sweeper enforces in it. A transition
the table below does not list is a bug, and raises ``IllegalTransition`` at once instead of leaving
a connection in a state no timeout covers.

The states are ``IntEnum`` members so that the hot path's checks are C-level int comparisons and
hashes, and the transition table is a tuple indexed by state.

With pipelining, the read side runs ahead of the answers: the connection may be READING_HEAD of the
next request while an earlier one is being answered. What is being answered is the exchange's
``ResponsePhase``; the connection's state is about its input and its life.
"""

from __future__ import annotations

from enum import IntEnum

from mypy_extensions import mypyc_attr


class ConnectionState(IntEnum):
    READING_HEAD = 0  # waiting for or reading a request head: the header timeout runs
    READING_BODY = 1  # reading a request body: the body timeout runs (reset by each chunk)
    SERVING = 2  # request read, its answer (or an earlier one) in progress: no client timeout
    IDLE = 3  # keep-alive, between requests: the keep-alive timeout runs
    CLOSING = 4  # answered and half-closed; unread input is discarded until the close (lingering)
    CLOSED = 5  # the transport is closed or closing: nothing more is read or written


READING_HEAD, READING_BODY, SERVING, IDLE, CLOSING, CLOSED = ConnectionState

# Legal transitions, indexed by the current state. A state may always go to itself (a refreshed
# deadline is not a transition) and to CLOSED (a reset, a refusal, a drain).
_NEXT: dict[ConnectionState, frozenset[ConnectionState]] = {
    READING_HEAD: frozenset((READING_BODY, SERVING, CLOSING)),
    READING_BODY: frozenset((SERVING, CLOSING)),
    SERVING: frozenset((IDLE, READING_HEAD, CLOSING)),
    IDLE: frozenset((READING_HEAD, CLOSING)),
    CLOSING: frozenset(),
    CLOSED: frozenset(),
}
LEGAL: tuple[frozenset[ConnectionState], ...] = tuple(
    _NEXT[state] | ({state, CLOSED} if state is not CLOSED else {CLOSED}) for state in ConnectionState
)
# CLOSED is final: once closed, a connection never reopens (CLOSED -> CLOSED is a no-op).


# Not a mypyc native class: mypyc cannot compile a subclass of RuntimeError.
@mypyc_attr(native_class=False)
class IllegalTransition(RuntimeError):
    """A connection asked to move between states the table does not link (a bug, never input)."""

    def __init__(self, current: ConnectionState, new: ConnectionState) -> None:
        super().__init__(f"illegal connection state transition {current.name} -> {new.name}")
        self.current = current
        self.new = new


def check_transition(current: ConnectionState, new: ConnectionState) -> ConnectionState:
    """``new`` if the table allows ``current -> new``; raises IllegalTransition otherwise."""
    if new not in LEGAL[current]:
        raise IllegalTransition(current, new)
    return new


class ResponsePhase(IntEnum):
    """How far the answer to one exchange has got; it only moves forward."""

    PENDING = 0  # nothing sent yet: the exchange can still be refused with a clean error
    STARTED = 1  # the response head was sent: a failure now can only cut the body short
    DONE = 2  # the whole response was sent (or the exchange was abandoned)
