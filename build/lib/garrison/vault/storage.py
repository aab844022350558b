"""The vault's storage: rows of ``vault_entries`` and ``vault_core`` on the SQL store, and the barrier
view of them (every value sealed under the keyring, the path as associated data).

Reads go through a cache of the stored ciphertexts (as Vault's physical cache): the vault is the only
writer of its storage (one process per database), every write updates the cache after its commit, so
a read costs a decryption (~10 us), not a database round trip (~1 ms through aiosqlite's thread).
Only ciphertexts are kept, never plaintext, and the cache is bounded (least recently used out).

A write is committed before the caller answers: an acknowledged write survives a ``kill -9`` (SQLite
in WAL mode with ``synchronous=FULL`` syncs the log at each commit; PostgreSQL commits durably by
default). ``write`` takes several puts and deletes at once so that a KV version and its metadata change
together or not at all.

Writes are group-committed, as a raft log batches entries: the cost of a write is the disk sync of its
commit, so writers that arrive while a commit is in flight wait for the next one and share it (one
transaction, one sync). Each writer is answered only after the commit that holds its rows succeeded; a
failed commit fails every writer in its group and none of their rows is stored or cached. Within a
group the writers' changes apply in arrival order (the last change to a path wins), which is exactly
the outcome of committing them one after another.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import delete, event, select
from sqlalchemy.ext.asyncio import AsyncEngine

from garrison.store.db import dialect_insert
from garrison.vault.barrier import Keyring
from garrison.vault.tables import core, entries

__all__ = ["MAX_CACHED", "MAX_GROUP", "BarrierStorage", "CoreStorage", "StorageError", "durable"]

MAX_CACHED = 50_000  # stored entries whose ciphertext is kept in memory (a few KiB each at most)
MAX_GROUP = 256  # writers in one commit: bounds a transaction's size when many wait at once


def durable(engine: AsyncEngine) -> AsyncEngine:
    """``engine`` with SQLite's ``synchronous=FULL`` on every connection (said outright rather than
    left to the build's default): a commit is on disk before it returns."""
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine.sync_engine, "connect")
        def _full_sync(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            try:
                cursor.execute("PRAGMA synchronous=FULL")
            finally:
                cursor.close()

    return engine


class CoreStorage:
    """``vault_core``: the seal configuration and the sealed root key and keyring."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def get(self, name: str) -> bytes | None:
        async with self.engine.connect() as connection:
            row = (await connection.execute(select(core.c.value).where(core.c.name == name))).first()
        return bytes(row[0]) if row is not None else None

    async def put_many(self, values: Mapping[str, bytes]) -> None:
        async with self.engine.begin() as connection:
            insert = dialect_insert(connection.dialect.name)
            for name, value in values.items():
                statement = insert(core).values(name=name, value=value)
                statement = statement.on_conflict_do_update(
                    index_elements=[core.c.name], set_={"value": value}
                )
                await connection.execute(statement)


class StorageError(Exception):
    """A write's commit did not happen (it was interrupted)."""


@dataclass
class _Pending:
    """One writer's rows waiting for a group commit, and the future that answers it."""

    puts: dict[str, bytes]
    deletes: tuple[str, ...]
    done: asyncio.Future[None] = field(repr=False)


class BarrierStorage:
    """Entries sealed under the keyring; reads of a tampered or moved entry raise BarrierError."""

    def __init__(self, engine: AsyncEngine, keyring: Keyring, max_cached: int = MAX_CACHED) -> None:
        self.engine = engine
        self.keyring = keyring
        self.max_cached = max_cached
        self._cache: OrderedDict[str, bytes] = OrderedDict()  # path -> ciphertext, as stored
        self._writes = 0  # commits so far: a read that overlapped one does not fill the cache
        self._queue: list[_Pending] = []  # writers waiting for the next commit, in arrival order
        self._committer: asyncio.Task[None] | None = None  # the task committing groups, while any wait

    async def get(self, path: str) -> bytes | None:
        blob = self._cache.get(path)
        if blob is not None:
            self._cache.move_to_end(path)
        else:
            writes = self._writes
            async with self.engine.connect() as connection:
                query = select(entries.c.value).where(entries.c.path == path)
                row = (await connection.execute(query)).first()
            if row is None:
                return None
            blob = bytes(row[0])
            if writes == self._writes:  # else the row read may predate a write committed meanwhile
                self._remember(path, blob)
        return self.keyring.decrypt(path, blob)

    def _remember(self, path: str, blob: bytes) -> None:
        self._cache[path] = blob
        self._cache.move_to_end(path)
        while len(self._cache) > self.max_cached:
            self._cache.popitem(last=False)

    async def put(self, path: str, value: bytes) -> None:
        await self.write({path: value})

    async def delete(self, path: str) -> None:
        await self.write({}, [path])

    async def write(self, puts: Mapping[str, bytes], deletes: Sequence[str] = ()) -> None:
        """Puts and deletes in one transaction, committed when this returns (with other writers' rows,
        when they arrive during a commit: see the module's docstring)."""
        sealed = {path: self.keyring.encrypt(path, value) for path, value in puts.items()}
        pending = _Pending(sealed, tuple(deletes), asyncio.get_running_loop().create_future())
        self._queue.append(pending)
        if self._committer is None:
            # A task of its own, not the first writer's: a writer cancelled while waiting (its client
            # gone) must not take the commit of everyone else's rows with it.
            self._committer = asyncio.create_task(self._commit_groups())
        # Shielded: a cancelled writer stops waiting, the group's commit goes on for the others.
        await asyncio.shield(pending.done)

    async def _commit_groups(self) -> None:
        group: list[_Pending] = []
        try:
            while self._queue:
                group, self._queue = self._queue[:MAX_GROUP], self._queue[MAX_GROUP:]
                try:
                    final = await self._commit(group)
                except Exception as exc:  # handed to every writer of the group
                    self._forget(group)
                    _fail(group, exc)
                    continue
                self._writes += 1
                for path, blob in final.items():
                    if blob is None:
                        self._cache.pop(path, None)
                    else:
                        self._remember(path, blob)
                for pending in group:
                    if not pending.done.done():
                        pending.done.set_result(None)
        except BaseException:
            # Cancelled (the vault shutting down) mid-commit: whatever was in flight is not acknowledged.
            self._forget(group)
            _fail([*group, *self._queue], StorageError("the commit was interrupted"))
            self._queue = []
            raise
        finally:
            self._committer = None

    def _forget(self, group: list[_Pending]) -> None:
        """After a failed commit whose outcome may be unknown (a lost connection during COMMIT): the
        group's paths are read from the database again, and reads in flight do not fill the cache."""
        self._writes += 1
        for pending in group:
            for path in [*pending.puts, *pending.deletes]:
                self._cache.pop(path, None)

    async def _commit(self, group: list[_Pending]) -> dict[str, bytes | None]:
        """The group's rows in one transaction; returns each path's final change (None: deleted)."""
        final: dict[str, bytes | None] = {}  # in arrival order, the last change to a path wins
        for pending in group:
            final.update(pending.puts)
            final.update(dict.fromkeys(pending.deletes))
        puts = [{"path": path, "value": blob} for path, blob in final.items() if blob is not None]
        deletes = [path for path, blob in final.items() if blob is None]
        async with self.engine.begin() as connection:
            if puts:
                insert = dialect_insert(connection.dialect.name)(entries)
                upsert = insert.on_conflict_do_update(
                    index_elements=[entries.c.path], set_={"value": insert.excluded.value}
                )
                await connection.execute(upsert, puts)
            if deletes:
                await connection.execute(delete(entries).where(entries.c.path.in_(deletes)))
        return final

    async def list(self, prefix: str) -> list[str]:
        """Every stored path that starts with ``prefix`` (not decrypted), in order."""
        # LIKE with the prefix escaped (a % or _ in it matches itself), then checked again here:
        # SQLite's LIKE ignores ASCII case, and "Secret/" must not list under "secret/".
        query = select(entries.c.path).where(entries.c.path.startswith(prefix, autoescape=True))
        async with self.engine.connect() as connection:
            rows = await connection.execute(query.order_by(entries.c.path))
        return [row[0] for row in rows if row[0].startswith(prefix)]


def _fail(group: list[_Pending], error: Exception) -> None:
    for pending in group:
        if not pending.done.done():
            pending.done.set_exception(error)
        if pending.done.done() and not pending.done.cancelled():
            pending.done.exception()  # marked retrieved: a writer that stopped waiting logs no warning
