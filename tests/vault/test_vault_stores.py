"""The token store and the KV engine on real storage (SQLite and PostgreSQL), with an injected clock:
expiry, renewal limits, delete_version_after, and the barrier's view of the rows."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from db_backend import Backend
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from garrison.vault.barrier import BarrierError, Keyring
from garrison.vault.kv import KvError, KvV2
from garrison.vault.storage import BarrierStorage
from garrison.vault.tables import entries
from garrison.vault.tokens import TokenError, TokenStore


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def _run(backend: Backend, body: Callable[[BarrierStorage, Clock], Awaitable[None]]) -> None:
    async def main(engine: AsyncEngine) -> None:
        await body(BarrierStorage(engine, Keyring.new()), Clock())

    backend.run(main)


def test_tokens_expire_renew_within_limits_and_are_stored_as_digests(backend: Backend) -> None:
    async def body(storage: BarrierStorage, clock: Clock) -> None:
        tokens = TokenStore(storage, clock, default_ttl=600, max_ttl=3600)
        root_token, root = await tokens.create_root()
        token, entry = await tokens.create(
            root, {"policies": ["app"], "ttl": "10m", "explicit_max_ttl": "30m"}
        )
        assert entry.policies == ["app", "default"] and entry.ttl == 600
        paths = await storage.list("sys/token/")
        assert not any(token in path or root_token in path for path in paths)
        async with storage.engine.connect() as connection:
            raw = b"".join(bytes(row[0]) for row in await connection.execute(select(entries.c.value)))
        assert token.encode() not in raw and root_token.encode() not in raw
        clock.now += 500
        renewed = await tokens.renew(entry, 3600)
        assert renewed.expire_time == entry.creation_time + 1800  # explicit_max_ttl caps renewals
        clock.now = entry.creation_time + 1800
        assert await tokens.lookup(token) is None  # expired, and dropped
        assert await tokens.lookup_accessor(entry.accessor) is None
        assert await tokens.lookup(root_token) is not None  # the root token does not expire
        with pytest.raises(TokenError):
            await tokens.create(renewed, {"policies": ["other"]})

    _run(backend, body)


def test_kv_delete_version_after_and_max_versions_on_storage(backend: Backend) -> None:
    async def body(storage: BarrierStorage, clock: Clock) -> None:
        kv = KvV2(storage, "secret", clock)
        await kv.write_config({"max_versions": 3, "delete_version_after": "1h"})
        for i in range(5):
            await kv.write("a/b", {"data": {"v": i}})
        meta = await kv.read_metadata("a/b")
        assert sorted(meta["versions"]) == ["3", "4", "5"] and meta["oldest_version"] == 3
        assert len(await storage.list("kv/secret/data/a/b#")) == 3  # trimmed versions are gone
        assert (await kv.read("a/b", None))["data"] == {"v": 4}
        clock.now += 3600
        with pytest.raises(KvError) as deleted:
            await kv.read("a/b", None)
        assert deleted.value.status == 404 and deleted.value.body is not None
        await kv.write("a/b/c", {"data": {"v": "below"}})
        assert await kv.list("a") == ["b", "b/"]
        await kv.delete_metadata("a/b")
        assert await kv.list("a") == ["b/"]
        assert (await kv.read_metadata("a/b/c"))["current_version"] == 1

    _run(backend, body)


def test_a_row_copied_to_another_path_fails_to_decrypt(backend: Backend) -> None:
    async def body(storage: BarrierStorage, clock: Clock) -> None:
        del clock
        await storage.write({"x/one": b"first", "x/two": b"second"})
        async with storage.engine.begin() as connection:
            one = (
                await connection.execute(select(entries.c.value).where(entries.c.path == "x/one"))
            ).scalar_one()
            await connection.execute(entries.update().where(entries.c.path == "x/two").values(value=one))
        assert await storage.get("x/two") == b"second"  # this process's cache holds what it wrote
        fresh = BarrierStorage(storage.engine, storage.keyring)  # as after a restart: read from the rows
        assert await fresh.get("x/one") == b"first"
        with pytest.raises(BarrierError):
            await fresh.get("x/two")
        assert await storage.list("x/") == ["x/one", "x/two"]
        assert await storage.list("X/") == []  # SQLite's LIKE ignores case; the listing does not
        assert await storage.list("x%") == []  # LIKE wildcards in a prefix match themselves only

    _run(backend, body)


def test_the_read_cache_follows_writes_and_stays_bounded(backend: Backend) -> None:
    async def body(storage: BarrierStorage, clock: Clock) -> None:
        del clock
        small = BarrierStorage(storage.engine, storage.keyring, max_cached=2)
        await small.write({"c/1": b"1", "c/2": b"2", "c/3": b"3"})
        assert len(small._cache) == 2 and "c/1" not in small._cache
        assert await small.get("c/1") == b"1"  # read back from the database
        await small.write({"c/1": b"one"}, ["c/2"])
        assert await small.get("c/1") == b"one" and await small.get("c/2") is None

        async def read_while_writing() -> None:
            reader = asyncio.create_task(small.get("c/3"))
            await small.put("c/3", b"three")
            await reader
            assert await small.get("c/3") == b"three"  # never the older row the reader may have seen

        small._cache.clear()
        await read_while_writing()

    _run(backend, body)


def test_rotation_while_entries_exist(backend: Backend) -> None:
    async def body(storage: BarrierStorage, clock: Clock) -> None:
        del clock
        await storage.put("p/old", b"old")
        storage.keyring.rotate()
        await storage.put("p/new", b"new")
        assert await storage.get("p/old") == b"old" and await storage.get("p/new") == b"new"

    _run(backend, body)
