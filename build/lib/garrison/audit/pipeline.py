"""What the collector's parts share: a logged event, and the two ways to consume the log.

The collector appends each received batch to the log, makes it durable (fsync), acknowledges it, and
then hands the new entries, in log order, to every ``AfterCommit`` stage (detection). Shippers do not
ride that hand-off: each reads the log from its own saved position (``LogReader``), so a restart or a
receiver's outage resumes where it stopped. Events the collector makes itself (alerts, responses,
checkpoints) go through ``Appender``: the same durable, chained path as a component's events.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from garrison.events.schema import Actor, Event

__all__ = ["AfterCommit", "AlertRaised", "Appender", "LogReader", "LoggedEvent", "Responder"]


@dataclass(frozen=True, slots=True)
class LoggedEvent:
    seq: int  # position in the log from 0: the event's Merkle leaf index
    event: Event
    line: bytes  # the exact bytes logged for it (the Merkle leaf's entry), no newline


class AfterCommit(Protocol):
    async def committed(self, entries: Sequence[LoggedEvent]) -> None:
        """Called with each durable batch, in log order; must not raise."""


class LogReader(Protocol):
    def size(self) -> int:
        """Entries committed so far."""

    async def read(self, start: int, limit: int) -> list[LoggedEvent]:
        """Up to ``limit`` committed entries from ``start`` on (fewer at the end of the log)."""


# Append events made by the collector itself; returns them as logged, once durable.
Appender = Callable[[list[Event]], Awaitable[list[LoggedEvent]]]


@dataclass(frozen=True, slots=True)
class AlertRaised:
    """An alert that detection raised (after deduplication and suppression) and that names responses."""

    alert_id: str  # the id of its `audit.alert` event in the log
    rule: str
    severity: str  # low | medium | high | critical
    actor: Actor  # whom the responses act on
    responses: tuple[str, ...]  # block_ip | revoke_tokens | quarantine_service | lock_account
    summary: str


class Responder(Protocol):
    async def respond(self, alert: AlertRaised) -> None:
        """Run the alert's responses (or, in dry-run mode, say what they would do); never raises.
        Each action and its expiry is recorded as an `audit.response` event through the Appender."""
