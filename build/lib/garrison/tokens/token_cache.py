"""The verified-token cache and the revocation check it asks on every hit.

A token verified once (signature, claims: tokens/jwt.py) is remembered by the SHA-256 of its text until
its ``exp``, so the hot path pays a hash and a dict lookup instead of a signature check; the revocation
check still runs on every hit, so a revoked token stops at once.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Protocol

from garrison.tokens.jwt import TokenRejected, VerifiedToken

if TYPE_CHECKING:
    pass

__all__ = ["RevocationCheck", "RevocationList", "TokenCache"]


class RevocationCheck(Protocol):
    """What the token cache asks on every hit: is this jti revoked at ``now``?

    Synchronous and O(1), because it runs on the hot path. ``RevocationList`` (one process, fed by
    ``TokenCache.revoke_jti``) implements it, and so do the shared feeds of tokens/revocations.py
    (fed by the admin API and by an identity provider through Redis).
    """

    def is_revoked(self, jti: str, now: float) -> bool: ...


class RevocationList:
    """Revoked ``jti`` values, each until a time (normally the token's exp). Bounded in entries.

    When full, expired entries are purged first; if it is still full, the entry that expires soonest is
    dropped (and counted in ``dropped``), since its token has the least time left to be replayed.
    """

    def __init__(self, max_entries: int = 100_000) -> None:
        self.max_entries = max_entries
        self._until: dict[str, float] = {}
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._until)

    def revoke(self, jti: str, until: float, now: float | None = None) -> None:
        if jti in self._until:
            self._until[jti] = max(self._until[jti], until)
            return
        if len(self._until) >= self.max_entries:
            current = time.time() if now is None else now
            self._until = {j: u for j, u in self._until.items() if u > current}
            while len(self._until) >= self.max_entries:
                del self._until[min(self._until, key=self._until.__getitem__)]
                self.dropped += 1
        self._until[jti] = until

    def is_revoked(self, jti: str, now: float) -> bool:
        until = self._until.get(jti)
        if until is None:
            return False
        if until > now:
            return True
        del self._until[jti]
        return False


class TokenCache:
    """Verified tokens by the SHA-256 of the token (raw tokens are never kept), LRU-bounded.

    An entry lives no longer than its token's ``exp``. A hit whose jti is revoked raises
    ``TokenRejected("revoked")``. A cache belongs to ONE verifier (its issuer, audiences and typ rule
    decided what "verified" means); share the revocations (a ``RevocationCheck``) between caches instead.
    """

    def __init__(self, max_entries: int = 10_000, revocations: RevocationCheck | None = None) -> None:
        self.max_entries = max_entries
        self.revocations: RevocationCheck = revocations if revocations is not None else RevocationList()
        self._entries: OrderedDict[bytes, VerifiedToken] = OrderedDict()
        self._owner: object | None = None

    def __len__(self) -> int:
        return len(self._entries)

    def bind(self, owner: object) -> None:
        if self._owner is not None and self._owner is not owner:
            raise ValueError("a TokenCache serves one verifier; give each verifier its own")
        self._owner = owner

    def revoke_jti(self, jti: str, until: float, now: float | None = None) -> None:
        """Revoke in this cache's own ``RevocationList``; a shared feed is written through its ``revoke``."""
        if not isinstance(self.revocations, RevocationList):
            raise TypeError("this cache reads a shared revocation feed: revoke through the feed")
        self.revocations.revoke(jti, until, now)

    def get(self, token: str, now: float) -> VerifiedToken | None:
        digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        entry = self._entries.get(digest)
        if entry is None:
            return None
        if now >= entry.exp:
            del self._entries[digest]
            return None
        if entry.jti is not None and self.revocations.is_revoked(entry.jti, now):
            del self._entries[digest]
            raise TokenRejected("revoked")
        self._entries.move_to_end(digest)
        return entry

    def put(self, token: str, verified: VerifiedToken, now: float) -> None:
        """Remember ``verified``; raises TokenRejected("revoked") (and stores nothing) for a revoked jti."""
        if verified.jti is not None and self.revocations.is_revoked(verified.jti, now):
            raise TokenRejected("revoked")
        if now >= verified.exp or self.max_entries <= 0:
            return
        digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        self._entries[digest] = verified
        self._entries.move_to_end(digest)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)


# -- extraction --------------------------------------------------------------------------------------
