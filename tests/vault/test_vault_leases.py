"""The lease manager on real storage (SQLite and PostgreSQL) with an injected clock: expiry wakes at the
due time, renewals are capped by the max TTL, failed revocations are kept and retried with back-off, and a
new manager on the same storage (a restart) resumes them. The engine here is a recording stand-in for the
database engine (which test_vault_database.py drives against a real PostgreSQL)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from db_backend import Backend
from sqlalchemy.ext.asyncio import AsyncEngine

from garrison.vault.barrier import Keyring
from garrison.vault.leases import LEASE_PREFIX, EngineFailed, Lease, LeaseError, LeaseManager
from garrison.vault.storage import BarrierStorage


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


class Engine:
    """Records each revocation attempt; the first ``failures`` attempts fail."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.attempts: asyncio.Queue[tuple[str, bool]] = asyncio.Queue()
        self.renewed: list[tuple[str, float]] = []

    async def revoke_lease(self, lease: Lease) -> None:
        failed = self.failures > 0
        self.failures -= 1
        await self.attempts.put((lease.lease_id, not failed))
        if failed:
            raise EngineFailed("database unreachable")

    async def renew_lease(self, lease: Lease, expire_time: float) -> None:
        self.renewed.append((lease.lease_id, expire_time))


def _run(backend: Backend, body: Callable[[BarrierStorage, Clock], Awaitable[None]]) -> None:
    async def main(engine: AsyncEngine) -> None:
        await body(BarrierStorage(engine, Keyring.new()), Clock())

    backend.run(main)


async def _stored(manager: LeaseManager, lease_id: str, attempts: int) -> Lease:
    """The stored lease once it records ``attempts`` failures (the engine answers before the store)."""
    for _ in range(500):
        lease = await manager.lookup(lease_id)
        if lease is not None and lease.attempts == attempts:
            return lease
        await asyncio.sleep(0.01)
    raise AssertionError(f"the lease never recorded {attempts} failed attempts")


async def _attempt(engine: Engine) -> tuple[str, bool]:
    return await asyncio.wait_for(engine.attempts.get(), 10)


def test_expiry_revokes_at_the_due_time_and_renewals_are_capped(backend: Backend) -> None:
    async def body(storage: BarrierStorage, clock: Clock) -> None:
        engine = Engine()
        manager = LeaseManager(storage, clock, {"database": engine})
        await manager.start()
        try:
            lease = await manager.create("database/creds/orders", 60, 300, 60, {"username": "u"})
            assert lease.lease_id.startswith("database/creds/orders/") and len(lease.lease_id) == 22 + 24
            assert await manager.list_keys("database/creds/") == ["orders/"]
            clock.now += 30
            renewed, warnings = await manager.renew(lease.lease_id, 0)  # no increment: the default TTL
            assert renewed.expire_time == clock.now + 60 and not warnings
            renewed, warnings = await manager.renew(lease.lease_id, 1000)
            assert renewed.expire_time == lease.issue_time + 300 and warnings  # capped by max_ttl
            assert [expire for _, expire in engine.renewed] == [clock.now + 60, lease.issue_time + 300]
            clock.now = lease.issue_time + 299
            manager.wake()
            await asyncio.sleep(0.05)
            assert engine.attempts.empty()  # not yet due
            clock.now = lease.issue_time + 300
            manager.wake()
            assert await _attempt(engine) == (lease.lease_id, True)
            with pytest.raises(LeaseError):
                await manager.renew(lease.lease_id, 10)
            for _ in range(100):
                if await manager.lookup(lease.lease_id) is None:
                    break
                await asyncio.sleep(0.01)
            assert await storage.list(LEASE_PREFIX) == []
        finally:
            manager.stop()

    _run(backend, body)


def test_a_failed_revocation_is_retried_with_back_off_and_resumed_after_a_restart(
    backend: Backend,
) -> None:
    async def body(storage: BarrierStorage, clock: Clock) -> None:
        engine = Engine(failures=2)
        manager = LeaseManager(storage, clock, {"database": engine}, retry_base=1.0, retry_max=4.0)
        await manager.start()
        lease = await manager.create("database/creds/orders", 10, 10, 10, {})
        clock.now += 10
        manager.wake()
        assert await _attempt(engine) == (lease.lease_id, False)
        kept = await _stored(manager, lease.lease_id, 1)
        assert kept.retry_time == clock.now + 1
        clock.now += 1
        manager.wake()
        assert await _attempt(engine) == (lease.lease_id, False)
        kept = await _stored(manager, lease.lease_id, 2)
        assert kept.retry_time == clock.now + 2  # doubled
        manager.stop()  # the vault stops (or is killed) with a revocation pending

        restarted = LeaseManager(storage, clock, {"database": engine})
        await restarted.start()
        try:
            await asyncio.sleep(0.05)
            assert engine.attempts.empty()  # the back-off holds across the restart
            clock.now += 2
            restarted.wake()
            assert await _attempt(engine) == (lease.lease_id, True)
            for _ in range(100):
                if not await storage.list(LEASE_PREFIX):
                    break
                await asyncio.sleep(0.01)
            assert await storage.list(LEASE_PREFIX) == []
        finally:
            restarted.stop()

    _run(backend, body)


def test_revoke_raises_and_keeps_the_lease_and_revoke_force_drops_it(backend: Backend) -> None:
    async def body(storage: BarrierStorage, clock: Clock) -> None:
        engine = Engine(failures=10)
        manager = LeaseManager(storage, clock, {"database": engine})
        await manager.start()
        try:
            one = await manager.create("database/creds/a", 100, 100, 100, {})
            two = await manager.create("database/creds/b", 100, 100, 100, {})
            with pytest.raises(EngineFailed):
                await manager.revoke(one.lease_id)
            assert await manager.lookup(one.lease_id) is not None
            await manager.revoke("database/creds/a/unknown")  # an unknown lease: nothing to do
            with pytest.raises(EngineFailed):
                await manager.revoke_prefix("database/creds/")
            assert len(await storage.list(LEASE_PREFIX)) == 2
            await manager.revoke_prefix("database/creds/", force=True)
            assert await storage.list(LEASE_PREFIX) == []
            assert two.lease_id not in await manager.list_keys("database/creds/b/")
        finally:
            manager.stop()

    _run(backend, body)


def test_a_token_takes_its_leases_with_it_when_revoked_or_expired(backend: Backend) -> None:
    async def body(storage: BarrierStorage, clock: Clock) -> None:
        engine = Engine()
        tokens: dict[str, float] = {"alive": clock.now + 100, "short": clock.now + 10}

        async def expiry(token: str) -> float | None:
            expire = tokens.get(token)
            return expire if expire is not None and expire > clock.now else None

        manager = LeaseManager(storage, clock, {"database": engine}, expiry)
        await manager.start()
        try:
            kept = await manager.create("database/creds/a", 1000, 1000, 1000, {}, "alive", clock.now + 100)
            short = await manager.create("database/creds/a", 1000, 1000, 1000, {}, "short", clock.now + 10)
            revoked = await manager.create("database/creds/a", 1000, 1000, 1000, {}, "alive", None)
            tokens["alive"] = clock.now + 500  # renewed: the check at +100 finds it alive
            clock.now += 100
            manager.wake()
            assert await _attempt(engine) == (short.lease_id, True)  # its token expired at +10
            await manager.revoke_token("alive")  # what TokenStore.revoke calls
            attempts = {await _attempt(engine), await _attempt(engine)}
            assert attempts == {(kept.lease_id, True), (revoked.lease_id, True)}
            assert await storage.list("sys/expire/") == []
        finally:
            manager.stop()

    _run(backend, body)
