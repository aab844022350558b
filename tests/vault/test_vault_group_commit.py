"""Group commit and per-secret locks on real storage (SQLite and PostgreSQL): concurrent writers share
one transaction, a failed commit fails every writer of its group and stores none of their rows, a
cancelled writer does not stop the others, check-and-set stays exact per secret while writes to other
secrets go ahead, and the lock table empties when no request is in flight."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from db_backend import Backend
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine

from garrison.vault.barrier import Keyring
from garrison.vault.kv import KvError, KvV2
from garrison.vault.storage import BarrierStorage, durable


def _run(backend: Backend, body: Callable[[BarrierStorage, list[int]], Awaitable[None]]) -> None:
    async def main(engine: AsyncEngine) -> None:
        commits: list[int] = []
        event.listen(engine.sync_engine, "commit", lambda _connection: commits.append(1))
        await body(BarrierStorage(durable(engine), Keyring.new()), commits)

    backend.run(main)


def test_concurrent_writers_share_commits_and_each_is_stored(backend: Backend) -> None:
    async def body(storage: BarrierStorage, commits: list[int]) -> None:
        await asyncio.gather(*(storage.put(f"w/{n}", f"value {n}".encode()) for n in range(100)))
        assert 1 <= len(commits) < 10  # one per group, not one per writer
        fresh = BarrierStorage(storage.engine, storage.keyring)  # no cache: what the database holds
        for n in range(100):
            assert await fresh.get(f"w/{n}") == f"value {n}".encode()
        # In one group the changes apply in arrival order, as if committed one after another.
        await asyncio.gather(
            storage.put("order/a", b"1"),
            storage.write({"order/a": b"2"}, ["order/b"]),
            storage.put("order/b", b"3"),
            storage.delete("order/a"),
            storage.put("order/c", b"4"),
        )
        fresh = BarrierStorage(storage.engine, storage.keyring)
        for reader in (storage, fresh):
            assert await reader.get("order/a") is None
            assert await reader.get("order/b") == b"3" and await reader.get("order/c") == b"4"

    _run(backend, body)


async def _poison(engine: AsyncEngine) -> None:
    async with engine.begin() as connection:
        if connection.dialect.name == "sqlite":
            await connection.execute(
                text(
                    "CREATE TRIGGER poison BEFORE INSERT ON vault_entries WHEN NEW.path = 'poison' "
                    "BEGIN SELECT RAISE(ABORT, 'poisoned'); END"
                )
            )
        else:
            await connection.execute(
                text(
                    "CREATE FUNCTION poison() RETURNS trigger AS $$ BEGIN IF NEW.path = 'poison' THEN "
                    "RAISE EXCEPTION 'poisoned'; END IF; RETURN NEW; END $$ LANGUAGE plpgsql"
                )
            )
            await connection.execute(
                text(
                    "CREATE TRIGGER poison BEFORE INSERT ON vault_entries FOR EACH ROW "
                    "EXECUTE FUNCTION poison()"
                )
            )


def test_a_failed_commit_fails_every_writer_of_its_group_and_stores_none(backend: Backend) -> None:
    async def body(storage: BarrierStorage, commits: list[int]) -> None:
        await storage.put("kept", b"before")
        await _poison(storage.engine)
        results = await asyncio.gather(
            storage.put("a", b"a"),
            storage.put("poison", b"p"),
            storage.write({"kept": b"after"}, ["x"]),
            return_exceptions=True,
        )
        assert all(isinstance(result, Exception) for result in results), results
        fresh = BarrierStorage(storage.engine, storage.keyring)
        for reader in (storage, fresh):
            assert await reader.get("a") is None and await reader.get("kept") == b"before"
        await storage.put("a", b"later")  # the next group commits
        assert await BarrierStorage(storage.engine, storage.keyring).get("a") == b"later"

    _run(backend, body)


def test_a_cancelled_writer_does_not_stop_its_group(backend: Backend) -> None:
    async def body(storage: BarrierStorage, commits: list[int]) -> None:
        first = asyncio.create_task(storage.put("first", b"1"))
        others = [asyncio.create_task(storage.put(f"other/{n}", b"2")) for n in range(5)]
        await asyncio.sleep(0)  # every writer queued; the commit task has started
        first.cancel()
        await asyncio.gather(*others)
        with pytest.raises(asyncio.CancelledError):
            await first
        fresh = BarrierStorage(storage.engine, storage.keyring)
        assert all([await fresh.get(f"other/{n}") == b"2" for n in range(5)])

    _run(backend, body)


class Clock:
    def __call__(self) -> float:
        return 1_800_000_000.0


def test_cas_is_exact_per_secret_and_other_secrets_do_not_wait(backend: Backend) -> None:
    async def body(storage: BarrierStorage, commits: list[int]) -> None:
        kv = KvV2(storage, "secret", Clock())
        racing: list[Any] = await asyncio.gather(
            *(kv.write("shared", {"data": {"n": n}, "options": {"cas": 0}}) for n in range(20)),
            return_exceptions=True,
        )
        won = [result for result in racing if not isinstance(result, BaseException)]
        assert len(won) == 1 and won[0]["version"] == 1
        assert all(isinstance(r, KvError) and r.status == 400 for r in racing if r is not won[0])
        written = await asyncio.gather(*(kv.write("counted", {"data": {"n": n}}) for n in range(15)))
        assert sorted(view["version"] for view in written) == list(range(1, 16))
        meta = await kv.read_metadata("counted")
        assert meta["current_version"] == 15 and list(meta["versions"]) == [str(n) for n in range(6, 16)]
        assert len(kv.locks) == 0  # bounded: no lock is kept for a secret nobody is writing
        async with kv.locks.hold("busy"):  # a write to "busy" waits; one to "free" commits meanwhile
            blocked = asyncio.create_task(kv.write("busy", {"data": {"ok": True}}))
            await asyncio.wait_for(kv.write("free", {"data": {"ok": True}}), timeout=30)
            assert not blocked.done() and len(kv.locks) == 1
        assert (await blocked)["version"] == 1 and len(kv.locks) == 0

    _run(backend, body)
