"""The vault's storage: rows of ``vault_entries`` and ``vault_core`` on the SQL store, and the barrier
view of them (every value sealed under the keyring, the path as associated data).

Reads go through a cache of the stored ciphertexts (as Vault's physical cache): the vault is the only
writer of its storage (one process per database), every write updates the cache after its commit, so
a read costs a decryption (~10 us), not a database round trip (~1 ms through aiosqlite's thread).
Only ciphertexts are kept, never plaintext, and the cache is bounded (least recently used out).

A write is one transaction, committed before the caller answers: an acknowledged write survives a
``kill -9`` (SQLite in WAL mode with ``synchronous=FULL`` syncs the log at each commit; PostgreSQL
commits durably by default). ``write`` takes several puts and deletes at once so that a KV version
and its metadata change together or not at all.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import delete, event, select
from sqlalchemy.ext.asyncio import AsyncEngine

from garrison.store.db import dialect_insert
from garrison.vault.barrier import Keyring
from garrison.vault.tables import core, entries

__all__ = ["MAX_CACHED", "BarrierStorage", "CoreStorage", "durable"]

MAX_CACHED = 50_000  # stored entries whose ciphertext is kept in memory (a few KiB each at most)


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


class BarrierStorage:
    """Entries sealed under the keyring; reads of a tampered or moved entry raise BarrierError."""

    def __init__(self, engine: AsyncEngine, keyring: Keyring, max_cached: int = MAX_CACHED) -> None:
        self.engine = engine
        self.keyring = keyring
        self.max_cached = max_cached
        self._cache: OrderedDict[str, bytes] = OrderedDict()  # path -> ciphertext, as stored
        self._writes = 0  # committed writes so far: a read that overlapped one does not fill the cache

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
        """Puts and deletes in one transaction, committed when this returns."""
        sealed = {path: self.keyring.encrypt(path, value) for path, value in puts.items()}
        async with self.engine.begin() as connection:
            insert = dialect_insert(connection.dialect.name)
            for path, blob in sealed.items():
                statement = insert(entries).values(path=path, value=blob)
                statement = statement.on_conflict_do_update(
                    index_elements=[entries.c.path], set_={"value": blob}
                )
                await connection.execute(statement)
            if deletes:
                await connection.execute(delete(entries).where(entries.c.path.in_(list(deletes))))
        # Committed: only now does the cache follow (a failed transaction leaves it as the database is).
        self._writes += 1
        for path, blob in sealed.items():
            self._remember(path, blob)
        for path in deletes:
            self._cache.pop(path, None)

    async def list(self, prefix: str) -> list[str]:
        """Every stored path that starts with ``prefix`` (not decrypted), in order."""
        # LIKE with the prefix escaped (a % or _ in it matches itself), then checked again here:
        # SQLite's LIKE ignores ASCII case, and "Secret/" must not list under "secret/".
        query = select(entries.c.path).where(entries.c.path.startswith(prefix, autoescape=True))
        async with self.engine.connect() as connection:
            rows = await connection.execute(query.order_by(entries.c.path))
        return [row[0] for row in rows if row[0].startswith(prefix)]
