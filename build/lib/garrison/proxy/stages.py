"""The stage protocol, and the ``Chain`` of stages a request runs through once its head is read.

A stage is a small object with a name, a documented place in the order (a comment where the chain
is compiled says why it sits there), and a synchronous ``check(exchange, connection)`` that returns
``CONTINUE`` (the next stage runs) or ``DONE`` (the stage took the exchange over: it answered it, or
handed it to an upstream). Only a stage that must wait for I/O (a Redis counter, a key set to
fetch) returns a coroutine instead: its slow path, which the chain runs as a task and resumes from
when it settles. A request that needs no I/O runs every stage in the parser callback that completed
its head, with no task, future or queue (as linkerd2-proxy's stack and mitmproxy's addons order
their layers, without their per-request allocation).

A ``Chain`` is compiled once per route at config load: it holds only the stages the route needs
(no rate-limit stage on a route without limits, no cache stage without ``cache``), so the hot path
asks no "is this configured?" question a compile step could answer.
"""

from __future__ import annotations

from collections.abc import Coroutine, Sequence
from enum import Enum
from typing import Any, Generic, Protocol, TypeVar, cast


class Verdict(Enum):
    CONTINUE = "continue"  # the next stage runs
    DONE = "done"  # the stage answered the exchange or handed it on: the chain stops


CONTINUE = Verdict.CONTINUE
DONE = Verdict.DONE

# What a slow path settles to: the same two verdicts, decided after the I/O.
SlowPath = Coroutine[Any, Any, Verdict]

E = TypeVar("E")
E_contra = TypeVar("E_contra", contravariant=True)
C = TypeVar("C", bound="ChainHost[Any]")
C_contra = TypeVar("C_contra", bound="ChainHost[Any]", contravariant=True)


class ChainHost(Protocol[E_contra]):
    """What a chain needs from the connection it runs on (beyond what its stages use)."""

    def spawn_slow_path(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run a stage's slow path (wrapped by the chain) as a task the connection's server tracks."""

    def serving(self, exchange: E_contra) -> bool:
        """Whether the exchange is still the one being answered on a live connection."""

    def flush(self) -> None:
        """Write what the stages queued (slow paths run outside the parser callbacks' flush)."""


class Stage(Protocol[E_contra, C_contra]):
    """One step of the request path; see the module docstring."""

    @property
    def name(self) -> str: ...

    def check(self, exchange: E_contra, host: C_contra) -> Verdict | SlowPath:
        """CONTINUE, DONE, or a coroutine: the slow path, which settles to CONTINUE or DONE.

        A slow path must check ``host.serving(exchange)`` before it answers: the client may have
        gone, or a refusal may have ended the exchange, while it waited.
        """
        ...


class Chain(Generic[E, C]):
    """A route's stages in order, compiled once; ``run`` drives an exchange through them."""

    __slots__ = ("stages",)

    def __init__(self, stages: Sequence[Stage[E, C]]) -> None:
        self.stages: tuple[Stage[E, C], ...] = tuple(stages)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(stage.name for stage in self.stages)

    def run(self, exchange: E, host: C) -> None:
        """Run the stages from the first, synchronously, until one is DONE or goes slow."""
        for stage in self.stages:
            verdict = stage.check(exchange, host)
            if verdict is CONTINUE:
                continue
            if verdict is not DONE:
                slow = cast(SlowPath, verdict)
                host.spawn_slow_path(self._slow(self.stages.index(stage), slow, exchange, host))
            return

    def resume(self, exchange: E, host: C, index: int) -> None:
        """Run the stages from ``index`` on (after a slow path settled to CONTINUE)."""
        stages = self.stages
        while index < len(stages):
            verdict = stages[index].check(exchange, host)
            if verdict is not CONTINUE:
                if verdict is not DONE:
                    host.spawn_slow_path(self._slow(index, cast(SlowPath, verdict), exchange, host))
                return
            index += 1

    async def _slow(self, index: int, slow: SlowPath, exchange: E, host: C) -> None:
        verdict = await slow
        if verdict is CONTINUE and host.serving(exchange):
            self.resume(exchange, host, index + 1)
        host.flush()

    def __repr__(self) -> str:
        return f"Chain({' -> '.join(self.names)})"
