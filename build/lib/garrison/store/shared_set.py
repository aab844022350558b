"""An expiring set of strings that gateway workers and replicas share through Redis.

The gateway's IP blocklist (gateway/blocklist.py) and the token revocation feed
(tokens/revocations.py) both need the same thing: a set whose members each expire at a wall-clock
time, that any gateway process -- or an outside publisher such as an identity provider -- can add
to, and that every process reads synchronously on its hot path. ``SharedSet`` is the Redis half of
that. The local copy the hot path reads belongs to the owner (a ``LocalCopy``), because only the
owner knows how to index it (the blocklist files an IPv4 address under two spellings); the shared
set keeps it up to date.

Wire format, for a key prefix ``P`` and a ``WireFormat`` naming the member field ``M``, the add and
remove operations ``A`` and ``R`` and the payload field ``D``:

- ``P:until``: a sorted set; member: the set member, score: its expiry as epoch seconds.
- ``P:<D>``: a hash member -> payload (only for formats with a payload).
- ``P:events``: a pub/sub channel carrying every change as JSON,
  ``{"op": A, M: member, "until": epoch, D: payload}`` or ``{"op": R, M: member}``.

A change made here is one MULTI/EXEC transaction that changes the structures and PUBLISHes the
change, so the order of messages matches the order of the changes.

Every instance applies each message as it arrives, and rebuilds its copy from Redis at start, after
every (re)subscription and every ``resync_interval`` seconds, which also catches messages lost while
disconnected (or never published: a writer that only ZADDs is seen at the next resync). A resync
first prunes expired members from Redis. Expiry is by wall clock, shared between machines: a member
stops matching at its expiry everywhere. While Redis is unreachable the local copy is kept (what is
known stays enforced until it expires) and writes raise ``SharedSetUnavailable`` (or the owner's
subclass of it), having changed nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import redis.asyncio
import redis.exceptions
from redis.asyncio.client import Pipeline

from garrison.telemetry import logging as log

__all__ = [
    "LocalCopy",
    "Member",
    "SharedSet",
    "SharedSetFull",
    "SharedSetOwner",
    "SharedSetUnavailable",
    "WireFormat",
]

_REDIS_ERRORS = (redis.exceptions.RedisError, OSError)

# Removes expired members from the sorted set (and the payload hash, when there is one) atomically,
# so a member renewed concurrently (a new, later score) is never deleted by a prune that read the
# old one. Bounded per call; the next resync takes the rest.
_PRUNE = """
local expired = redis.call('ZRANGE', KEYS[1], '-inf', ARGV[1], 'BYSCORE', 'LIMIT', 0, 1000)
if #expired > 0 then
  redis.call('ZREM', KEYS[1], unpack(expired))
  if KEYS[2] then
    redis.call('HDEL', KEYS[2], unpack(expired))
  end
end
return #expired
"""


# Adds one member unless that would take the set past its cap, and publishes the change, in one
# atomic step: two gateways adding at once cannot both squeeze past the cap (a MULTI cannot branch
# on what it reads). A member already in force may always be renewed. KEYS: the sorted set, then the
# payload hash if any; ARGV: member, until, now, cap, extend_only ("1"/"0"), message, channel, payload.
_ADD_CAPPED = """
local current = redis.call('ZSCORE', KEYS[1], ARGV[1])
local live = current and tonumber(current) > tonumber(ARGV[3])
if not live and redis.call('ZCOUNT', KEYS[1], '(' .. ARGV[3], '+inf') >= tonumber(ARGV[4]) then
  return 0
end
if ARGV[5] == '1' then
  redis.call('ZADD', KEYS[1], 'GT', ARGV[2], ARGV[1])
else
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
end
if KEYS[2] then
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[8])
end
redis.call('PUBLISH', ARGV[7], ARGV[6])
return 1
"""


class SharedSetUnavailable(Exception):
    """The shared store could not record a change; nothing was changed."""


class SharedSetFull(Exception):
    """The set holds its cap of members in force; nothing was changed (renewals are still allowed)."""

    def __init__(self, what: str, cap: int) -> None:
        super().__init__(f"the {what} is full ({cap} entries in force); nothing was changed")
        self.what = what
        self.cap = cap


@dataclass(frozen=True, slots=True)
class Member:
    name: str
    until: float  # epoch seconds
    payload: str = ""


@dataclass(frozen=True, slots=True)
class WireFormat:
    """How one set's changes are spelt on its channel, and what it stores besides the expiry."""

    member: str  # the JSON field naming the member ("ip", "jti")
    add: str  # the op of an addition ("block", "revoke")
    remove: str | None = None  # the op of a removal; None: members only expire
    payload: str | None = None  # the JSON field and hash holding a payload ("reason"); None: none
    max_payload: int = 200
    extend_only: bool = False  # an addition never shortens a member's expiry (ZADD GT)


class LocalCopy(Protocol):
    """The owner's snapshot, read synchronously on the hot path, which a SharedSet keeps current."""

    def member_added(self, member: Member) -> None: ...

    def member_removed(self, name: str) -> None: ...

    def members_replaced(self, members: list[Member]) -> None:
        """Swap in a whole new snapshot (in one assignment: a reader never sees a half-built one)."""

    def prune(self) -> None:
        """Drop expired members (they already stopped matching)."""


class SharedSet:
    """Writes to, and follows, one expiring set in Redis (see the module docstring)."""

    def __init__(
        self,
        redis_url: str,
        prefix: str,
        wire: WireFormat,
        local: LocalCopy,
        *,
        what: str,
        valid: Callable[[str], bool] = bool,
        unavailable: type[SharedSetUnavailable] = SharedSetUnavailable,
        resync_interval: float = 5.0,
        timeout: float = 2.0,
        clock: Callable[[], float] = time.time,
        max_members: int = 100_000,
    ) -> None:
        """``what`` names the set in logs, task names and errors; ``valid`` vets a published member
        (a message from anyone who can PUBLISH must not plant arbitrary keys); ``max_members`` caps
        the members in force that ``add`` may create (``SharedSetFull`` beyond it)."""
        if not resync_interval > 0 or not timeout > 0 or max_members < 1:
            raise ValueError("resync_interval, timeout and max_members must be > 0")
        self.max_members = max_members
        self.prefix = prefix
        self.wire = wire
        self.what = what
        self.channel = f"{prefix}:events"
        self.resync_interval = resync_interval
        self.synced_at: float | None = None  # clock time of the last successful resync
        self._until_key = f"{prefix}:until"
        self._payload_key = f"{prefix}:{wire.payload}" if wire.payload is not None else None
        self._local = local
        self._valid = valid
        self._unavailable = unavailable
        self._clock = clock
        self._redis = redis.asyncio.Redis.from_url(
            redis_url, socket_connect_timeout=timeout, socket_timeout=timeout, decode_responses=True
        )
        self._prune_script = self._redis.register_script(_PRUNE)
        self._add_script = self._redis.register_script(_ADD_CAPPED)
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        self._resync_lock = asyncio.Lock()
        self._resyncing = False
        self._during_resync: list[dict[str, object]] = []

    async def start(self) -> None:
        """Load the set (a failure is logged, not raised: retries follow) and follow changes."""
        try:
            await self.resync()
        except _REDIS_ERRORS as exc:
            log.warn(f"gateway.{self.what}.unavailable", error=type(exc).__name__)
        self._tasks = [
            asyncio.create_task(self._follow(), name=f"{self.what}-follow"),
            asyncio.create_task(self._resync_loop(), name=f"{self.what}-resync"),
        ]

    async def stop(self) -> None:
        # Cancelling alone is not enough: Python 3.11's wait_for (inside redis-py's connect) can
        # drop a cancellation that lands as a connection attempt fails, and the loop would retry
        # forever. The loops also watch _stopping and end by themselves.
        self._stopping.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await self._redis.aclose()

    # -- writes ----------------------------------------------------------------------------------

    async def add(self, member: Member) -> None:
        """Store and publish ``member``, then apply it locally. Raises ``unavailable`` or
        ``SharedSetFull``, having changed nothing."""
        wire = self.wire
        message: dict[str, object] = {"op": wire.add, wire.member: member.name, "until": member.until}
        if wire.payload is not None:
            message[wire.payload] = member.payload
        keys = [self._until_key] if self._payload_key is None else [self._until_key, self._payload_key]
        args: list[str | int] = [
            member.name,
            repr(member.until),
            repr(self._clock()),
            self.max_members,
            "1" if wire.extend_only else "0",
            json.dumps(message),
            self.channel,
            member.payload,
        ]
        try:
            added = await self._add_script(keys=keys, args=args)
        except _REDIS_ERRORS as exc:
            raise self._unavailable(f"the {self.what} store is unavailable") from exc
        if not added:
            raise SharedSetFull(self.what, self.max_members)
        self._local.member_added(member)

    async def remove(self, name: str) -> bool:
        """Delete and publish; True if Redis held the member."""
        if self.wire.remove is None:
            raise TypeError(f"members of the {self.what} only expire")

        def changes(pipe: Pipeline) -> None:
            pipe.zrem(self._until_key, name)
            if self._payload_key is not None:
                pipe.hdel(self._payload_key, name)

        results = await self._write(changes, {"op": self.wire.remove, self.wire.member: name})
        self._local.member_removed(name)
        return bool(results[0])

    async def _write(self, changes: Callable[[Pipeline], None], message: dict[str, object]) -> list[Any]:
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                changes(pipe)
                pipe.publish(self.channel, json.dumps(message))
                return list(await pipe.execute())
        except _REDIS_ERRORS as exc:
            raise self._unavailable(f"the {self.what} store is unavailable") from exc

    # -- following -------------------------------------------------------------------------------

    async def resync(self) -> None:
        """Rebuild the local copy from Redis (pruning expired members there first)."""
        async with self._resync_lock:
            await self._resync()

    async def _resync(self) -> None:
        self._resyncing = True
        self._during_resync = []
        try:
            now = self._clock()
            keys = [self._until_key] if self._payload_key is None else [self._until_key, self._payload_key]
            await self._prune_script(keys=keys, args=[now])
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.zrange(self._until_key, f"({now}", "+inf", byscore=True, withscores=True)
                if self._payload_key is not None:
                    pipe.hgetall(self._payload_key)
                members, *payloads = await pipe.execute()
            found = payloads[0] if payloads else {}
            limit = self.wire.max_payload
            self._local.members_replaced(
                [Member(name, float(until), found.get(name, "")[:limit]) for name, until in members]
            )
            # Changes published while the read was in flight may predate or follow it; applied
            # again in order, each member ends in its latest state.
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
        wire = self.wire
        name, op = message.get(wire.member), message.get("op")
        if not isinstance(name, str) or not self._valid(name):
            return
        if wire.remove is not None and op == wire.remove:
            self._local.member_removed(name)
        elif op == wire.add:
            until = message.get("until")
            payload = message.get(wire.payload, "") if wire.payload is not None else ""
            if isinstance(until, int | float) and isinstance(payload, str):
                self._local.member_added(Member(name, float(until), payload[: wire.max_payload]))

    async def _follow(self) -> None:
        """Apply published changes; on any connection trouble, resubscribe and resync."""
        delay = 0.1
        while not self._stopping.is_set():
            try:
                async with self._redis.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(self.channel)
                    await self.resync()  # whatever was published before the subscription
                    delay = 0.1
                    while not self._stopping.is_set():
                        message = await pubsub.get_message(timeout=1.0)
                        if message is not None and message.get("type") == "message":
                            self._on_message(message["data"])
            except _REDIS_ERRORS as exc:
                log.warn(f"gateway.{self.what}.follow_failed", error=type(exc).__name__, retry_in=delay)
                await self._pause(delay)
                delay = min(delay * 2, self.resync_interval)

    async def _resync_loop(self) -> None:
        while await self._pause(self.resync_interval):
            try:
                await self.resync()
            except _REDIS_ERRORS as exc:
                log.warn(f"gateway.{self.what}.resync_failed", error=type(exc).__name__)
            self._local.prune()

    async def _pause(self, seconds: float) -> bool:
        """Wait ``seconds``, or less if the set is stopping; False once it is."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)
        return not self._stopping.is_set()


class SharedSetOwner:
    """The lifecycle of an owner whose local copy a ``SharedSet`` keeps (mixed in before its base)."""

    _shared: SharedSet

    @property
    def synced_at(self) -> float | None:
        """Clock time of the last successful resync (None: Redis was never reached)."""
        return self._shared.synced_at

    async def start(self) -> None:
        """Load the set (a failure is logged, not raised: retries follow) and follow changes."""
        await self._shared.start()

    async def stop(self) -> None:
        await self._shared.stop()

    async def resync(self) -> None:
        """Rebuild the local copy from Redis now (it also happens every ``resync_interval``)."""
        await self._shared.resync()
