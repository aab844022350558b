"""HTTP caching policy for the gateway's response cache (gateway/cache.py): what RFC 9110/9111 say may
be stored and for how long, read from raw request and response header tuples.

``CacheRequest`` is what the cache needs from a request (its key and its Cache-Control),
``ResponseHead`` what it needs from an upstream answer; ``storable`` and ``freshness_lifetime``
decide; ``replay_lines`` and ``variant_values`` prepare an entry. No state lives here.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from email.utils import mktime_tz, parsedate_tz

from garrison.gateway.exchange import RESPONSE_DROP
from garrison.proxy.http1 import GATEWAY_SET, OWNED_PREFIX

CACHEABLE_METHODS = frozenset({b"GET", b"HEAD"})
# Heuristically cacheable status codes (RFC 9110 §15.1).
CACHEABLE_STATUSES = frozenset({200, 203, 204, 300, 301, 404, 405, 410, 414, 501})
# Response headers never replayed: those a live response drops too (hop-by-hop, framing, security
# headers the gateway owns), plus proxy-* and the ones a hit writes itself.
NOT_REPLAYED = RESPONSE_DROP | {b"age", b"x-cache"}
# Vary may not name a header whose upstream value the gateway made up (client address, request id,
# identity): the client's copy would not tell the variants apart. Host is in the primary key.
UNVARYING = GATEWAY_SET - {b"host"}
MAX_DELTA_SECONDS = 2**31  # RFC 9111 §1.2.2

_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9a-z-]+")
_DIGITS = re.compile(rb"[0-9]+")
_PARTS = re.compile(rb'(?:[^,"]|"(?:[^"\\]|\\.)*"?)+')  # comma-separated, commas inside quotes kept
_ESCAPE = re.compile(rb"\\(.)")

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
