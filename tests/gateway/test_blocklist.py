"""The dynamic blocklist: expiry and spellings in memory; propagation between instances via Redis."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
import redis
import redis.asyncio

from garrison.gateway.blocklist import BlocklistUnavailable, MemoryBlocklist, RedisBlocklist


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def prefix(redis_url: str) -> Iterator[str]:
    name = f"garrison:test-blocklist:{uuid.uuid4().hex[:12]}"
    yield name
    with redis.Redis.from_url(redis_url) as client:
        keys = list(client.scan_iter(match=f"{name}:*"))
        if keys:
            client.delete(*keys)


async def _eventually(predicate: Callable[[], bool], within: float = 1.5) -> float:
    """Seconds until ``predicate()`` held; fails after ``within``."""
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < within, "not within the deadline"
        await asyncio.sleep(0.01)
    return time.monotonic() - started


async def _subscribed(redis_url: str, channel: str, count: int, within: float = 10.0) -> None:
    """Wait until ``count`` connections subscribe to ``channel`` (PUBSUB NUMSUB): a change published from
    then on reaches them all."""
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        deadline = time.monotonic() + within
        while (await client.pubsub_numsub(channel))[0][1] < count:
            assert time.monotonic() < deadline, f"fewer than {count} subscribers on {channel}"
            await asyncio.sleep(0.01)  # the poll interval
    finally:
        await client.aclose()


# -- memory ------------------------------------------------------------------------------------------


def test_memory_block_expire_unblock() -> None:
    clock = FakeClock()
    blocklist = MemoryBlocklist(clock)

    async def main() -> None:
        entry = await blocklist.block("203.0.113.7", 60, "brute force")
        assert entry.until == clock.now + 60 and entry.reason == "brute force"
        assert blocklist.is_blocked("203.0.113.7")
        assert blocklist.is_blocked("::ffff:203.0.113.7")  # what a dual-stack socket reports
        assert not blocklist.is_blocked("203.0.113.8")
        assert [e.ip for e in blocklist.entries()] == ["203.0.113.7"]

        clock.now += 61
        assert not blocklist.is_blocked("203.0.113.7")
        assert blocklist.entries() == []

        await blocklist.block("2001:DB8::1", 30, "scanner")
        assert blocklist.is_blocked("2001:db8::1")
        assert await blocklist.unblock("2001:db8:0::1")
        assert not blocklist.is_blocked("2001:db8::1")
        assert not await blocklist.unblock("2001:db8::1")

    asyncio.run(main())


def test_memory_block_via_mapped_spelling_and_bad_input() -> None:
    blocklist = MemoryBlocklist()

    async def main() -> None:
        await blocklist.block("::ffff:198.51.100.4", 10, "x" * 1000)
        assert blocklist.is_blocked("198.51.100.4")
        assert len(blocklist.entries()[0].reason) == 200
        with pytest.raises(ValueError):
            await blocklist.block("not-an-ip", 10, "")
        with pytest.raises(ValueError):
            await blocklist.block("10.0.0.1", 0, "")
        with pytest.raises(ValueError):
            await blocklist.block("10.0.0.1", float("inf"), "")

    asyncio.run(main())


# -- Redis -------------------------------------------------------------------------------------------


def test_redis_block_propagates_between_instances(redis_url: str, prefix: str) -> None:
    async def main() -> None:
        first = RedisBlocklist(redis_url, prefix, resync_interval=30)
        second = RedisBlocklist(redis_url, prefix, resync_interval=30)
        await first.start()
        await second.start()
        try:
            await _subscribed(redis_url, f"{prefix}:events", 2)  # both follow the channel now
            await first.block("192.0.2.10", 60, "automated response")
            assert first.is_blocked("192.0.2.10")  # at once where it was made
            waited = await _eventually(lambda: second.is_blocked("192.0.2.10"))
            assert waited < 1.5  # by pub/sub: the resync interval is 30 s here
            assert second.entries()[0].reason == "automated response"

            assert await second.unblock("192.0.2.10")
            await _eventually(lambda: not first.is_blocked("192.0.2.10"))
        finally:
            await first.stop()
            await second.stop()

    asyncio.run(main())


def test_redis_new_instance_loads_existing_blocks_and_expiry(redis_url: str, prefix: str) -> None:
    async def main() -> None:
        writer = RedisBlocklist(redis_url, prefix)
        await writer.start()
        try:
            await writer.block("2001:db8::7", 0.6, "short")
            await writer.block("192.0.2.20", 60, "long")
            reader = RedisBlocklist(redis_url, prefix)
            await reader.start()  # resyncs at start: sees blocks made before it existed
            try:
                assert reader.is_blocked("2001:db8::7") and reader.is_blocked("192.0.2.20")
                await _eventually(lambda: not reader.is_blocked("2001:db8::7"), within=1.5)
                assert [e.ip for e in reader.entries()] == ["192.0.2.20"]
                await reader.resync()
                with redis.Redis.from_url(redis_url) as client:  # pruned from Redis too
                    assert client.zrange(f"{prefix}:until", 0, -1) == [b"192.0.2.20"]
                    assert client.hkeys(f"{prefix}:reason") == [b"192.0.2.20"]
            finally:
                await reader.stop()
        finally:
            await writer.stop()

    asyncio.run(main())


def test_redis_resync_catches_changes_without_messages(redis_url: str, prefix: str) -> None:
    """A change whose message was lost (written straight to Redis here) arrives with the next resync."""

    async def main() -> None:
        blocklist = RedisBlocklist(redis_url, prefix, resync_interval=0.3)
        await blocklist.start()
        try:
            with redis.Redis.from_url(redis_url) as client:
                client.zadd(f"{prefix}:until", {"192.0.2.30": time.time() + 60})
            await _eventually(lambda: blocklist.is_blocked("192.0.2.30"), within=1.5)
            with redis.Redis.from_url(redis_url) as client:
                client.zrem(f"{prefix}:until", "192.0.2.30")
            await _eventually(lambda: not blocklist.is_blocked("192.0.2.30"), within=1.5)
        finally:
            await blocklist.stop()

    asyncio.run(main())


def test_redis_unreachable(redis_url: str, refused_port: int) -> None:
    async def main() -> None:
        blocklist = RedisBlocklist(f"redis://127.0.0.1:{refused_port}/0", "x", timeout=0.5)
        await blocklist.start()  # logs, does not raise: the followers keep retrying
        try:
            assert blocklist.synced_at is None
            assert not blocklist.is_blocked("10.0.0.1")
            with pytest.raises(BlocklistUnavailable):
                await blocklist.block("10.0.0.1", 10, "x")
            assert not blocklist.is_blocked("10.0.0.1")  # nothing half-applied
            with pytest.raises(BlocklistUnavailable):
                await blocklist.unblock("10.0.0.1")
        finally:
            await blocklist.stop()

    asyncio.run(main())
