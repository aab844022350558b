"""Response cache for ``cache: {ttl: ...}`` routes: an in-memory LRU bounded in bytes, on the hot path.

The HTTP rules (what may be stored, for how long, under which key) are in cache_policy.py; this
module holds the entries.

Keys. The primary key is (method, host, normalized path, query, subject). The host is in it because
routes and upstreams differ by host; ``subject`` is the authenticated subject exactly as bytes (b"" on a
route without auth), so one caller's response is never served to another. GET and HEAD are separate
entries; a HEAD entry has no body. The first response stored under a primary key records the header
names its ``Vary`` lists (lower-cased, deduplicated, sorted); its variants are keyed (primary, the
request's values of those headers). A response without ``Vary`` is stored under the primary key itself,
so the common lookup is one ``OrderedDict.get``. A later response with another Vary list replaces the
list and drops the old variants (their bytes are released at once).

Bounds. Header lines + body + key bytes + ``ENTRY_OVERHEAD`` per entry count toward ``max_bytes``; the
least recently used entries are evicted to make room. ``CacheFill`` collects a body while it streams
and gives up (releasing what it held) once the entry would exceed ``max_entry_bytes``.

Freshness. An entry lives min(route ttl, s-maxage, else max-age, else Expires - Date) seconds: the
upstream can shorten the route's ttl, never lengthen it. s-maxage, when present, replaces max-age as
RFC 9111 §5.2.2.10 says for a shared cache. A lifetime of 0 is not stored. Expiry is checked on lookup
against an injected monotonic clock; no background task runs.

Not stored (``storable``): methods other than GET/HEAD; statuses RFC 9110 does not call heuristically
cacheable; ``no-store``, ``private`` or ``no-cache`` (we never revalidate), also in their qualified
forms; a malformed max-age/s-maxage; ``Set-Cookie``; ``Vary: *`` or a Vary naming a header the gateway
sets itself (X-Forwarded-*, X-Request-Id, X-Garrison-*); a request with ``no-store``; and a
request that carried Authorization on a route with no subject, unless the response says ``public`` or
``s-maxage`` (RFC 9111 §3.5). A request with ``no-cache`` or ``max-age=0`` (or older than its max-age)
skips the lookup but may store the fresh answer. Not implemented: revalidation (ETag/304),
stale-while-revalidate, request coalescing, an upstream's own ``Age``.

Why hand-written: hishel, the maintained RFC 9111 library, binds httpx/httpcore request and response
objects and async storages, not a proxy's raw (name, value) tuples and streamed chunks. cachetools 8 does
have size-bounded caches (``getsizeof``) and a per-item-TTL LRU (``TLRUCache``), but the Vary index and the
counters need a hook in every eviction and its expiry heap costs work on every call; the LRU itself is a
few lines on ``OrderedDict``, and the rest of this module is HTTP policy that no cache container provides.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from garrison.gateway.cache_policy import (
    CacheRequest,
    Key,
    Primary,
    ResponseHead,
    freshness_lifetime,
    replay_lines,
    storable,
    variant_values,
)

ENTRY_OVERHEAD = 256  # bytes charged per entry for the objects around the data
X_CACHE_MISS = b"x-cache: MISS\r\n"
_BODY_LENGTH = -1  # CachedResponse.content_length is the body's length


# -- entries and the cache ------------------------------------------------------------------------
@dataclass(slots=True, eq=False)
class CachedResponse:
    status: int
    header_lines: bytes  # rendered "name: value\r\n" lines, already filtered
    body: bytes
    stored_at: float
    expires_at: float
    content_length: int | None  # what a replay writes as Content-Length; None: none (204)
    has_referrer_policy: bool  # the stored lines carry one: the gateway's default is not added
    key: Key
    primary: Primary
    size: int

    def age(self, now: float) -> int:
        return max(0, int(now - self.stored_at))

    def replay_headers(self, now: float) -> bytes:
        """The stored lines plus Content-Length, Age and X-Cache; the caller adds the rest of the head."""
        length = b"" if self.content_length is None else b"content-length: %d\r\n" % self.content_length
        return b"%s%sage: %d\r\nx-cache: HIT\r\n" % (self.header_lines, length, self.age(now))


@dataclass(slots=True)
class _VaryRecord:
    names: tuple[bytes, ...]
    keys: set[Key] = field(default_factory=set)


class ResponseCache:
    __slots__ = (
        "_clock",
        "_entries",
        "_size",
        "_vary",
        "evictions",
        "hits",
        "max_bytes",
        "max_entry_bytes",
        "misses",
        "stores",
    )

    def __init__(self, max_bytes: int, max_entry_bytes: int, clock: Callable[[], float] = time.monotonic):
        self.max_bytes = max_bytes
        self.max_entry_bytes = min(max_entry_bytes, max_bytes)
        self._clock = clock
        self._entries: OrderedDict[Key, CachedResponse] = OrderedDict()  # least recently used first
        self._vary: dict[Primary, _VaryRecord] = {}  # only primaries whose responses named Vary
        self._size = 0
        self.hits = self.misses = self.stores = self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size_bytes(self) -> int:
        return self._size

    def lookup(self, request: CacheRequest) -> CachedResponse | None:
        """The fresh entry for this request, or None (a miss, or a request that asked to bypass)."""
        entry = None if request.bypass else self._entries.get(request.primary)
        if entry is None and not request.bypass:
            record = self._vary.get(request.primary)
            if record is not None:
                key = (request.primary, variant_values(record.names, request.headers))
                entry = self._entries.get(key)
        if entry is not None:
            now = self._clock()
            if now >= entry.expires_at:
                self._remove(entry)
                entry = None
            elif request.max_age is not None and entry.age(now) > request.max_age:
                entry = None
        if entry is None:
            self.misses += 1
            return None
        self._entries.move_to_end(entry.key)
        self.hits += 1
        return entry

    def start_fill(
        self, request: CacheRequest, status: int, headers: list[tuple[bytes, bytes]], ttl: float
    ) -> CacheFill | None:
        """At the upstream response head: a CacheFill to feed the body to, or None if not storable."""
        head = ResponseHead.read(headers)
        if not storable(request, status, head):
            return None
        lifetime = freshness_lifetime(head, ttl)
        if lifetime <= 0:
            return None
        names = head.vary or ()
        values = variant_values(names, request.headers) if names else ()
        key: Key = (request.primary, values) if names else request.primary
        lines = replay_lines(headers)
        fixed = len(lines) + _key_bytes(request.primary, values) + ENTRY_OVERHEAD
        if fixed > self.max_entry_bytes:
            return None
        now = self._clock()
        entry = CachedResponse(
            status,
            lines,
            b"",
            now,
            now + lifetime,
            _replay_length(request, status, head),
            b"\nreferrer-policy:" in b"\n" + lines.lower(),
            key,
            request.primary,
            fixed,
        )
        return CacheFill(self, entry, names, self.max_entry_bytes - fixed)

    def clear(self) -> None:
        self._entries.clear()
        self._vary.clear()
        self._size = 0

    def _store(self, entry: CachedResponse, names: tuple[bytes, ...]) -> None:
        self._forget_other_vary(entry.primary, names)
        old = self._entries.get(entry.key)
        if old is not None:
            self._remove(old)
        while self._size + entry.size > self.max_bytes:
            self._remove(next(iter(self._entries.values())))
            self.evictions += 1
        if names:
            self._vary.setdefault(entry.primary, _VaryRecord(names)).keys.add(entry.key)
        self._entries[entry.key] = entry
        self._size += entry.size
        self.stores += 1

    def _forget_other_vary(self, primary: Primary, names: tuple[bytes, ...]) -> None:
        """A response with another Vary list replaces the old one: its entries become unreachable."""
        record = self._vary.get(primary)
        if record is not None and record.names != names:
            for key in list(record.keys):
                self._remove(self._entries[key])
        elif record is None and names and primary in self._entries:
            self._remove(self._entries[primary])

    def _remove(self, entry: CachedResponse) -> None:
        del self._entries[entry.key]
        self._size -= entry.size
        if entry.key == entry.primary:
            return
        record = self._vary[entry.primary]
        record.keys.discard(entry.key)
        if not record.keys:
            del self._vary[entry.primary]


def _key_bytes(primary: Primary, values: tuple[bytes | None, ...]) -> int:
    return sum(len(part) for part in primary) + sum(len(value or b"") for value in values)


def _replay_length(request: CacheRequest, status: int, head: ResponseHead) -> int | None:
    """A HEAD replay repeats the upstream's Content-Length; a 204 has none; others send the body's."""
    if status == 204:
        return None
    return head.content_length if request.method == b"HEAD" else _BODY_LENGTH


class CacheFill:
    """Collects one response body while it streams; ``commit`` at the end stores the entry."""

    __slots__ = ("_budget", "_cache", "_chunks", "_entry", "_names")

    def __init__(
        self, cache: ResponseCache, entry: CachedResponse, names: tuple[bytes, ...], budget: int
    ) -> None:
        self._cache = cache
        self._entry = entry
        self._names = names
        self._budget = budget  # body bytes still allowed under max_entry_bytes
        self._chunks: list[bytes] | None = []

    def add(self, chunk: bytes) -> bool:
        """False once the body is too large to keep (what was held is released) or the fill ended."""
        if self._chunks is None:
            return False
        self._budget -= len(chunk)
        if self._budget < 0:
            self._chunks = None
            return False
        self._chunks.append(chunk)
        return True

    def commit(self) -> CachedResponse | None:
        """Stores the entry (the body is complete); None if the fill was abandoned or committed."""
        chunks, self._chunks = self._chunks, None
        if chunks is None:
            return None
        entry = self._entry
        entry.body = b"".join(chunks)
        entry.size += len(entry.body)
        if entry.content_length == _BODY_LENGTH:
            entry.content_length = len(entry.body)
        self._cache._store(entry, self._names)
        return entry
