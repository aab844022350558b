"""Token revocation feeds: rules and expiry in memory; propagation, resync and pruning through Redis."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
import redis
from gateway_harness import ThrowawayRedis

from garrison.config.loader import ConfigError, parse_config
from garrison.tokens.jwt import TokenRejected, VerifiedToken
from garrison.tokens.revocations import (
    MAX_REVOCATION_SECONDS,
    MemoryRevocations,
    RedisRevocations,
    RevocationsUnavailable,
)
from garrison.tokens.token_cache import TokenCache

NOW = 1_000_000.0


@pytest.fixture
def prefix(redis_url: str) -> Iterator[str]:
    name = f"garrison:test-revoked:{uuid.uuid4().hex[:12]}"
    yield name
    with redis.Redis.from_url(redis_url) as client:
        keys = list(client.scan_iter(match=f"{name}:*"))
        if keys:
            client.delete(*keys)


async def _within(predicate: Callable[[], bool], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, f"not within {seconds} s"
        await asyncio.sleep(0.01)


async def _following(feed: RedisRevocations) -> None:
    """Start ``feed`` and wait for its subscription (the resync that follows it moves ``synced_at``)."""
    await feed.start()
    started = feed.synced_at
    await _within(lambda: feed.synced_at != started, 1.5)


def _publish_as_an_idp(redis_url: str, prefix: str, jti: str, until: float, *, publish: bool = True) -> None:
    """What an identity provider does, in the documented wire format (MULTI: ZADD + PUBLISH)."""
    with redis.Redis.from_url(redis_url) as client, client.pipeline(transaction=True) as pipe:
        pipe.zadd(f"{prefix}:until", {jti: until})
        if publish:
            pipe.publish(f"{prefix}:events", json.dumps({"op": "revoke", "jti": jti, "until": until}))
        pipe.execute()


# -- memory ------------------------------------------------------------------------------------------


def test_memory_revoke_expire_and_list() -> None:
    now = [NOW]
    revocations = MemoryRevocations(clock=lambda: now[0])

    async def main() -> None:
        entry = await revocations.revoke("jti-1", NOW + 60)
        assert (entry.jti, entry.until) == ("jti-1", NOW + 60)
        await revocations.revoke("jti-0", NOW + 30)
        assert revocations.is_revoked("jti-1", NOW + 59.9)
        assert not revocations.is_revoked("jti-1", NOW + 60)  # ends with the token's exp
        assert not revocations.is_revoked("other", NOW)
        assert [e.jti for e in revocations.entries()] == ["jti-0", "jti-1"]  # soonest expiry first
        # revoking again never shortens a revocation
        assert (await revocations.revoke("jti-1", NOW + 10)).until == NOW + 60
        now[0] = NOW + 45
        assert [e.jti for e in revocations.entries()] == ["jti-1"]
        await revocations.revoke("jti-2", NOW + 100)  # a write prunes what expired
        assert len(revocations) == 2

    asyncio.run(main())


def test_memory_revoke_refuses_bad_input_and_caps_at_a_day() -> None:
    revocations = MemoryRevocations(clock=lambda: NOW)

    async def main() -> None:
        capped = await revocations.revoke("long-lived", NOW + 30 * 86400)
        assert capped.until == NOW + MAX_REVOCATION_SECONDS
        for jti in ("", "has space", "x" * 201, "caf\u00e9", "tab\there", "nl\n"):
            with pytest.raises(ValueError, match="visible ASCII"):
                await revocations.revoke(jti, NOW + 60)
        for until in (NOW, NOW - 1, float("inf"), float("nan")):
            with pytest.raises(ValueError, match="future"):
                await revocations.revoke("j", until)
        assert await revocations.revoke("~" * 200, NOW + 1)
        assert len(revocations) == 2

    asyncio.run(main())


def test_token_cache_reads_the_feed() -> None:
    revocations = MemoryRevocations(clock=lambda: NOW)
    cache = TokenCache(revocations=revocations)
    token = VerifiedToken("s", None, frozenset(), frozenset(), {}, "family-7", NOW + 300)
    cache.put("t1", token, NOW)
    assert cache.get("t1", NOW + 1) is token
    asyncio.run(revocations.revoke("family-7", NOW + 300))
    with pytest.raises(TokenRejected) as refused:
        cache.get("t1", NOW + 2)
    assert refused.value.reason == "revoked"
    with pytest.raises(TokenRejected):
        cache.put("t1", token, NOW + 3)  # and a fresh verification is not cached
    with pytest.raises(TypeError):
        cache.revoke_jti("x", NOW + 10)  # a feed is written through the feed


def test_config_redis_storage_needs_a_redis_url() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config("revocations: {storage: redis}\n", "garrison.yaml")
    assert [(p.path, p.message) for p in caught.value.problems] == [
        ("revocations.storage", "storage `redis` needs `redis.url`")
    ]
    text = "redis: {url: 'redis://127.0.0.1:6379/0'}\nrevocations: {storage: redis}\n"
    assert parse_config(text, "garrison.yaml").config.revocations.prefix == "garrison:revoked"


# -- Redis -------------------------------------------------------------------------------------------


def test_redis_revocation_reaches_other_instances_by_pubsub(redis_url: str, prefix: str) -> None:
    async def main() -> None:
        first = RedisRevocations(redis_url, prefix, resync_interval=30)
        second = RedisRevocations(redis_url, prefix, resync_interval=30)
        await _following(first)
        await _following(second)
        try:
            until = time.time() + 300
            await first.revoke("j-admin", until)
            assert first.is_revoked("j-admin", time.time())  # at once where it was made
            # the resync interval is 30 s here: only the published message can be this quick
            await _within(lambda: second.is_revoked("j-admin", time.time()), 1.5)
            assert [(e.jti, e.until) for e in second.entries()] == [("j-admin", until)]

            _publish_as_an_idp(redis_url, prefix, "j-idp", time.time() + 300)
            for feed in (first, second):
                await _within(lambda feed=feed: feed.is_revoked("j-idp", time.time()), 1.5)
        finally:
            await first.stop()
            await second.stop()

    asyncio.run(main())


def test_redis_resync_catches_missed_messages_and_new_instances_load(redis_url: str, prefix: str) -> None:
    async def main() -> None:
        _publish_as_an_idp(redis_url, prefix, "before-start", time.time() + 300)
        feed = RedisRevocations(redis_url, prefix, resync_interval=0.3)
        await feed.start()
        try:
            assert feed.is_revoked("before-start", time.time())  # loaded at start
            _publish_as_an_idp(redis_url, prefix, "no-message", time.time() + 300, publish=False)
            await _within(lambda: feed.is_revoked("no-message", time.time()), 1.5)
        finally:
            await feed.stop()

    asyncio.run(main())


def test_redis_expired_revocations_are_pruned(redis_url: str, prefix: str) -> None:
    async def main() -> None:
        feed = RedisRevocations(redis_url, prefix, resync_interval=30)
        await feed.start()
        try:
            await feed.revoke("short", time.time() + 0.4)
            await feed.revoke("long", time.time() + 300)
            await _within(lambda: not feed.is_revoked("short", time.time()), 1.5)
            await feed.resync()
            assert [e.jti for e in feed.entries()] == ["long"]
            assert len(feed) == 1  # gone from the snapshot, not only hidden
            with redis.Redis.from_url(redis_url) as client:  # and from Redis
                assert client.zrange(f"{prefix}:until", 0, -1) == [b"long"]
        finally:
            await feed.stop()

    asyncio.run(main())


def test_redis_never_shortens_and_ignores_bad_messages(redis_url: str, prefix: str) -> None:
    async def main() -> None:
        feed = RedisRevocations(redis_url, prefix, resync_interval=30)
        await _following(feed)
        try:
            long = time.time() + 600
            await feed.revoke("j", long)
            assert (await feed.revoke("j", time.time() + 60)).until == long
            with redis.Redis.from_url(redis_url) as client:
                assert client.zscore(f"{prefix}:until", "j") == long
                channel = f"{prefix}:events"
                client.publish(channel, json.dumps({"op": "revoke", "jti": "has space", "until": long}))
                client.publish(channel, json.dumps({"op": "unrevoke", "jti": "j"}))
                client.publish(channel, json.dumps({"op": "revoke", "jti": "j2", "until": "soon"}))
                client.publish(channel, "not json")
                client.publish(channel, json.dumps({"op": "revoke", "jti": "marker", "until": long}))
            await _within(lambda: feed.is_revoked("marker", time.time()), 1.5)  # all read by now
            assert [e.jti for e in feed.entries()] == ["j", "marker"]
        finally:
            await feed.stop()

    asyncio.run(main())


@pytest.mark.process
def test_redis_down_keeps_the_snapshot_and_refuses_writes() -> None:
    server = ThrowawayRedis()
    server.start()

    async def main() -> None:
        feed = RedisRevocations(f"redis://127.0.0.1:{server.port}/0", "x", timeout=0.5, resync_interval=0.2)
        await feed.start()
        try:
            await feed.revoke("known", time.time() + 300)
            server.kill()
            await asyncio.sleep(0.5)  # resyncs fail meanwhile
            assert feed.is_revoked("known", time.time())
            with pytest.raises(RevocationsUnavailable):
                await feed.revoke("new", time.time() + 300)
            assert not feed.is_revoked("new", time.time())  # nothing half-applied
        finally:
            await feed.stop()

    try:
        asyncio.run(main())
    finally:
        server.stop()


def test_redis_unreachable_at_start(refused_port: int) -> None:
    async def main() -> None:
        feed = RedisRevocations(f"redis://127.0.0.1:{refused_port}/0", timeout=0.5)
        await feed.start()  # logs, does not raise: the followers keep retrying
        try:
            assert feed.synced_at is None and not feed.is_revoked("j", time.time())
            with pytest.raises(RevocationsUnavailable):
                await feed.revoke("j", time.time() + 60)
        finally:
            await feed.stop()

    asyncio.run(main())


def test_every_component_builds_its_revocation_set_from_the_top_level_section() -> None:
    from garrison.config.common import RevocationsConfig
    from garrison.tokens.revocations import (
        MemoryRevocations,
        RedisRevocations,
        revocations_from_config,
    )

    memory = revocations_from_config(RevocationsConfig(max_entries=7), None)
    assert isinstance(memory, MemoryRevocations)
    shared = revocations_from_config(RevocationsConfig(storage="redis"), "redis://127.0.0.1:6379/0")
    assert isinstance(shared, RedisRevocations)
    with pytest.raises(ValueError, match=r"redis\.url"):
        revocations_from_config(RevocationsConfig(storage="redis"), None)
