"""The dynamic IP blocklist: blocks with an expiry, the hook automated responses use.

``is_blocked(ip)`` is on every request's path, so it is synchronous and reads a local snapshot: one
dict lookup and a clock read. Writes (``block``/``unblock``) go to the shared store.

``RedisBlocklist`` shares the list across gateway workers and replicas through a ``SharedSet``
(store/shared_set.py, which holds the mechanism; in outline):

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

import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

from garrison.config.gateway import BlocklistConfig
from garrison.gateway.iprules import canonical_ip
from garrison.store.shared_set import (
    Member,
    SharedSet,
    SharedSetFull,
    SharedSetOwner,
    SharedSetUnavailable,
    WireFormat,
)

__all__ = [
    "BlockEntry",
    "Blocklist",
    "BlocklistUnavailable",
    "MemoryBlocklist",
    "RedisBlocklist",
]

MAX_REASON = 200


class BlocklistUnavailable(SharedSetUnavailable):
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

    def __init__(self, clock: Callable[[], float] = time.time, max_entries: int = 10_000) -> None:
        self._clock = clock
        self.max_entries = max_entries  # blocks in force at once; ``block`` raises SharedSetFull beyond
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
        if entry.ip not in self._entries and len(self._entries) >= self.max_entries:
            raise SharedSetFull("blocklist", self.max_entries)
        self._apply_block(entry)
        return entry

    async def unblock(self, ip: str) -> bool:
        return self._apply_unblock(_validated(ip))


# The blocklist's messages: {"op": "block", "ip": A, "until": T, "reason": R}, {"op": "unblock", "ip": A}.
_WIRE = WireFormat(member="ip", add="block", remove="unblock", payload="reason", max_payload=MAX_REASON)


def _canonical(ip: str) -> bool:
    return canonical_ip(ip) == ip


class RedisBlocklist(SharedSetOwner, Blocklist):
    """A blocklist shared through Redis by every worker and replica (see the module docstring)."""

    def __init__(
        self,
        redis_url: str,
        prefix: str = "garrison:blocklist",
        *,
        resync_interval: float = 5.0,
        timeout: float = 2.0,
        clock: Callable[[], float] = time.time,
        max_entries: int = 10_000,
    ) -> None:
        super().__init__(clock, max_entries)
        self.prefix = prefix
        self._shared = SharedSet(
            redis_url,
            prefix,
            _WIRE,
            self,
            what="blocklist",
            valid=_canonical,
            unavailable=BlocklistUnavailable,
            resync_interval=resync_interval,
            timeout=timeout,
            clock=clock,
            max_members=max_entries,
        )

    def __repr__(self) -> str:
        return f"RedisBlocklist(prefix={self.prefix!r}, entries={len(self._entries)})"

    async def block(self, ip: str, seconds: float, reason: str) -> BlockEntry:
        entry = BlockEntry(_validated(ip, seconds), self._clock() + seconds, reason[:MAX_REASON])
        await self._shared.add(Member(entry.ip, entry.until, entry.reason))
        return entry

    async def unblock(self, ip: str) -> bool:
        return await self._shared.remove(_validated(ip))

    # -- LocalCopy: what the shared set learns, applied to the snapshot ---------------------------

    def member_added(self, member: Member) -> None:
        self._apply_block(BlockEntry(member.name, member.until, member.payload))

    def member_removed(self, name: str) -> None:
        self._apply_unblock(name)

    def members_replaced(self, members: list[Member]) -> None:
        self._replace([BlockEntry(m.name, m.until, m.payload) for m in members])


def blocklist_from_config(spec: BlocklistConfig, redis_url: str | None) -> Blocklist:
    """The blocklist ``gateway.blocklist`` asks for (the loader refuses `redis` without `redis.url`)."""
    if spec.storage == "redis":
        if not redis_url:
            raise ValueError("gateway.blocklist.storage is `redis` but redis.url is not set")
        return RedisBlocklist(redis_url, spec.prefix, max_entries=spec.max_entries)
    return MemoryBlocklist(max_entries=spec.max_entries)
