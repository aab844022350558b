"""How a component hands an audit event over: ``emitter.emit(event)``, which never blocks and never
raises. ``NullEmitter`` is the emitter of a deployment without an ``audit`` section.

The delivering emitter (batches, the bounded on-disk spool, the authenticated channel to the
collector, replay after an outage, counted drops) is built on this interface.
"""

from __future__ import annotations

from typing import Protocol

from garrison.events.schema import Event

__all__ = ["Emitter", "NullEmitter"]


class Emitter(Protocol):
    def emit(self, event: Event) -> None:
        """Queue ``event`` for the collector; returns at once, whatever the collector's state."""


class NullEmitter:
    """No audit collector configured: events go nowhere."""

    def emit(self, event: Event) -> None:
        del event
