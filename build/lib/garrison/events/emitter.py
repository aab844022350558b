"""How a component hands an audit event over: ``emitter.emit(event)``, which never blocks and never
raises. ``NullEmitter`` is the emitter of a deployment without an ``audit`` section.

A component builds its emitter with ``emitter_for(config, component, instance, client_context)``,
starts it once its loop runs (``await emitter.start()``) and closes it when it drains
(``await emitter.close()``: what is still in memory goes to the collector or to the spool).
``client_context`` returns the component's current mesh client context (a workload certificate
rotates), or None: then the emit token authenticates it.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from garrison.events.schema import Event

if TYPE_CHECKING:
    from garrison.config.assembly import GarrisonConfig

__all__ = ["Emitter", "NullEmitter", "emitter_for"]


class Emitter(Protocol):
    def emit(self, event: Event) -> None:
        """Queue ``event`` for the collector; returns at once, whatever the collector's state."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...


class NullEmitter:
    """No audit collector configured: events go nowhere."""

    def emit(self, event: Event) -> None:
        del event

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None


def emitter_for(
    config: GarrisonConfig,
    component: str,
    instance: str,
    client_context: Callable[[], ssl.SSLContext | None] | None = None,
) -> Emitter:
    """The emitter this component should use: a NullEmitter without an ``audit`` section."""
    del component, instance, client_context
    if config.audit is None:
        return NullEmitter()
    return NullEmitter()  # the delivering emitter replaces this
