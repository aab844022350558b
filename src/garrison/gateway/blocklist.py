"""The dynamic IP blocklist: blocks with an expiry, the hook automated responses use.

``is_blocked(ip)`` is on every request's path, so it is synchronous and reads a local snapshot: one
dict lookup and a clock read. Writes (``block``/``unblock``) go to the shared store.

``RedisBlocklist`` shares the list across gateway workers and replicas:

- Redis holds a sorted set ``<prefix>:until`` (member: the address, score: expiry as epoch
  seconds) and a hash ``<prefix>:reason``. A block or unblock is one MULTI/EXEC transaction that
  changes both and PUBLISHes the change on ``<prefix>:events``, so the order of messages matches the
  order of the changes.
- Every instance keeps a snapshot: it applies each pub/sub message as it arrives, and rebuilds the
  snapshot from Redis at start, after every (re)subscription, and every ``resync_interval``
  seconds, which also catches messages lost while disconnected. A block made through one instance
  is enforced by the others as soon as the message arrives (milliseconds), and within
  ``resync_interval`` at worst.
- Expiry is by wall clock (epoch seconds, shared between machines): an entry stops matching at its
  expiry everywhere, and resyncs prune expired members from Redis.
- While Redis is unreachable the snapshot is kept (known blocks stay enforced until they expire)
  and ``block``/``unblock`` raise ``BlocklistUnavailable``.

Addresses are stored in canonical form (IPv4-mapped IPv6 as IPv4); ``is_blocked`` also matches the
mapped spelling, which is what a dual-stack socket reports for an IPv4 client.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import redis.asyncio
import redis.exceptions

from garrison.gateway.iprules import canonical_ip
from garrison.telemetry import logging as log

__all__ = [
    "BlockEntry",
    "Blocklist",
    "BlocklistUnavailable",
    "MemoryBlocklist",
    "RedisBlocklist",
]

MAX_REASON = 200


class BlocklistUnavailable(Exception):
    """The shared store could not record a change; nothing was changed."""


@dataclass(frozen=True, slots=True)
class BlockEntry:
    ip: str
    until: float  # epoch seconds
    reason: str


def _validated(ip: str, seconds: float | None = None) -> str:
    canonical = canonical_ip(ip)
    if canonical is None:
        raise ValueError("not an IP address")
    if seconds is not None and not (0 < seconds < math.inf):
        raise ValueError("a block needs a positive, finite number of seconds")
    return canonical


def _spellings(ip: str) -> tuple[str, ...]:
    """The snapshot keys for a canonical address: an IPv4 address also under its mapped spelling."""
    return (ip, "::ffff:" + ip) if ":" not in ip else (ip,)


class Blocklist(ABC):
    """Blocks by address with an expiry. ``is_blocked`` is synchronous and O(1)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._until: dict[str, float] = {}  # every spelling -> expiry
        self._entries: dict[str, BlockEntry] = {}  # canonical address -> entry

    def is_blocked(self, ip: str) -> bool:
        until = self._until.get(ip)
        return until is not None and until > self._clock()

    def entries(self) -> list[BlockEntry]:
        """The blocks in force, soonest expiry first."""
        now = self._clock()
        return sorted((e for e in self._entries.values() if e.until > now), key=lambda e: (e.until, e.ip))

    @abstractmethod
    async def block(self, ip: str, seconds: float, reason: str) -> BlockEntry: ...

    @abstractmethod
    async def unblock(self, ip: str) -> bool:
        """Remove a block; True if the address was blocked (as far as this instance knows)."""

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Begin (for shared blocklists: load the list and follow changes)."""

    async def stop(self) -> None:  # noqa: B027 - optional hook
        """Stop and release connections."""

    # -- the local snapshot ----------------------------------------------------------------------

    def _apply_block(self, entry: BlockEntry) -> None:
        self._entries[entry.ip] = entry
        for spelling in _spellings(entry.ip):
            self._until[spelling] = entry.until

    def _apply_unblock(self, ip: str) -> bool:
        for spelling in _spellings(ip):
            self._until.pop(spelling, None)
        return self._entries.pop(ip, None) is not None

    def _replace(self, entries: list[BlockEntry]) -> None:
        until: dict[str, float] = {}
        for entry in entries:
            for spelling in _spellings(entry.ip):
                until[spelling] = entry.until
        self._until = until  # swapped whole: a reader never sees a half-built snapshot
        self._entries = {entry.ip: entry for entry in entries}

    def prune(self) -> None:
        """Drop expired entries from the snapshot (they already stopped matching)."""
        now = self._clock()
        expired = [ip for ip, entry in self._entries.items() if entry.until <= now]
        for ip in expired:
            self._apply_unblock(ip)


class MemoryBlocklist(Blocklist):
    """A blocklist for one process."""

    async def block(self, ip: str, seconds: float, reason: str) -> BlockEntry:
        self.prune()
        entry = BlockEntry(_validated(ip, seconds), self._clock() + seconds, reason[:MAX_REASON])
        self._apply_block(entry)
        return entry

    async def unblock(self, ip: str) -> bool:
        return self._apply_unblock(_validated(ip))


# Removes expired members from both structures atomically, so a block renewed concurrently (a new,
# later score) is never deleted by a prune that read the old one. Bounded per call.
_PRUNE = """
local expired = redis.call('ZRANGE', KEYS[1], '-inf', ARGV[1], 'BYSCORE', 'LIMIT', 0, 1000)
if #expired > 0 then
  redis.call('ZREM', KEYS[1], unpack(expired))
  redis.call('HDEL', KEYS[2], unpack(expired))
end
return #expired
"""


class RedisBlocklist(Blocklist):
    """A blocklist shared through Redis by every worker and replica (see the module docstring)."""

    def __init__(
        self,
        redis_url: str,
        prefix: str = "garrison:blocklist",
        *,
        resync_interval: float = 5.0,
        timeout: float = 2.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(clock)
        if not resync_interval > 0 or not timeout > 0:
            raise ValueError("resync_interval and timeout must be > 0")
        self.prefix = prefix
        self._until_key = f"{prefix}:until"
        self._reason_key = f"{prefix}:reason"
        self.channel = f"{prefix}:events"
        self.resync_interval = resync_interval
        self._redis = redis.asyncio.Redis.from_url(
            redis_url, socket_connect_timeout=timeout, socket_timeout=timeout, decode_responses=True
        )
        self._prune_script = self._redis.register_script(_PRUNE)
        self._tasks: list[asyncio.Task[None]] = []
        self._resync_lock = asyncio.Lock()
        self._resyncing = False
        self._during_resync: list[dict[str, object]] = []
        self.synced_at: float | None = None  # clock time of the last successful resync

    def __repr__(self) -> str:
        return f"RedisBlocklist(prefix={self.prefix!r}, entries={len(self._entries)})"

    async def start(self) -> None:
        """Load the list (a failure is logged, not raised: retries follow) and follow changes."""
        try:
            await self.resync()
        except (redis.exceptions.RedisError, OSError) as exc:
            log.warn("gateway.blocklist.unavailable", error=type(exc).__name__)
        self._tasks = [
            asyncio.create_task(self._follow(), name="blocklist-follow"),
            asyncio.create_task(self._resync_loop(), name="blocklist-resync"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await self._redis.aclose()

    async def block(self, ip: str, seconds: float, reason: str) -> BlockEntry:
        entry = BlockEntry(_validated(ip, seconds), self._clock() + seconds, reason[:MAX_REASON])
        message = json.dumps({"op": "block", "ip": entry.ip, "until": entry.until, "reason": entry.reason})
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.zadd(self._until_key, {entry.ip: entry.until})
                pipe.hset(self._reason_key, entry.ip, entry.reason)
                pipe.publish(self.channel, message)
                await pipe.execute()
        except (redis.exceptions.RedisError, OSError) as exc:
            raise BlocklistUnavailable("the blocklist store is unavailable") from exc
        self._apply_block(entry)
        return entry

    async def unblock(self, ip: str) -> bool:
        canonical = _validated(ip)
        message = json.dumps({"op": "unblock", "ip": canonical})
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.zrem(self._until_key, canonical)
                pipe.hdel(self._reason_key, canonical)
                pipe.publish(self.channel, message)
                removed, _, _ = await pipe.execute()
        except (redis.exceptions.RedisError, OSError) as exc:
            raise BlocklistUnavailable("the blocklist store is unavailable") from exc
        self._apply_unblock(canonical)
        return bool(removed)

    async def resync(self) -> None:
        """Rebuild the snapshot from Redis (pruning expired entries there first)."""
        async with self._resync_lock:
            await self._resync()

    async def _resync(self) -> None:
        self._resyncing = True
        self._during_resync = []
        try:
            now = self._clock()
            await self._prune_script(keys=[self._until_key, self._reason_key], args=[now])
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.zrange(self._until_key, f"({now}", "+inf", byscore=True, withscores=True)
                pipe.hgetall(self._reason_key)
                members, reasons = await pipe.execute()
            entries = [BlockEntry(ip, float(until), reasons.get(ip, "")) for ip, until in members]
            self._replace(entries)
            # Changes published while the read was in flight may predate or follow it; applied
            # again in order, each address ends in its latest state.
            for message in self._during_resync:
                self._apply_message(message)
            self.synced_at = self._clock()
        finally:
            self._resyncing = False
            self._during_resync = []

    def _on_message(self, data: str) -> None:
        try:
            message = json.loads(data)
        except ValueError:
            return
        if not isinstance(message, dict):
            return
        if self._resyncing:
            self._during_resync.append(message)
        self._apply_message(message)

    def _apply_message(self, message: dict[str, object]) -> None:
        ip = message.get("ip")
        if not isinstance(ip, str) or canonical_ip(ip) != ip:
            return
        if message.get("op") == "unblock":
            self._apply_unblock(ip)
        elif message.get("op") == "block":
            until, reason = message.get("until"), message.get("reason", "")
            if isinstance(until, int | float) and isinstance(reason, str):
                self._apply_block(BlockEntry(ip, float(until), reason[:MAX_REASON]))

    async def _follow(self) -> None:
        """Apply published changes; on any connection trouble, resubscribe and resync."""
        delay = 0.1
        while True:
            try:
                async with self._redis.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(self.channel)
                    await self.resync()  # whatever was published before the subscription
                    delay = 0.1
                    while True:
                        message = await pubsub.get_message(timeout=1.0)
                        if message is not None and message.get("type") == "message":
                            self._on_message(message["data"])
            except (redis.exceptions.RedisError, OSError) as exc:
                log.warn("gateway.blocklist.follow_failed", error=type(exc).__name__, retry_in=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.resync_interval)

    async def _resync_loop(self) -> None:
        while True:
            await asyncio.sleep(self.resync_interval)
            try:
                await self.resync()
            except (redis.exceptions.RedisError, OSError) as exc:
                log.warn("gateway.blocklist.resync_failed", error=type(exc).__name__)
            self.prune()
