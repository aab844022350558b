"""The transit engine's state: named keys in the barrier storage, kept parsed in memory while unsealed.

Each key is one barrier entry, ``transit/policy/<name>`` (Vault's own layout under the mount), so key
material is encrypted at rest under the keyring like every other secret and goes when the vault
seals (the engine belongs to the ``Unsealed`` object that sealing drops). Keys are parsed once and
kept: encryption then costs an AEAD call, not a storage read. Changes (create, rotate, config,
delete) run under one lock and build a new ``TransitKey`` that replaces the cached one only after the
write has committed, so a concurrent encryption uses either the old state or the new, never half of
one, and a failed write changes nothing.
"""

from __future__ import annotations

import asyncio
import json
import re
import weakref
from collections.abc import Callable
from typing import Any

from garrison.vault.storage import BarrierStorage
from garrison.vault.transit_keys import AEAD_TYPES, KEY_TYPES, TransitError, TransitKey

__all__ = ["KEY_NAME", "Transit", "transit_for"]

PREFIX = "transit/policy/"
KEY_NAME = re.compile(r"\w(?:[\w.-]*\w)?", re.ASCII)  # Vault's GenericNameRegex
MAX_KEYS_CACHED = 10_000

_ENGINES: weakref.WeakKeyDictionary[object, Transit] = weakref.WeakKeyDictionary()


def transit_for(owner: object, storage: BarrierStorage, clock: Callable[[], float]) -> Transit:
    """The engine of one unsealed vault (``owner``); it goes with the owner when the vault seals."""
    engine = _ENGINES.get(owner)
    if engine is None:
        engine = _ENGINES[owner] = Transit(storage, clock)
    return engine


class Transit:
    def __init__(self, storage: BarrierStorage, clock: Callable[[], float]) -> None:
        self.storage = storage
        self.clock = clock
        self.lock = asyncio.Lock()
        self._keys: dict[str, TransitKey] = {}
        self._changes = 0  # committed changes: a load that overlapped one is not cached

    def __repr__(self) -> str:
        return f"Transit(keys_cached={len(self._keys)})"

    async def get(self, name: str) -> TransitKey | None:
        key = self._keys.get(name)
        if key is not None:
            return key
        changes = self._changes
        raw = await self.storage.get(PREFIX + name)
        if raw is None:
            return None
        key = TransitKey.from_json(json.loads(raw))
        if changes == self._changes:
            if len(self._keys) >= MAX_KEYS_CACHED:
                self._keys.clear()
            self._keys[name] = key
        return key

    async def names(self) -> list[str]:
        return [path[len(PREFIX) :] for path in await self.storage.list(PREFIX)]

    async def _store(self, key: TransitKey) -> TransitKey:
        await self.storage.put(PREFIX + key.name, json.dumps(key.to_json()).encode())
        self._changes += 1
        self._keys[key.name] = key
        return key

    async def create(self, name: str, key_type: str, derived: bool) -> tuple[TransitKey, bool]:
        """The key ``name``, made now unless it exists (then it is returned unchanged, as Vault does)."""
        if key_type not in KEY_TYPES:
            raise TransitError(f"unknown key type {key_type}")
        if derived and key_type == "ecdsa-p256":
            raise TransitError(
                "key derivation and convergent encryption not supported for keys of type ecdsa-p256"
            )
        if derived and key_type not in AEAD_TYPES:  # Vault derives ed25519 keys; this vault does not
            raise TransitError(f"key derivation is not supported for keys of type {key_type} by this vault")
        async with self.lock:
            existing = await self.get(name)
            if existing is not None:
                return existing, False
            return await self._store(TransitKey.create(name, key_type, derived, self.clock())), True

    async def rotate(self, name: str) -> TransitKey:
        async with self.lock:
            key = await self._copy(name, "key not found")
            key.add_version(self.clock())
            return await self._store(key)

    async def configure(self, name: str, changes: dict[str, Any]) -> tuple[TransitKey, list[str]]:
        """Apply ``min_decryption_version``, ``min_encryption_version``, ``deletion_allowed`` (all checked
        before anything is written); returns the key and Vault's warnings."""
        async with self.lock:
            key = await self._copy(name, f"no existing key named {name} could be found")
            warnings: list[str] = []
            decryption = changes.get("min_decryption_version")
            if decryption is not None:
                if decryption < 0:
                    raise TransitError("min decryption version cannot be negative")
                if decryption == 0:
                    decryption = 1
                    warnings.append("transit key numbering starts at 1; forcing minimum to 1")
                if decryption > key.latest_version:
                    raise TransitError(
                        f"cannot set min decryption version of {decryption}, "
                        f"latest key version is {key.latest_version}"
                    )
                key.min_decryption_version = decryption
            encryption = changes.get("min_encryption_version")
            if encryption is not None:
                if encryption < 0:
                    raise TransitError("min encryption version cannot be negative")
                if encryption > key.latest_version:
                    raise TransitError(
                        f"cannot set min encryption version of {encryption}, "
                        f"latest key version is {key.latest_version}"
                    )
                key.min_encryption_version = encryption
            if 0 < key.min_encryption_version < key.min_decryption_version:
                raise TransitError(
                    "cannot set min encryption/decryption values; min encryption version of "
                    f"{key.min_encryption_version} must be greater than or equal to min decryption "
                    f"version of {key.min_decryption_version}"
                )
            if changes.get("deletion_allowed") is not None:
                key.deletion_allowed = bool(changes["deletion_allowed"])
            return await self._store(key), warnings

    async def delete(self, name: str) -> None:
        async with self.lock:
            key = await self.get(name)
            if key is None:
                raise TransitError(f"error deleting policy {name}: could not delete key; not found")
            if not key.deletion_allowed:
                raise TransitError(f"error deleting policy {name}: deletion is not allowed for this key")
            await self.storage.delete(PREFIX + name)
            self._changes += 1
            self._keys.pop(name, None)

    async def _copy(self, name: str, missing: str) -> TransitKey:
        """A private copy of the stored key to change (the cached one stays in use until the write)."""
        key = await self.get(name)
        if key is None:
            raise TransitError(missing)
        return TransitKey.from_json(key.to_json())
