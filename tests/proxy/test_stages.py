"""The stage chain and the connection state machine, driven without sockets."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from garrison.proxy.stages import CONTINUE, DONE, Chain, SlowPath, Verdict
from garrison.proxy.state import (
    LEGAL,
    ConnectionState,
    IllegalTransition,
    ResponsePhase,
    check_transition,
)

S = ConnectionState


def in_loop(test: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    """Run an async test body in a fresh event loop (the suite has no asyncio plugin)."""

    @functools.wraps(test)
    def run() -> None:
        asyncio.run(test())

    return run


class Exchange:
    def __init__(self) -> None:
        self.seen: list[str] = []


class Host:
    """Records slow paths as tasks, and whether the exchange is still being served."""

    def __init__(self) -> None:
        self.tasks: list[asyncio.Task[None]] = []
        self.live = True
        self.flushes = 0

    def spawn_slow_path(self, coro: Coroutine[Any, Any, None]) -> None:
        self.tasks.append(asyncio.get_running_loop().create_task(coro))

    def serving(self, exchange: Exchange) -> bool:
        return self.live

    def flush(self) -> None:
        self.flushes += 1


class Step:
    """A stage that records itself and answers with a fixed verdict."""

    def __init__(self, name: str, verdict: Verdict = CONTINUE) -> None:
        self.name = name
        self.verdict = verdict

    def check(self, exchange: Exchange, host: Host) -> Verdict | SlowPath:
        exchange.seen.append(self.name)
        return self.verdict


class SlowStep:
    """A stage that must wait: its slow path settles when ``release`` is set."""

    def __init__(self, name: str, settles_to: Verdict) -> None:
        self.name = name
        self.settles_to = settles_to
        self.release = asyncio.Event()

    def check(self, exchange: Exchange, host: Host) -> Verdict | SlowPath:
        exchange.seen.append(self.name)
        return self._slow(exchange)

    async def _slow(self, exchange: Exchange) -> Verdict:
        await self.release.wait()
        exchange.seen.append(self.name + " settled")
        return self.settles_to


def test_stages_run_in_order_until_one_is_done() -> None:
    chain: Chain[Exchange, Host] = Chain([Step("a"), Step("b", DONE), Step("c")])
    exchange = Exchange()
    chain.run(exchange, Host())
    assert exchange.seen == ["a", "b"]  # "c" never runs: "b" answered
    assert chain.names == ("a", "b", "c")


def test_every_stage_runs_when_all_continue() -> None:
    chain: Chain[Exchange, Host] = Chain([Step("a"), Step("b"), Step("c", DONE)])
    exchange = Exchange()
    chain.run(exchange, Host())
    assert exchange.seen == ["a", "b", "c"]
    assert repr(chain) == "Chain(a -> b -> c)"


@in_loop
async def test_a_slow_stage_resumes_the_chain_after_it() -> None:
    slow = SlowStep("slow", CONTINUE)
    chain: Chain[Exchange, Host] = Chain([Step("a"), slow, Step("b"), Step("c", DONE)])
    exchange, host = Exchange(), Host()
    chain.run(exchange, host)
    assert exchange.seen == ["a", "slow"]  # returned in the same call; nothing after it ran yet
    assert len(host.tasks) == 1
    slow.release.set()
    await host.tasks[0]
    assert exchange.seen == ["a", "slow", "slow settled", "b", "c"]
    assert host.flushes == 1  # what the resumed stages wrote goes out


@in_loop
async def test_a_slow_stage_that_answers_stops_the_chain() -> None:
    slow = SlowStep("slow", DONE)
    chain: Chain[Exchange, Host] = Chain([slow, Step("b", DONE)])
    exchange, host = Exchange(), Host()
    chain.run(exchange, host)
    slow.release.set()
    await host.tasks[0]
    assert exchange.seen == ["slow", "slow settled"]


@in_loop
async def test_no_stage_runs_for_an_exchange_no_longer_served() -> None:
    slow = SlowStep("slow", CONTINUE)
    chain: Chain[Exchange, Host] = Chain([slow, Step("b", DONE)])
    exchange, host = Exchange(), Host()
    chain.run(exchange, host)
    host.live = False  # the client went away while the stage waited
    slow.release.set()
    await host.tasks[0]
    assert exchange.seen == ["slow", "slow settled"]


@in_loop
async def test_two_slow_stages_in_a_row() -> None:
    first, second = SlowStep("first", CONTINUE), SlowStep("second", CONTINUE)
    chain: Chain[Exchange, Host] = Chain([first, second, Step("end", DONE)])
    exchange, host = Exchange(), Host()
    chain.run(exchange, host)
    first.release.set()
    await host.tasks[0]
    assert exchange.seen == ["first", "first settled", "second"]
    second.release.set()
    await host.tasks[1]
    assert exchange.seen == ["first", "first settled", "second", "second settled", "end"]


# -- the connection state machine -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("current", "new"),
    [
        (S.IDLE, S.READING_HEAD),  # a keep-alive client starts its next request
        (S.READING_HEAD, S.READING_BODY),
        (S.READING_HEAD, S.SERVING),  # a head without a body
        (S.READING_BODY, S.SERVING),
        (S.SERVING, S.IDLE),  # answered, nothing of the next request read yet
        (S.SERVING, S.READING_HEAD),  # a pipelined request begins
        (S.READING_BODY, S.CLOSING),  # answered before the body was read: lingering close
        (S.CLOSING, S.CLOSED),
        (S.READING_HEAD, S.READING_HEAD),  # a refreshed deadline is no transition
    ],
)
def test_legal_transitions(current: ConnectionState, new: ConnectionState) -> None:
    assert check_transition(current, new) is new


@pytest.mark.parametrize(
    ("current", "new"),
    [
        (S.CLOSED, S.READING_HEAD),  # closed is final
        (S.CLOSED, S.CLOSING),
        (S.CLOSING, S.IDLE),
        (S.IDLE, S.SERVING),  # no request without reading its head
        (S.IDLE, S.READING_BODY),
        (S.READING_BODY, S.READING_HEAD),  # a body ends in SERVING first
        (S.READING_BODY, S.IDLE),
    ],
)
def test_illegal_transitions_raise(current: ConnectionState, new: ConnectionState) -> None:
    with pytest.raises(IllegalTransition) as raised:
        check_transition(current, new)
    assert raised.value.current is current and raised.value.new is new
    assert f"{current.name} -> {new.name}" in str(raised.value)


def test_every_state_may_close() -> None:
    for state in ConnectionState:
        assert S.CLOSED in LEGAL[state]


def test_the_response_phase_only_moves_forward() -> None:
    assert ResponsePhase.PENDING < ResponsePhase.STARTED < ResponsePhase.DONE
