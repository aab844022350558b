"""Token revocation: the ``jti`` values the gateway refuses, each until its token would expire anyway.

The verified-token cache (tokens/token_cache.py ``TokenCache``) asks ``is_revoked(jti, now)`` on every hit, so
that call is synchronous and reads a local snapshot: one dict lookup when the jti is not revoked.
Revocations arrive through the admin API (``POST /revocations``, ``garrison revoke``) or, with
``revocations.storage: redis``, from anyone who can write to the gateways' Redis -- the
identity provider revoking a token family, an automated response, another replica.

Redis wire format, for the prefix ``P`` (``revocations.prefix``, default
``garrison:revoked``). A publisher revokes a token with one MULTI/EXEC transaction of::

    ZADD P:until <until> <jti>
    PUBLISH P:events {"op":"revoke","jti":"<jti>","until":<until>}

where ``until`` is epoch seconds (the token's ``exp``; nothing is gained by more). The ZADD is the
record: every gateway rebuilds its snapshot from ``P:until`` at start and every 5 s, so a revocation
whose message was lost (or that was only ZADDed) still arrives within that time; the message makes
it arrive within milliseconds. Members whose score has passed are pruned. A ``jti`` is 1 to 200
visible ASCII characters; messages naming anything else are ignored. There is no "unrevoke": a
revocation ends when it expires. The mechanism (and what happens while Redis is down: known
revocations stay enforced, new ones are refused with ``RevocationsUnavailable``) is store/shared_set.py's.

A revocation made here is capped at one day: access tokens live minutes, and an entry that outlives
its token only costs memory.
"""

from __future__ import annotations

import math
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

from garrison.config.common import RevocationsConfig
from garrison.store.shared_set import (
    Member,
    SharedSet,
    SharedSetFull,
    SharedSetOwner,
    SharedSetUnavailable,
    WireFormat,
)

__all__ = [
    "MAX_REVOCATION_SECONDS",
    "MemoryRevocations",
    "RedisRevocations",
    "Revocation",
    "Revocations",
    "RevocationsUnavailable",
    "revocations_from_config",
    "valid_jti",
]

MAX_REVOCATION_SECONDS = 24 * 3600.0
_JTI = re.compile(r"[\x21-\x7e]{1,200}")
_WIRE = WireFormat(member="jti", add="revoke", extend_only=True)


class RevocationsUnavailable(SharedSetUnavailable):
    """The shared revocation store could not record a revocation; nothing was changed."""


@dataclass(frozen=True, slots=True)
class Revocation:
    jti: str
    until: float  # epoch seconds


def valid_jti(jti: str) -> bool:
    """1 to 200 visible ASCII characters: what a jti may be here, in a query string, log or key."""
    return _JTI.fullmatch(jti) is not None


def _checked_until(jti: str, until: float, now: float) -> float:
    """``until`` capped at a day from now; raises ValueError for a bad jti or a past ``until``."""
    if not valid_jti(jti):
        raise ValueError("a jti is 1 to 200 visible ASCII characters (no spaces)")
    if not math.isfinite(until) or until <= now:
        raise ValueError("`until` must be in the future (epoch seconds: the token's exp)")
    return min(until, now + MAX_REVOCATION_SECONDS)


class Revocations(ABC):
    """Revoked jti values with an expiry. ``is_revoked`` is synchronous and O(1)."""

    def __init__(self, clock: Callable[[], float] = time.time, max_entries: int = 100_000) -> None:
        self._clock = clock
        self.max_entries = max_entries  # revocations in force; ``revoke`` raises SharedSetFull beyond
        self._until: dict[str, float] = {}  # jti -> epoch seconds

    def __len__(self) -> int:
        return len(self._until)

    def is_revoked(self, jti: str, now: float) -> bool:
        until = self._until.get(jti)
        return until is not None and until > now

    def entries(self) -> list[Revocation]:
        """The revocations in force, soonest expiry first."""
        now = self._clock()
        live = (Revocation(jti, until) for jti, until in self._until.items() if until > now)
        return sorted(live, key=lambda r: (r.until, r.jti))

    async def revoke(self, jti: str, until: float) -> Revocation:
        """Refuse tokens with ``jti`` until ``until`` (epoch seconds, capped at a day from now).

        Revoking again never shortens a revocation. Raises ValueError for bad input and, for a
        shared store that cannot be reached, ``RevocationsUnavailable``."""
        capped = _checked_until(jti, until, self._clock())
        await self._record(Member(jti, capped))
        return Revocation(jti, self._until.get(jti, capped))

    @abstractmethod
    async def _record(self, member: Member) -> None: ...

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Begin (for a shared feed: load the revocations and follow changes)."""

    async def stop(self) -> None:  # noqa: B027 - optional hook
        """Stop and release connections."""

    def prune(self) -> None:
        """Drop expired revocations (they already stopped matching)."""
        now = self._clock()
        self._until = {jti: until for jti, until in self._until.items() if until > now}

    # -- the local snapshot (a shared_set.LocalCopy) ---------------------------------------------

    def member_added(self, member: Member) -> None:
        if member.until > self._until.get(member.name, -math.inf):
            self._until[member.name] = member.until

    def member_removed(self, name: str) -> None:
        self._until.pop(name, None)

    def members_replaced(self, members: list[Member]) -> None:
        self._until = {member.name: member.until for member in members}


class MemoryRevocations(Revocations):
    """Revocations for one process (with ``workers: N`` the supervisor gives each worker every one)."""

    async def _record(self, member: Member) -> None:
        self.prune()
        if member.name not in self._until and len(self._until) >= self.max_entries:
            raise SharedSetFull("revocation list", self.max_entries)
        self.member_added(member)


class RedisRevocations(SharedSetOwner, Revocations):
    """Revocations shared through Redis by every worker, replica and identity provider."""

    def __init__(
        self,
        redis_url: str,
        prefix: str = "garrison:revoked",
        *,
        resync_interval: float = 5.0,
        timeout: float = 2.0,
        clock: Callable[[], float] = time.time,
        max_entries: int = 100_000,
    ) -> None:
        super().__init__(clock, max_entries)
        self.prefix = prefix
        self._shared = SharedSet(
            redis_url,
            prefix,
            _WIRE,
            self,
            what="revocations",
            valid=valid_jti,
            unavailable=RevocationsUnavailable,
            resync_interval=resync_interval,
            timeout=timeout,
            clock=clock,
            max_members=max_entries,
        )

    def __repr__(self) -> str:
        return f"RedisRevocations(prefix={self.prefix!r}, entries={len(self._until)})"

    async def _record(self, member: Member) -> None:
        await self._shared.add(member)


def revocations_from_config(spec: RevocationsConfig, redis_url: str | None) -> Revocations:
    """The revocation set garrison.yaml's top-level ``revocations`` asks for: one for every component.

    The loader refuses ``storage: redis`` without ``redis.url``; the check here keeps a caller that
    skipped the loader from silently getting a set no other process shares."""
    if spec.storage == "redis":
        if not redis_url:
            raise ValueError("revocations.storage is `redis` but redis.url is not set")
        return RedisRevocations(redis_url, spec.prefix, max_entries=spec.max_entries)
    return MemoryRevocations(max_entries=spec.max_entries)
