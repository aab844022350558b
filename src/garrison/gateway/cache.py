"""Response cache for ``cache: {ttl: ...}`` routes: an in-memory LRU bounded in bytes, on the hot path.

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

import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from email.utils import mktime_tz, parsedate_tz

from garrison.gateway.exchange import RESPONSE_DROP
from garrison.gateway.http1 import GATEWAY_SET, OWNED_PREFIX

CACHEABLE_METHODS = frozenset({b"GET", b"HEAD"})
# Heuristically cacheable status codes (RFC 9110 §15.1).
CACHEABLE_STATUSES = frozenset({200, 203, 204, 300, 301, 404, 405, 410, 414, 501})
# Response headers never replayed: those a live response drops too (hop-by-hop, framing, security
# headers the gateway owns), plus proxy-* and the ones a hit writes itself.
NOT_REPLAYED = RESPONSE_DROP | {b"age", b"x-cache"}
# Vary may not name a header whose upstream value the gateway made up (client address, request id,
# identity): the client's copy would not tell the variants apart. Host is in the primary key.
UNVARYING = GATEWAY_SET - {b"host"}
ENTRY_OVERHEAD = 256  # bytes charged per entry for the objects around the data
MAX_DELTA_SECONDS = 2**31  # RFC 9111 §1.2.2
X_CACHE_MISS = b"x-cache: MISS\r\n"

_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9a-z-]+")
_DIGITS = re.compile(rb"[0-9]+")
_PARTS = re.compile(rb'(?:[^,"]|"(?:[^"\\]|\\.)*"?)+')  # comma-separated, commas inside quotes kept
_ESCAPE = re.compile(rb"\\(.)")
_BODY_LENGTH = -1  # CachedResponse.content_length is the body's length

Primary = tuple[bytes, bytes, bytes, bytes, bytes]
Key = Primary | tuple[Primary, tuple[bytes | None, ...]]


# -- Cache-Control --------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class CacheControl:
    no_store: bool = False
    no_cache: bool = False
    private: bool = False
    public: bool = False
    max_age: int | None = None
    s_maxage: int | None = None
    malformed: bool = False  # a max-age or s-maxage without a valid delta-seconds: do not cache


NO_DIRECTIVES = CacheControl()


def parse_cache_control(values: list[bytes]) -> CacheControl:
    """Cache-Control field lines -> directives; unknown or unparsable directives are ignored."""
    if not values:
        return NO_DIRECTIVES
    flags: set[bytes] = set()
    ages: dict[bytes, int] = {}
    malformed = False
    for value in values:
        for name, arg in _directives(value):
            if name not in (b"max-age", b"s-maxage"):
                flags.add(name)
                continue
            seconds = _delta_seconds(arg)
            if seconds is None:
                malformed = True
            else:  # a repeated directive: the shorter one
                ages[name] = min(seconds, ages.get(name, seconds))
    return CacheControl(
        no_store=b"no-store" in flags,
        no_cache=b"no-cache" in flags,
        private=b"private" in flags,
        public=b"public" in flags,
        max_age=ages.get(b"max-age"),
        s_maxage=ages.get(b"s-maxage"),
        malformed=malformed,
    )


def _directives(value: bytes) -> Iterable[tuple[bytes, bytes | None]]:
    parts = _PARTS.findall(value) if b'"' in value else value.split(b",")
    for part in parts:
        name, eq, arg = part.partition(b"=")
        name = name.strip().lower()
        if _TOKEN.fullmatch(name):
            yield name, (_unquote(arg.strip()) if eq else None)


def _unquote(arg: bytes) -> bytes | None:
    if not arg.startswith(b'"'):
        return arg
    if len(arg) < 2 or not arg.endswith(b'"'):
        return None  # unterminated
    return _ESCAPE.sub(rb"\1", arg[1:-1])


def _delta_seconds(arg: bytes | None) -> int | None:
    if arg is None or not _DIGITS.fullmatch(arg):
        return None
    return MAX_DELTA_SECONDS if len(arg) > 10 else min(int(arg), MAX_DELTA_SECONDS)


# -- request and response heads -------------------------------------------------------------------
class CacheRequest:
    """What the cache needs from a request on a cached route, read once after authentication."""

    __slots__ = ("authorization", "bypass", "headers", "max_age", "method", "no_store", "primary", "subject")

    def __init__(
        self,
        method: bytes,
        host: bytes,
        path: bytes,
        query: bytes,
        subject: bytes,
        headers: list[tuple[bytes, bytes]],
        cache_control: list[bytes],
        authorization: bool,
    ) -> None:
        cc = parse_cache_control(cache_control)
        self.method = method
        self.subject = subject
        self.headers = headers  # the raw request headers, read again only for Vary
        self.primary: Primary = (method, host, path, query, subject)
        self.authorization = authorization
        self.no_store = cc.no_store or method not in CACHEABLE_METHODS
        self.max_age = cc.max_age
        # no-cache / max-age=0: fetch a fresh answer (which may then be stored).
        self.bypass = method not in CACHEABLE_METHODS or cc.no_cache or cc.malformed or cc.max_age == 0

    @classmethod
    def from_headers(
        cls,
        method: bytes,
        host: bytes,
        path: bytes,
        query: bytes,
        subject: bytes,
        headers: list[tuple[bytes, bytes]],
    ) -> CacheRequest:
        """Scans the raw headers for Cache-Control and Authorization (any case)."""
        cache_control: list[bytes] = []
        authorization = False
        for name, value in headers:
            lname = name.lower()
            if lname == b"cache-control":
                cache_control.append(value)
            elif lname == b"authorization":
                authorization = True
        return cls(method, host, path, query, subject, headers, cache_control, authorization)


@dataclass(slots=True)
class ResponseHead:
    """What the cache needs from an upstream response head, read in one pass."""

    cache_control: CacheControl = NO_DIRECTIVES
    vary: tuple[bytes, ...] | None = ()  # None: "Vary: *" or another Vary the cache cannot honour
    set_cookie: bool = False
    expires: bytes | None = None
    date: bytes | None = None
    content_length: int | None = None

    @classmethod
    def read(cls, headers: list[tuple[bytes, bytes]]) -> ResponseHead:
        head = cls()
        cache_control: list[bytes] = []
        vary: list[bytes] = []
        for name, value in headers:
            lname = name.lower()
            if lname == b"cache-control":
                cache_control.append(value)
            elif lname == b"vary":
                vary.append(value)
            elif lname == b"set-cookie":
                head.set_cookie = True
            elif lname == b"expires" and head.expires is None:
                head.expires = value
            elif lname == b"date":
                head.date = value
            elif lname == b"content-length" and _DIGITS.fullmatch(value):
                head.content_length = int(value)
        head.cache_control = parse_cache_control(cache_control)
        head.vary = parse_vary(vary) if vary else ()
        return head


def parse_vary(values: list[bytes]) -> tuple[bytes, ...] | None:
    """Vary field lines -> sorted unique lower-cased names; None when the response cannot be stored:
    "*", or a header the gateway sets itself."""
    names = {token.strip().lower() for value in values for token in value.split(b",")}
    names.discard(b"")
    if b"*" in names or not names.isdisjoint(UNVARYING) or any(n.startswith(OWNED_PREFIX) for n in names):
        return None
    return tuple(sorted(names))


def storable(request: CacheRequest, status: int, head: ResponseHead) -> bool:
    cc = head.cache_control
    if request.no_store or status not in CACHEABLE_STATUSES:
        return False
    if cc.no_store or cc.private or cc.no_cache or cc.malformed or head.set_cookie or head.vary is None:
        return False
    # A shared cache must not reuse an answer to credentials it did not check (RFC 9111 §3.5).
    return not (request.authorization and not request.subject) or cc.public or cc.s_maxage is not None


def freshness_lifetime(head: ResponseHead, ttl: float) -> float:
    cc = head.cache_control
    upstream = cc.s_maxage if cc.s_maxage is not None else cc.max_age
    if upstream is None and head.expires is not None:
        return min(ttl, _expires_lifetime(head.expires, head.date))
    return ttl if upstream is None else min(ttl, upstream)


def _expires_lifetime(expires: bytes, date: bytes | None) -> float:
    """Expires - Date; an invalid Expires (such as "0") is in the past (RFC 9111 §5.3)."""
    end = _http_date(expires)
    if end is None:
        return 0.0
    start = _http_date(date) if date is not None else None
    return end - (time.time() if start is None else start)


def _http_date(value: bytes) -> float | None:
    parsed = parsedate_tz(value.decode("latin-1"))
    return None if parsed is None else float(mktime_tz(parsed))


def replay_lines(headers: list[tuple[bytes, bytes]]) -> bytes:
    """The response header lines a hit replays: hop-by-hop and gateway-written headers dropped."""
    lowered = [name.lower() for name, _ in headers]
    named = {
        token.strip().lower()
        for lname, (_, value) in zip(lowered, headers, strict=True)
        if lname == b"connection"
        for token in value.split(b",")
    }
    return b"".join(
        b"%s: %s\r\n" % pair
        for lname, pair in zip(lowered, headers, strict=True)
        if lname not in NOT_REPLAYED and lname not in named and not lname.startswith(b"proxy-")
    )


def variant_values(names: tuple[bytes, ...], headers: list[tuple[bytes, bytes]]) -> tuple[bytes | None, ...]:
    """The request's values of each Vary name, all lines joined in order; None when absent."""
    found: list[list[bytes]] = [[] for _ in names]
    for name, value in headers:
        lname = name.lower()
        if lname in names:
            found[names.index(lname)].append(value)
    return tuple(b", ".join(values) if values else None for values in found)


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
