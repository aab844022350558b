"""KV version 2 (Vault's ``kv-v2`` engine) on the barrier storage: versions, soft delete, destroy, CAS.

Layout under ``kv/<mount>/``: ``config`` (the mount's max_versions, cas_required,
delete_version_after), ``meta/<path>`` (the secret's metadata and every version's times and flags) and
``data/<path>#<n>`` (version n's data; ``#`` keeps one secret's versions apart from the paths below it,
which are other secrets). A write puts the new version and the metadata in one transaction; the
check-and-set and the version number are decided under the secret's own lock, held until the commit,
so two writers with the same ``cas`` cannot both win (one process serves the vault), while writes to
different secrets do not wait for each other and share their commits (see storage.py).

The answers' shapes are Vault's (docs: /docs/secrets/kv/kv-v2): the data read's 404 for a deleted or
destroyed version still carries its metadata, as hvac's ``raise_on_deleted_version=False`` expects.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from garrison.vault.durations import go_duration, parse_vault_duration, rfc3339
from garrison.vault.storage import BarrierStorage

__all__ = ["KvError", "KvV2", "PathLocks", "merge_patch"]

DEFAULT_MAX_VERSIONS = 10
MAX_CUSTOM_KEYS, MAX_CUSTOM_KEY, MAX_CUSTOM_VALUE = 64, 128, 512


class KvError(Exception):
    """An answer other than success: ``status`` with Vault's ``errors`` list, or a full ``body``."""

    def __init__(self, status: int, errors: list[str], body: dict[str, Any] | None = None) -> None:
        super().__init__("; ".join(errors))
        self.status, self.errors, self.body = status, errors, body


@dataclass
class Config:
    max_versions: int = 0
    cas_required: bool = False
    delete_version_after: float = 0.0


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396 JSON merge patch: objects merge recursively, ``null`` removes, anything else replaces."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


@dataclass
class _Held:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0  # tasks holding or waiting for the lock


class PathLocks:
    """A lock per secret path, in the table only while some task holds or waits for it: the table's
    size is bounded by the requests in flight, not by the secrets ever written."""

    def __init__(self) -> None:
        self._held: dict[str, _Held] = {}

    def __len__(self) -> int:
        return len(self._held)

    @asynccontextmanager
    async def hold(self, path: str) -> AsyncIterator[None]:
        held = self._held.get(path)
        if held is None:
            held = self._held[path] = _Held()
        held.users += 1
        try:
            async with held.lock:
                yield
        finally:
            held.users -= 1
            if not held.users:
                del self._held[path]


class KvV2:
    def __init__(self, storage: BarrierStorage, mount: str, clock: Callable[[], float]) -> None:
        self.storage = storage
        self.mount = mount
        self.clock = clock
        self.prefix = f"kv/{mount}/"
        self.locks = PathLocks()  # per secret: its versions, cas and metadata change one at a time
        self.config_lock = asyncio.Lock()  # the mount's config (writes read it without waiting)

    # -- storage helpers ---------------------------------------------------------------------------------

    async def _config(self) -> Config:
        raw = await self.storage.get(self.prefix + "config")
        return Config(**json.loads(raw)) if raw is not None else Config()

    async def meta(self, path: str) -> dict[str, Any] | None:
        raw = await self.storage.get(f"{self.prefix}meta/{path}")
        return json.loads(raw) if raw is not None else None

    def _data_key(self, path: str, version: int) -> str:
        return f"{self.prefix}data/{path}#{version}"

    def _new_meta(self, now: float) -> dict[str, Any]:
        return {
            "created_time": now,
            "updated_time": now,
            "current_version": 0,
            "oldest_version": 0,
            "max_versions": 0,
            "cas_required": False,
            "delete_version_after": 0.0,
            "custom_metadata": None,
            "versions": {},
        }

    def _deleted(self, version: dict[str, Any], now: float) -> bool:
        return version["destroyed"] or (
            version["deletion_time"] is not None and version["deletion_time"] <= now
        )

    def _version_view(self, meta: dict[str, Any], number: int) -> dict[str, Any]:
        version = meta["versions"][str(number)]
        deletion = version["deletion_time"]
        return {
            "created_time": rfc3339(version["created_time"]),
            "custom_metadata": meta["custom_metadata"],
            "deletion_time": rfc3339(deletion) if deletion is not None else "",
            "destroyed": version["destroyed"],
            "version": number,
        }

    # -- config ------------------------------------------------------------------------------------------

    async def read_config(self) -> dict[str, Any]:
        config = await self._config()
        return {
            "cas_required": config.cas_required,
            "delete_version_after": go_duration(config.delete_version_after),
            "max_versions": config.max_versions,
        }

    async def write_config(self, body: dict[str, Any]) -> None:
        async with self.config_lock:
            config = await self._config()
            _apply_settings(config, body)
            await self.storage.put(self.prefix + "config", json.dumps(config.__dict__).encode())

    # -- data --------------------------------------------------------------------------------------------

    async def read(self, path: str, version: int | None) -> dict[str, Any]:
        meta = await self.meta(path)
        number = version or (meta["current_version"] if meta else 0)
        if meta is None or str(number) not in meta["versions"]:
            raise KvError(404, [])
        entry = meta["versions"][str(number)]
        if self._deleted(entry, self.clock()):
            raise KvError(404, [], {"data": None, "metadata": self._version_view(meta, number)})
        raw = await self.storage.get(self._data_key(path, number))
        if raw is None:
            raise KvError(404, [])
        return {"data": json.loads(raw), "metadata": self._version_view(meta, number)}

    async def write(self, path: str, body: dict[str, Any], patch: bool = False) -> dict[str, Any]:
        data = body.get("data")
        if not isinstance(data, dict):
            raise KvError(400, ["no data provided"])
        options = body.get("options") or {}
        if not isinstance(options, dict):
            raise KvError(400, ["options must be an object"])
        cas = options.get("cas")
        if cas is not None and (isinstance(cas, bool) or not isinstance(cas, int) or cas < 0):
            raise KvError(400, ["cas must be a non-negative integer"])
        async with self.locks.hold(path):
            now = self.clock()
            config = await self._config()
            meta = await self.meta(path)
            if patch:
                current = meta["current_version"] if meta else 0
                if meta is None or not current or self._deleted(meta["versions"][str(current)], now):
                    raise KvError(404, [])
                raw = await self.storage.get(self._data_key(path, current))
                data = merge_patch(json.loads(raw) if raw else {}, data)
            meta = meta or self._new_meta(now)
            if cas is None and (meta["cas_required"] or config.cas_required):
                raise KvError(400, ["check-and-set parameter required for this call"])
            if cas is not None and cas != meta["current_version"]:
                raise KvError(400, ["check-and-set parameter did not match the current version"])
            number = meta["current_version"] + 1
            after = meta["delete_version_after"] or config.delete_version_after
            meta["versions"][str(number)] = {
                "created_time": now,
                "deletion_time": now + after if after else None,
                "destroyed": False,
            }
            meta["current_version"], meta["updated_time"] = number, now
            meta["oldest_version"] = meta["oldest_version"] or number
            deletes = self._trim(
                path, meta, meta["max_versions"] or config.max_versions or DEFAULT_MAX_VERSIONS
            )
            await self.storage.write(
                {
                    self._data_key(path, number): json.dumps(data).encode(),
                    f"{self.prefix}meta/{path}": _dump(meta),
                },
                deletes,
            )
            return self._version_view(meta, number)

    def _trim(self, path: str, meta: dict[str, Any], keep: int) -> list[str]:
        numbers = sorted(int(n) for n in meta["versions"])
        dropped = numbers[:-keep] if len(numbers) > keep else []
        for number in dropped:
            del meta["versions"][str(number)]
        if dropped:
            meta["oldest_version"] = min(int(n) for n in meta["versions"])
        return [self._data_key(path, number) for number in dropped]

    async def delete_latest(self, path: str) -> None:
        async with self.locks.hold(path):
            meta = await self.meta(path)
            if meta is None or not meta["current_version"]:
                return
            await self._mark(path, meta, [meta["current_version"]], "delete")

    async def change_versions(self, path: str, body: dict[str, Any], action: str) -> None:
        """``delete``, ``undelete`` or ``destroy`` the versions listed in ``body["versions"]``."""
        versions = body.get("versions")
        if isinstance(versions, list) and all(isinstance(v, str) and v.isdigit() for v in versions):
            versions = [int(v) for v in versions]
        if (
            not versions
            or not isinstance(versions, list)
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in versions)
        ):
            raise KvError(400, ["no version number provided"])
        async with self.locks.hold(path):
            meta = await self.meta(path)
            if meta is not None:
                await self._mark(path, meta, versions, action)

    async def _mark(self, path: str, meta: dict[str, Any], numbers: list[int], action: str) -> None:
        now = self.clock()
        deletes = []
        for number in numbers:
            version = meta["versions"].get(str(number))
            if version is None or version["destroyed"]:
                continue
            if action == "delete" and not self._deleted(version, now):
                version["deletion_time"] = now
            elif action == "undelete":
                version["deletion_time"] = None
            elif action == "destroy":
                version["destroyed"] = True
                deletes.append(self._data_key(path, number))
        meta["updated_time"] = now
        await self.storage.write({f"{self.prefix}meta/{path}": _dump(meta)}, deletes)

    # -- metadata ----------------------------------------------------------------------------------------

    async def read_metadata(self, path: str) -> dict[str, Any]:
        meta = await self.meta(path)
        if meta is None:
            raise KvError(404, [])
        versions = {}
        for number in sorted(meta["versions"], key=int):
            view = self._version_view(meta, int(number))
            versions[number] = {key: view[key] for key in ("created_time", "deletion_time", "destroyed")}
        return {
            "cas_required": meta["cas_required"],
            "created_time": rfc3339(meta["created_time"]),
            "current_version": meta["current_version"],
            "custom_metadata": meta["custom_metadata"],
            "delete_version_after": go_duration(meta["delete_version_after"]),
            "max_versions": meta["max_versions"],
            "oldest_version": meta["oldest_version"],
            "updated_time": rfc3339(meta["updated_time"]),
            "versions": versions,
        }

    async def write_metadata(self, path: str, body: dict[str, Any], patch: bool = False) -> None:
        async with self.locks.hold(path):
            now = self.clock()
            meta = await self.meta(path)
            if meta is None and patch:
                raise KvError(404, [])
            meta = meta or self._new_meta(now)
            settings = Config(meta["max_versions"], meta["cas_required"], meta["delete_version_after"])
            _apply_settings(settings, body)
            meta["max_versions"], meta["cas_required"] = settings.max_versions, settings.cas_required
            meta["delete_version_after"] = settings.delete_version_after
            if "custom_metadata" in body:
                custom = body["custom_metadata"]
                if patch:
                    custom = merge_patch(meta["custom_metadata"] or {}, custom)
                meta["custom_metadata"] = _custom_metadata(custom)
            meta["updated_time"] = now
            config = await self._config()
            keep = meta["max_versions"] or config.max_versions or DEFAULT_MAX_VERSIONS
            deletes = self._trim(path, meta, keep)
            await self.storage.write({f"{self.prefix}meta/{path}": _dump(meta)}, deletes)

    async def delete_metadata(self, path: str) -> None:
        async with self.locks.hold(path):
            meta = await self.meta(path)
            if meta is None:
                return
            deletes = [self._data_key(path, int(n)) for n in meta["versions"]]
            await self.storage.write({}, [*deletes, f"{self.prefix}meta/{path}"])

    async def list(self, path: str) -> list[str]:
        prefix = f"{self.prefix}meta/" + (path if not path or path.endswith("/") else path + "/")
        keys: list[str] = []
        for stored in await self.storage.list(prefix):
            rest = stored[len(prefix) :]
            key = rest.split("/", 1)[0] + ("/" if "/" in rest else "")
            if not keys or keys[-1] != key:
                keys.append(key)
        if not keys:
            raise KvError(404, [])
        return sorted(set(keys))


def _dump(meta: dict[str, Any]) -> bytes:
    return json.dumps(meta).encode()


def _apply_settings(config: Config, body: dict[str, Any]) -> None:
    if "max_versions" in body:
        value = body["max_versions"]
        if isinstance(value, str) and value.isdigit():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise KvError(400, ["max_versions must be a non-negative integer"])
        config.max_versions = value
    if "cas_required" in body:
        value = body["cas_required"]
        if isinstance(value, str) and value in ("true", "false"):
            value = value == "true"
        if not isinstance(value, bool):
            raise KvError(400, ["cas_required must be a boolean"])
        config.cas_required = value
    if "delete_version_after" in body:
        try:
            config.delete_version_after = parse_vault_duration(body["delete_version_after"])
        except ValueError as exc:
            raise KvError(400, [f"delete_version_after: {exc}"]) from None


def _custom_metadata(value: Any) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise KvError(400, ["custom_metadata is a map of strings to strings"])
    if len(value) > MAX_CUSTOM_KEYS or any(
        len(k) > MAX_CUSTOM_KEY or len(v) > MAX_CUSTOM_VALUE for k, v in value.items()
    ):
        raise KvError(400, ["custom_metadata: at most 64 keys of 128 characters, values of 512"])
    return value
