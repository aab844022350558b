"""What the CA publishes to every sidecar: revoked identities, quarantined services, the trust bundle.

One version number covers all three (``mesh_state``); it moves on every revocation, reinstatement,
quarantine, release and bundle change, and sidecars long-poll ``/v1/state?after=N`` for the next one.
The version is kept in the database, so a restarted CA continues from where it was and a sidecar's
``after`` never points into the future.

Changes made in this process wake the long-polls at once (``changed``); changes made elsewhere (the
CLI on the files or the database while the CA was down, a root rotation on the files while it runs)
are found by ``refresh``, which the CA calls every second.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from garrison.mesh.ca.issuer import Issuer
from garrison.mesh.ca.tables import quarantine, state
from garrison.pki.authority_files import AuthorityFiles
from garrison.telemetry import logging as log

__all__ = ["MAX_QUARANTINED", "CaState", "Snapshot"]

MAX_QUARANTINED = 10_000
REASON_LENGTH = 200


@dataclass(frozen=True)
class Snapshot:
    version: int
    trust_bundle: bytes
    revoked: tuple[str, ...]
    quarantined: tuple[str, ...]

    def to_json(self) -> dict[str, object]:
        return {
            "version": self.version,
            "trust_bundle": self.trust_bundle.decode("ascii"),
            "revoked": list(self.revoked),
            "quarantined": list(self.quarantined),
        }


class CaState:
    """The published state and the changes to it (the admin API and the CLI call these)."""

    def __init__(
        self, engine: AsyncEngine, files: AuthorityFiles, issuer: Issuer, clock: Callable[[], dt.datetime]
    ) -> None:
        self._engine = engine
        self._files = files
        self._issuer = issuer
        self._clock = clock
        self._snapshot = Snapshot(0, b"", (), ())
        self._changed = asyncio.Condition()
        self._stopping = False

    @property
    def snapshot(self) -> Snapshot:
        return self._snapshot

    async def refresh(self) -> Snapshot:
        """Read the state again; a bundle changed on disk moves the version. Wakes the long-polls
        when the version moved. The lists are read only when the version moved (this runs every
        second, and there may be many revoked identities)."""
        bundle = self._files.bundle_file.read_bytes()
        digest = hashlib.sha256(bundle).hexdigest()
        async with self._engine.begin() as connection:
            row = (await connection.execute(select(state.c.version, state.c.bundle_digest))).first()
            if row is None:
                version = 1
                await connection.execute(insert(state).values(id=1, version=1, bundle_digest=digest))
            elif row.bundle_digest != digest:
                version = await self._bump(connection, digest)
                log.log("mesh.ca.bundle_changed", version=version)
            else:
                version = int(row.version)
            previous = self._snapshot
            if version == previous.version:
                return previous
            quarantined = await connection.execute(
                select(quarantine.c.service).order_by(quarantine.c.service)
            )
            services = tuple(row.service for row in quarantined)
        revoked = tuple(await self._issuer.revoked())
        self._snapshot = Snapshot(version, bundle, revoked, services)
        async with self._changed:
            self._changed.notify_all()
        return self._snapshot

    async def wait_after(self, after: int, timeout: float) -> Snapshot:
        """The state once its version is past ``after``, or the current one after ``timeout`` s."""
        async with self._changed:
            try:
                async with asyncio.timeout(timeout):
                    await self._changed.wait_for(lambda: self._stopping or self._snapshot.version > after)
            except TimeoutError:
                pass
        return self._snapshot

    async def wake_all(self) -> None:
        """Answer every long-poll now (the CA is stopping)."""
        self._stopping = True
        async with self._changed:
            self._changed.notify_all()

    # -- changes ---------------------------------------------------------------------------------

    async def revoke(self, spiffe_id: str, reason: str) -> None:
        await self._issuer.revoke(spiffe_id, reason)
        await self._moved()

    async def reinstate(self, spiffe_id: str) -> bool:
        changed = await self._issuer.reinstate(spiffe_id)
        if changed:
            await self._moved()
        return changed

    async def quarantine(self, service: str, reason: str) -> None:
        """Cut ``service`` off from every peer (its sidecar and theirs refuse its calls)."""
        async with self._engine.begin() as connection:
            known = await connection.scalar(
                select(quarantine.c.service).where(quarantine.c.service == service)
            )
            if known is None:
                beyond_cap = select(quarantine.c.service).limit(1).offset(MAX_QUARANTINED - 1)
                if await connection.scalar(beyond_cap) is not None:
                    raise ValueError(f"{MAX_QUARANTINED} services are quarantined (the cap)")
            await connection.execute(delete(quarantine).where(quarantine.c.service == service))
            await connection.execute(
                insert(quarantine).values(
                    service=service, quarantined_at=self._clock(), reason=reason[:REASON_LENGTH]
                )
            )
        log.log("mesh.ca.quarantined", service=service, reason=reason[:REASON_LENGTH])
        await self._moved()

    async def unquarantine(self, service: str) -> bool:
        async with self._engine.begin() as connection:
            gone = await connection.execute(delete(quarantine).where(quarantine.c.service == service))
        if gone.rowcount:
            log.log("mesh.ca.unquarantined", service=service)
            await self._moved()
        return bool(gone.rowcount)

    async def _moved(self) -> None:
        async with self._engine.begin() as connection:
            row = (await connection.execute(select(state.c.bundle_digest))).first()
            if row is not None:
                await self._bump(connection, row.bundle_digest)
        await self.refresh()

    async def _bump(self, connection: AsyncConnection, digest: str) -> int:
        await connection.execute(update(state).values(version=state.c.version + 1, bundle_digest=digest))
        version = await connection.scalar(select(state.c.version))
        assert isinstance(version, int)
        return version
