"""API keys: format, header extraction, ApiKeyStore and ApiKeyCache on SQLite and a real PostgreSQL."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import pytest
from db_backend import Backend
from sqlalchemy import event, text

from garrison.gateway.auth.apikeys import (
    KEY_LENGTH,
    ApiKeyCache,
    ApiKeyNotFound,
    ApiKeyRecord,
    ApiKeyStore,
    digest_api_key,
    extract_api_key,
    generate_api_key,
    parse_api_key,
)


@asynccontextmanager
async def open_store(backend: Backend) -> AsyncIterator[ApiKeyStore]:
    """A store on an engine of its own (as another process would have), disposed at the end."""
    async with backend.tables() as engine:
        yield ApiKeyStore(engine)


def _other_secret(key: str) -> str:
    """The same prefix with a different, well-formed secret."""
    last = "A" if key[-1] != "A" else "B"
    return key[:-1] + last


MALFORMED = [
    "",
    "gk_",
    "gk_abcdefgh_",
    "sk_abcdefgh_" + "a" * 43,  # wrong product prefix
    "GK_abcdefgh_" + "a" * 43,
    "gk_ABCDEFGH_" + "a" * 43,  # prefix alphabet is [a-z0-9]
    "gk_abcdefg_" + "a" * 44,  # prefix too short
    "gk_abcdefgh-" + "a" * 43,
    "gk_abcdefgh_" + "a" * 42,  # secret too short
    "gk_abcdefgh_" + "a" * 44,  # too long
    "gk_abcdefgh_" + "a" * 42 + "é",  # non-ASCII
    "gk_abcdefgh_" + "a" * 42 + "=",
    "gk_abcdefgh_" + "a" * 42 + "\x00",
    " gk_abcdefgh_" + "a" * 42,
    "gk_abcdefgh_" + "a" * 10_000_000,  # huge
]


# -- format and parsing (no database) ---------------------------------------------------------------------


def test_key_format_and_entropy() -> None:
    keys = [generate_api_key() for _ in range(300)]
    secrets_bytes = b""
    for key, prefix in keys:
        assert len(key) == KEY_LENGTH
        assert parse_api_key(key) == prefix
        assert key.startswith(f"gk_{prefix}_")
        secret = key[len("gk_") + 8 + 1 :]
        raw = base64.urlsafe_b64decode(secret + "=")
        assert len(raw) * 8 >= 256
        secrets_bytes += raw
    assert len({key for key, _ in keys}) == len(keys)
    assert len({prefix for _, prefix in keys}) == len(keys)
    ones = sum(bin(byte).count("1") for byte in secrets_bytes)
    assert abs(ones / (len(secrets_bytes) * 8) - 0.5) < 0.01  # 76800 bits: ~0.18% standard deviation
    assert len(set(secrets_bytes)) == 256


@pytest.mark.parametrize("presented", MALFORMED, ids=range(len(MALFORMED)))
def test_malformed_keys_do_not_parse(presented: str) -> None:
    assert parse_api_key(presented) is None


def test_digest_is_sha256_hex_of_the_whole_key() -> None:
    key, _ = generate_api_key()
    digest = digest_api_key(key)
    assert len(digest) == 64 and digest != digest_api_key(_other_secret(key))


def test_extract_api_key() -> None:
    key, _ = generate_api_key()
    other, _ = generate_api_key()
    raw = key.encode()
    assert extract_api_key([], []) is None
    assert extract_api_key([b"ApiKey " + raw], []) == key
    assert extract_api_key([b"apikey   " + raw + b" "], []) == key
    assert extract_api_key([], [raw]) == key
    assert extract_api_key([b"ApiKey " + raw], [raw]) == key  # the same key twice is one key
    assert extract_api_key([b"Bearer eyJhbGciOi.x.y"], []) is None  # not ours
    assert extract_api_key([b"ApiKey"], [b"  "]) is None
    with pytest.raises(ValueError):
        extract_api_key([b"ApiKey " + raw], [other.encode()])
    with pytest.raises(ValueError):
        extract_api_key([], [raw, other.encode()])
    with pytest.raises(ValueError):
        extract_api_key([], [raw + b", " + other.encode()])
    with pytest.raises(ValueError):
        extract_api_key([b"ApiKey " + raw, b"ApiKey " + other.encode()], [])
    # non-ASCII bytes come through as text that no lookup accepts
    odd = extract_api_key([], [b"gk_\xff"])
    assert odd is not None and parse_api_key(odd) is None


def test_record_has_no_digest_field() -> None:
    assert "digest" not in {field.name for field in dataclasses.fields(ApiKeyRecord)}


# -- ApiKeyStore on both databases ------------------------------------------------------------------------


def test_create_verify_list(backend: Backend) -> None:
    async def main() -> None:
        async with open_store(backend) as store:
            key, record = await store.create("ci", ["orders:read", "orders:write", "orders:read"])
            assert record.name == "ci" and record.scopes == ("orders:read", "orders:write")
            assert record.expires_at is None and record.revoked_at is None
            assert record.status() == "active"
            assert key.startswith(f"gk_{record.prefix}_")

            verified = await store.verify(key)
            assert verified == record
            assert await store.verify(_other_secret(key)) is None  # right prefix, wrong secret
            unknown, _ = generate_api_key()
            assert await store.verify(unknown) is None

            second_key, second = await store.create("billing", [])
            listed = await store.list()
            assert [r.prefix for r in listed] == [record.prefix, second.prefix]
            assert listed[0] == record
            assert (await store.verify(second_key)) == second

    asyncio.run(main())


def test_revoke_by_prefix_and_by_name(backend: Backend) -> None:
    async def main() -> None:
        async with open_store(backend) as store:
            old_key, old = await store.create("ci", ["a"])
            new_key, new = await store.create("ci", ["a"])
            other_key, other = await store.create("billing", ["b"])

            revoked = await store.revoke(old.prefix)
            assert [r.prefix for r in revoked] == [old.prefix]
            assert revoked[0].revoked_at is not None and revoked[0].status() == "revoked"
            assert await store.verify(old_key) is None
            assert await store.verify(new_key) is not None

            again = await store.revoke(old.prefix)  # idempotent: the first revocation time stays
            assert again[0].revoked_at == revoked[0].revoked_at

            by_name = await store.revoke("ci")
            assert {r.prefix for r in by_name} == {old.prefix, new.prefix}
            assert await store.verify(new_key) is None
            assert await store.verify(other_key) == other

            # a prefix wins over a name that happens to spell it
            _, lookalike = await store.create(other.prefix, [])
            assert [r.prefix for r in await store.revoke(other.prefix)] == [other.prefix]
            assert await store.verify(other_key) is None
            assert [r.prefix for r in await store.revoke(other.prefix)] == [other.prefix]
            await store.revoke(lookalike.prefix)

            with pytest.raises(ApiKeyNotFound):
                await store.revoke("nobody")
            statuses = {r.prefix: r.status() for r in await store.list()}
            assert statuses == {
                old.prefix: "revoked",
                new.prefix: "revoked",
                other.prefix: "revoked",
                lookalike.prefix: "revoked",
            }

    asyncio.run(main())


def test_expire_and_expires_in(backend: Backend) -> None:
    async def main() -> None:
        async with open_store(backend) as store:
            key, record = await store.create("temp", ["a"], expires_in=3600)
            assert record.expires_at is not None
            assert timedelta(minutes=59) < record.expires_at - record.created_at <= timedelta(hours=1)
            assert await store.verify(key) is not None
            assert await store.verify(key, now=record.expires_at) is None
            assert await store.verify(key, now=record.expires_at - timedelta(seconds=1)) is not None

            other_key, other = await store.create("forever", [])
            (expired,) = await store.expire(other.prefix)
            assert expired.expires_at is not None and expired.status() == "expired"
            assert await store.verify(other_key) is None
            with pytest.raises(ApiKeyNotFound):
                await store.expire("gone")

            with pytest.raises(ValueError):
                await store.create("bad", [], expires_in=0)
            with pytest.raises(ValueError):
                await store.create("", [])
            with pytest.raises(ValueError):
                await store.create("spaces in name", [])
            with pytest.raises(ValueError):
                await store.create("ok", ["has space"])
            with pytest.raises(ValueError):
                await store.create("ok", "orders:read")  # a str is a Sequence[str]: refused anyway

    asyncio.run(main())


def test_malformed_keys_never_reach_the_database(backend: Backend) -> None:
    async def main() -> None:
        async with open_store(backend) as store:
            key, _ = await store.create("ci", [])
            statements: list[str] = []

            def count(*args: Any) -> None:
                statements.append(args[2])

            event.listen(store.engine.sync_engine, "before_cursor_execute", count)
            for presented in MALFORMED:
                assert await store.verify(presented) is None
            assert statements == []
            assert await store.verify(key) is not None
            assert len(statements) == 1

    asyncio.run(main())


def test_digest_never_listed_or_shown(backend: Backend) -> None:
    async def main() -> None:
        async with open_store(backend) as store:
            key, record = await store.create("ci", ["orders:read"])
            digest = digest_api_key(key)
            secret = key[len("gk_") + 8 + 1 :]
            listed = await store.list()
            verified = await store.verify(key)
            for shown in (repr(record), str(record), repr(listed), repr(verified)):
                assert digest not in shown and digest[:16] not in shown
                assert secret not in shown and key not in shown
            async with store.engine.connect() as connection:
                stored = (await connection.execute(text("SELECT * FROM api_keys"))).one()
            assert digest in stored  # only the digest is stored, never the key or the secret
            assert key not in stored and secret not in stored

    asyncio.run(main())


def test_fifty_concurrent_verifies(backend: Backend) -> None:
    async def main() -> None:
        async with open_store(backend) as store:
            good = [(await store.create(f"k{i}", ["s"]))[0] for i in range(5)]
            revoked_key, revoked = await store.create("revoked", [])
            await store.revoke(revoked.prefix)
            presented = [good[i % 5] if i % 3 else _other_secret(good[i % 5]) for i in range(48)]
            presented += [revoked_key, "gk_nothing"]
            results = await asyncio.gather(*(store.verify(p) for p in presented))
            for key, result in zip(presented, results, strict=True):
                if key in good:
                    assert result is not None and key.startswith(f"gk_{result.prefix}_")
                else:
                    assert result is None

    asyncio.run(main())


# -- ApiKeyCache: the hot path ----------------------------------------------------------------------------


def test_cache_lookup_is_sync_and_checks_the_digest(backend: Backend) -> None:
    async def main() -> None:
        async with open_store(backend) as store:
            key, record = await store.create("ci", ["orders:read"])
            soon_key, _ = await store.create("soon", [], expires_in=0.3)
            ahead = [0.0]  # the cache's clock runs this far ahead of the wall clock the store dates keys on
            cache = ApiKeyCache(store, refresh_interval=0.1, clock=lambda: time.time() + ahead[0])
            await cache.start()
            try:
                assert cache.lookup(key) == record
                assert cache.lookup(_other_secret(key)) is None
                for presented in MALFORMED:
                    assert cache.lookup(presented) is None
                assert cache.lookup(soon_key) is not None
                ahead[0] = 0.35  # past the 0.3 s expiry: it is checked on lookup, no reload needed
                assert cache.lookup(soon_key) is None
            finally:
                await cache.stop()
                await cache.stop()  # idempotent

    asyncio.run(main())


async def _until(condition: Any, timeout: float) -> float:
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not within {timeout} s")
        await asyncio.sleep(0.02)
    return time.monotonic() - started


def test_revocation_elsewhere_reaches_another_worker_within_two_seconds(backend: Backend) -> None:
    """Worker A and worker B each have an engine and a cache; the CLI revokes through a third engine."""

    async def main() -> None:
        async with (
            open_store(backend) as cli,
            open_store(backend) as worker_a,
            open_store(backend) as worker_b,
        ):
            key, record = await cli.create("ci", ["orders:read"])
            caches = [ApiKeyCache(worker_a), ApiKeyCache(worker_b)]  # default 1 s polling
            for cache in caches:
                await cache.start()
            try:
                assert all(cache.lookup(key) == record for cache in caches)

                await cli.revoke(record.prefix)
                for cache in caches:
                    assert await _until(lambda c=cache: c.lookup(key) is None, 2.0) < 2.0

                new_key, _ = await cli.create("ci-2", [])  # new keys appear the same way
                await _until(lambda: caches[1].lookup(new_key) is not None, 2.0)
                await cli.expire("ci-2")
                await _until(lambda: caches[1].lookup(new_key) is None, 2.0)
            finally:
                for cache in caches:
                    await cache.stop()

    asyncio.run(main())


def test_cache_fails_closed_when_the_database_stays_unreadable(backend: Backend) -> None:
    async def main() -> None:
        async with open_store(backend) as store:
            key, _ = await store.create("ci", [])
            cache = ApiKeyCache(store, refresh_interval=0.05, max_staleness=0.5)
            await cache.start()
            try:
                assert cache.lookup(key) is not None
                async with store.engine.begin() as connection:
                    await connection.execute(text("DROP TABLE api_keys"))
                await asyncio.sleep(0.2)
                assert cache.lookup(key) is not None  # a short outage: the snapshot still serves
                await _until(lambda: cache.lookup(key) is None, 2.0)
            finally:
                await cache.stop()

    asyncio.run(main())


def test_cache_staleness_uses_the_injected_clock(backend: Backend) -> None:
    async def main() -> None:
        async with open_store(backend) as store:
            key, _ = await store.create("ci", [])
            now = [1_000.0]
            cache = ApiKeyCache(store, max_staleness=30.0, clock=lambda: now[0])
            assert cache.lookup(key) is None  # never loaded: nothing is valid
            await cache.refresh()
            assert cache.lookup(key) is not None
            now[0] += 31
            assert cache.lookup(key) is None
            assert await cache.refresh() is False  # nothing changed in the table, but it was read
            assert cache.lookup(key) is not None

    asyncio.run(main())
