"""Brute-force protection on SQLite and PostgreSQL: attempts are counted before the check, so parallel
guessing gets no more checks than the limit; locks expire; per-address limits span usernames; a success
resets the account. Time is an injected clock; concurrency is forced by a checker that yields.
"""

from __future__ import annotations

import asyncio
import io
import json
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from garrison.config.model import LockoutConfig
from garrison.identity.tables import throttle as throttle_table
from garrison.identity.throttle import Locked, LockedOut, Reservation, Throttle, ip_key, user_key
from garrison.identity.users import UserStore
from garrison.pki.kek import KeyEncryption
from garrison.telemetry import logging as log

if TYPE_CHECKING:
    from conftest import Backend

T0 = datetime(2031, 5, 17, 9, 30, 7, 250_001, tzinfo=UTC)  # microseconds must survive the round trip
SETTINGS = LockoutConfig(max_failures=5, ip_max_failures=12, window=600, lock_for=900)
ALICE = ["user:alice", "ip:198.51.100.7"]


class Clock:
    def __init__(self, start: datetime = T0) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class Checker:
    """A fake password check that yields to the event loop, so parallel attempts really overlap."""

    def __init__(self, right: bool = False) -> None:
        self.right = right
        self.calls = 0
        self.in_flight = 0
        self.most_in_flight = 0

    async def __call__(self) -> bool:
        self.calls += 1
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            for _ in range(20):
                await asyncio.sleep(0.001)
            return self.right
        finally:
            self.in_flight -= 1


async def _login(throttle: Throttle, keys: list[str], check: Checker) -> str:
    """One guarded attempt: "ok", "wrong" or "locked"."""
    try:
        async with throttle.attempt(keys) as attempt:
            if await check():
                attempt.succeed()
                return "ok"
            return "wrong"
    except LockedOut:
        return "locked"


async def _failures(engine: AsyncEngine, key: str) -> int | None:
    async with engine.connect() as connection:
        row = (await connection.execute(select(throttle_table).where(throttle_table.c.key == key))).first()
    return None if row is None else int(row.failures)


@pytest.fixture
def captured_log(monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    stream = io.StringIO()
    monkeypatch.setattr(log, "_stream", stream)
    return stream


def _events(stream: io.StringIO, name: str) -> list[dict[str, Any]]:
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    return [record for record in records if record["event"] == name]


def test_fifty_parallel_wrong_guesses_get_at_most_max_failures_checks(
    backend: Backend, captured_log: io.StringIO
) -> None:
    clock = Clock()
    settings = LockoutConfig(max_failures=5, ip_max_failures=100, window=600, lock_for=900)

    async def body(engine: AsyncEngine) -> tuple[list[str], Checker, int | None]:
        throttle = Throttle(engine, settings, clock)
        check = Checker()
        outcomes = await asyncio.gather(*(_login(throttle, ALICE, check) for _ in range(50)))
        assert await _login(throttle, ALICE, Checker(right=True)) == "locked"  # even the right password
        return outcomes, check, await _failures(engine, "ip:198.51.100.7")

    outcomes, check, ip_failures = backend.run(body)
    assert check.calls == 5 and check.most_in_flight > 1
    assert outcomes.count("wrong") == 5 and outcomes.count("locked") == 45
    assert ip_failures == 5  # refused attempts count on no key
    lockouts = _events(captured_log, "identity.lockout")
    assert len(lockouts) == 1 and lockouts[0]["key"] == "user:alice"
    assert lockouts[0]["until"] == (T0 + timedelta(seconds=900)).isoformat()


def test_the_lock_starts_at_the_limit_and_expires_after_lock_for(backend: Backend) -> None:
    clock = Clock()

    async def body(engine: AsyncEngine) -> None:
        throttle = Throttle(engine, SETTINGS, clock)
        for number in range(1, 6):
            reservation = await throttle.reserve(ALICE)
            assert isinstance(reservation, Reservation)
            assert dict((c.key, c.failures) for c in reservation.counted)["user:alice"] == number
            clock.advance(1)
            started = await throttle.failed(reservation)
            assert started == (
                [Locked("user:alice", clock.now + timedelta(seconds=900), True)] if number == 5 else []
            )
        until = clock.now + timedelta(seconds=900)

        refused = await throttle.reserve(ALICE)
        assert refused == Locked("user:alice", until, started=False)
        with pytest.raises(LockedOut, match="user:alice is locked until") as caught:
            async with throttle.attempt(ALICE):
                raise AssertionError("a locked key must refuse before the check")
        assert caught.value.locked.until == until

        clock.now = until - timedelta(microseconds=1)
        assert await _login(throttle, ALICE, Checker()) == "locked"
        clock.now = until
        assert await _login(throttle, ALICE, Checker()) == "wrong"
        assert await _failures(engine, "user:alice") == 1  # a fresh window after the lock

    backend.run(body)


def test_failures_older_than_the_window_are_forgotten(backend: Backend) -> None:
    clock = Clock()

    async def body(engine: AsyncEngine) -> None:
        throttle = Throttle(engine, SETTINGS, clock)
        for _ in range(4):
            assert await _login(throttle, ALICE, Checker()) == "wrong"
        clock.advance(600)
        for _ in range(4):
            assert await _login(throttle, ALICE, Checker()) == "wrong"
        assert await _failures(engine, "user:alice") == 4
        assert await _login(throttle, ALICE, Checker()) == "wrong"
        assert await _login(throttle, ALICE, Checker()) == "locked"

    backend.run(body)


def test_a_success_resets_the_account_but_gives_the_address_back_one_attempt_only(backend: Backend) -> None:
    clock = Clock()

    async def body(engine: AsyncEngine) -> None:
        throttle = Throttle(engine, SETTINGS, clock)
        for _ in range(4):
            assert await _login(throttle, ALICE, Checker()) == "wrong"
        assert await _login(throttle, ALICE, Checker(right=True)) == "ok"
        assert await _failures(engine, "user:alice") is None
        assert await _failures(engine, "ip:198.51.100.7") == 4
        for _ in range(4):
            assert await _login(throttle, ALICE, Checker()) == "wrong"
        assert await _login(throttle, ALICE, Checker(right=True)) == "ok"  # not locked: it was reset

    backend.run(body)


def test_an_address_is_locked_across_many_usernames(backend: Backend) -> None:
    clock = Clock()

    async def body(engine: AsyncEngine) -> None:
        throttle = Throttle(engine, SETTINGS, clock)
        address = ip_key("203.0.113.9")
        outcomes = await asyncio.gather(
            *(_login(throttle, [f"user:u{n}", address], Checker()) for n in range(40))
        )
        assert outcomes.count("wrong") == 12 and outcomes.count("locked") == 28
        try:
            async with throttle.attempt(["user:fresh", address]):
                raise AssertionError("the address is locked")
        except LockedOut as refused:
            assert refused.locked.key == address
        assert await _failures(engine, "user:fresh") in (None, 0)  # a refused attempt costs the user nothing
        assert await _login(throttle, ["user:fresh", ip_key("203.0.113.10")], Checker(right=True)) == "ok"

    backend.run(body)


def test_an_error_during_the_check_counts_as_a_failure(backend: Backend) -> None:
    clock = Clock()

    async def body(engine: AsyncEngine) -> None:
        throttle = Throttle(engine, SETTINGS, clock)
        for _ in range(5):
            with pytest.raises(RuntimeError):
                async with throttle.attempt(ALICE) as attempt:
                    attempt.succeed()
                    raise RuntimeError("the check broke")
        assert await _login(throttle, ALICE, Checker(right=True)) == "locked"

    backend.run(body)


def test_an_abandoned_check_cannot_leave_a_key_stuck_without_a_lock_end(backend: Backend) -> None:
    clock = Clock()

    async def body(engine: AsyncEngine) -> None:
        throttle = Throttle(engine, SETTINGS, clock)
        for _ in range(5):
            assert isinstance(await throttle.reserve(ALICE), Reservation)  # never reported back
        refused = await throttle.reserve(ALICE)
        assert refused == Locked("user:alice", T0 + timedelta(seconds=900), started=True)
        clock.advance(900)
        assert isinstance(await throttle.reserve(ALICE), Reservation)

    backend.run(body)


def test_real_passwords_behind_the_throttle(backend: Backend) -> None:
    clock = Clock()

    async def body(engine: AsyncEngine) -> list[str]:
        users = UserStore(engine, KeyEncryption(b"t" * 32))
        await users.create("alice", "correct horse battery")
        throttle = Throttle(engine, SETTINGS, clock)
        checks = 0

        async def login(password: str) -> str:
            nonlocal checks
            try:
                async with throttle.attempt([user_key("ALICE"), ip_key("192.0.2.1")]) as attempt:
                    checks += 1
                    if await users.verify_password("alice", password) is not None:
                        attempt.succeed()
                        return "ok"
                    return "wrong"
            except LockedOut:
                return "locked"

        outcomes = await asyncio.gather(*(login(f"guess number {n}") for n in range(10)))
        assert checks == 5
        outcomes.append(await login("correct horse battery"))
        return outcomes

    outcomes = backend.run(body)
    assert outcomes.count("wrong") == 5 and outcomes[-1] == "locked"


def test_purge_forgets_finished_windows_only(backend: Backend) -> None:
    clock = Clock()

    async def body(engine: AsyncEngine) -> None:
        throttle = Throttle(engine, SETTINGS, clock)
        for _ in range(5):
            await _login(throttle, ALICE, Checker())
        await _login(throttle, ["user:bob"], Checker())
        clock.advance(600)
        assert await throttle.purge() == 2  # bob and the address; alice is still locked
        assert await _failures(engine, "user:alice") == 5
        clock.advance(300)
        assert await throttle.purge() == 1

    backend.run(body)


def test_keys_fold_case_group_ipv6_networks_and_stay_within_the_column() -> None:
    assert user_key(" Alice ") == "user:alice"
    assert ip_key("2001:db8:1:2:3:4:5:6") == ip_key("2001:db8:1:2:ffff::1") == "ip:2001:db8:1:2::/64"
    assert ip_key("192.0.2.1") == "ip:192.0.2.1"
    assert len(user_key("x" * 1000)) <= 200 and user_key("x" * 1000).startswith("user:#")
    assert user_key("x" * 1000) != user_key("x" * 1001)
    assert user_key("bad\nname").startswith("user:#")


def test_limits_follow_the_key_kind_and_an_attempt_needs_a_key(backend: Backend) -> None:
    async def body(engine: AsyncEngine) -> None:
        throttle = Throttle(engine, SETTINGS)
        assert throttle.limit_for("ip:192.0.2.1") == 12
        assert throttle.limit_for("user:alice") == throttle.limit_for("otp:some-user-id") == 5
        with pytest.raises(ValueError, match="at least one"):
            await throttle.reserve([])

    backend.run(body)
