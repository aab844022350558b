"""Request-target parsing and path normalization: the one place a path is canonicalised.

Why one place: a proxy that matches routes on one spelling of a path and forwards another spelling is
bypassable (``/public/..%2Fadmin``, ``/admin;x``, ``//admin``). The gateway parses each request target
once, with the rules below, matches routes on the result and forwards exactly that result upstream.
Anything ambiguous is refused rather than guessed at (fail closed).

Rules (the gateway's documented behaviour):

1. origin-form ``/...`` is the normal case. absolute-form ``http://host[:port]/path?q`` or ``https://...``
   (scheme case-insensitive) is accepted: the authority is extracted and lower-cased; it must be a valid
   host (reg-name characters, IPv4 or ``[IPv6]``) with an optional numeric port; userinfo (``@``) is
   rejected; an empty path becomes ``/``. Any other scheme, asterisk-form ``*``, authority-form
   (``host:port``) or an empty target is rejected. (The caller compares the authority with Host.)
2. A fragment ``#`` anywhere in the raw target is rejected.
3. A percent-encoding must be ``%`` plus two hex digits, else the target is rejected. Encodings of
   unreserved characters (ALPHA / DIGIT / ``-._~``) are decoded, before dot-segment removal, so
   ``/%61dmin`` is ``/admin`` and ``/a/%2e%2e/b`` is ``/b``. Other encodings are kept, hex upper-cased
   (``%c3%a9`` becomes ``%C3%A9``). Decoding happens once: ``/%2561`` stays ``/%2561``.
4. Rejected outright: encoded slash ``%2F``, encoded backslash ``%5C``, literal backslash, literal ``;``
   and encoded ``%3B`` (path parameters, which upstreams such as Tomcat strip), encoded control
   characters ``%00``-``%1F`` and ``%7F``, and any raw byte outside the RFC 3986 pchar set plus ``/``
   (only ALPHA DIGIT ``-._~!$&'()*+,=:@/`` and ``%`` escapes may appear raw in a path).
   Also rejected, because an upstream that decodes the path once more would meet them: ``%25``
   followed by the hex digits of ``.``, ``/``, ``\\``, ``;`` or a control character, after any
   number of further ``25`` (``%252e``, ``%252F``, ``%255c``, ``%253B``, ``%2500``, ``%25252e``),
   checked after the decoding of rule 3, so ``%25%32%65`` is refused too. ``/public/%252e%252e/admin``
   would otherwise be routed to ``/public`` and served as ``/admin`` by such an upstream.
5. ``%23`` (``#``), ``%3F`` (``?``) and the other encoded reserved characters stay encoded: they are data.
6. Repeated slashes merge: ``//admin`` is ``/admin``, ``/a///b`` is ``/a/b``.
7. Dot segments ``.`` and ``..`` are removed as in RFC 3986 section 5.2.4, after the decoding of rule 3;
   a ``..`` that would climb above the root is rejected, not clamped. A trailing ``/.`` or ``/..``
   leaves a trailing slash (``/a/b/..`` is ``/a/``).
8. Case is preserved (``/ADMIN`` stays ``/ADMIN``): routes match case-sensitively and the upstream
   receives exactly the normalized path.
9. Normalization is idempotent, and a trailing slash is preserved.

The query is passed through unchanged but may hold only visible ASCII (0x21-0x7E, no ``#``). A raw
target longer than ``MAX_PATH_LENGTH`` is rejected with status 414; every other rejection is 400.
``TargetRejected.reason`` is a fixed message that never echoes the input, so it is safe to log or return.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Final

__all__ = ["MAX_PATH_LENGTH", "RequestTarget", "TargetRejected", "normalize_path", "parse_request_target"]

MAX_PATH_LENGTH = 8192

_UNRESERVED = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"
# RFC 3986 pchar minus ";" (rule 4), plus "/" and the "%" that starts an escape.
_PATH_BYTES = _UNRESERVED + b"!$&'()*+,=:@/%"
_QUERY_BYTES = bytes(range(0x21, 0x7F)).replace(b"#", b"")
_REG_NAME_BYTES = _UNRESERVED + b"!$&'()*+,;="
_IPV6_BYTES = b"0123456789abcdef:."

# Fast path: segments that are non-empty, do not start with "." and hold no "%", ";" or "\" are
# already normalized, so such a target is returned as is after one regex match.
_SEG = rb"[A-Za-z0-9\-_~!$&'()*+,=:@][A-Za-z0-9\-._~!$&'()*+,=:@]*"
_FAST_PATH = re.compile(rb"/(?:" + _SEG + rb"(?:/" + _SEG + rb")*/?)?")
_FAST_TARGET = re.compile(rb"(" + _FAST_PATH.pattern + rb")(?:\?([\x21\x22\x24-\x7e]*))?")
_AUTHORITY_END = re.compile(rb"[/?]")
# Rule 4, second sentence: what one more decoding turns into a rule-4 escape or a dot. Searched in
# the output of rule 3, where "%25" is always spelt upper-case and what follows it is plain text.
_REENCODED = re.compile(rb"%25(?:25)*(?:2[EeFf]|5[Cc]|3[Bb]|[01][0-9A-Fa-f]|7[Ff])")


def _escape_tables() -> tuple[dict[bytes, bytes], frozenset[bytes]]:
    """Map every two-hex-digit spelling (any case) to its replacement, and list the forbidden ones.

    Precomputed so the slow path handles an escape with one dict lookup instead of parsing hex.
    """
    forbidden_values = {*range(0x20), 0x7F, ord("/"), ord("\\"), ord(";")}
    replacements: dict[bytes, bytes] = {}
    forbidden: set[bytes] = set()
    for value in range(256):
        upper = b"%02X" % value
        for hi in {upper[:1], upper[:1].lower()}:
            for lo in {upper[1:], upper[1:].lower()}:
                if value in forbidden_values:
                    forbidden.add(hi + lo)
                elif value in _UNRESERVED:
                    replacements[hi + lo] = bytes([value])
                else:
                    replacements[hi + lo] = b"%" + upper
    return replacements, frozenset(forbidden)


_ESCAPES, _FORBIDDEN_ESCAPES = _escape_tables()


class TargetRejected(ValueError):
    """A request target the gateway refuses.

    ``reason`` is a short fixed message that never echoes the input (safe to log and to send back);
    ``status`` is the HTTP status to answer with: 414 for an overlong target, otherwise 400.
    """

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


class RequestTarget:
    """A parsed request target: the normalized path routes match on and the upstream receives.

    A plain class rather than a NamedTuple or a frozen dataclass: one is made per request, and a
    frozen dataclass's ``__init__`` sets each field through ``object.__setattr__``, while a
    NamedTuple's ``__new__`` is interpreted Python even where this module is compiled (setup.py).
    Immutable by type (``Final``: mypy refuses an assignment), not by a runtime check."""

    __slots__ = ("authority", "has_query", "path", "query")

    def __init__(self, path: bytes, query: bytes, has_query: bool, authority: bytes | None) -> None:
        self.path: Final = path
        self.query: Final = query
        self.has_query: Final = has_query
        self.authority: Final = authority

    def _fields(self) -> tuple[bytes, bytes, bool, bytes | None]:
        return self.path, self.query, self.has_query, self.authority

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RequestTarget) and self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        return "RequestTarget(path={!r}, query={!r}, has_query={!r}, authority={!r})".format(*self._fields())


def parse_request_target(raw: bytes) -> RequestTarget:
    """Parse and normalize a raw request target, or raise TargetRejected.

    The common case (an already-normal origin-form path with a plain query) costs one regex match.
    """
    if len(raw) <= MAX_PATH_LENGTH and (match := _FAST_TARGET.fullmatch(raw)) is not None:
        path, query = match.groups()
        if query is None:
            return RequestTarget(path, b"", False, None)
        return RequestTarget(path, query, True, None)
    return _parse_slow(raw)


def normalize_path(raw_path: bytes) -> bytes:
    """Normalize a raw path (starting with "/", no query) with rules 3-9, or raise TargetRejected."""
    if len(raw_path) <= MAX_PATH_LENGTH and _FAST_PATH.fullmatch(raw_path) is not None:
        return raw_path
    return _normalize_slow(raw_path)


def _parse_slow(raw: bytes) -> RequestTarget:
    if len(raw) > MAX_PATH_LENGTH:
        raise TargetRejected("request target too long", 414)
    if not raw:
        raise TargetRejected("empty request target")
    if b"#" in raw:
        raise TargetRejected("fragment in request target")
    authority: bytes | None = None
    rest = raw
    if raw[:1] != b"/":
        authority, rest = _split_absolute_form(raw)
    path, sep, query = rest.partition(b"?")
    if query.translate(None, _QUERY_BYTES):
        raise TargetRejected("invalid character in query")
    return RequestTarget(normalize_path(path or b"/"), query, bool(sep), authority)


def _split_absolute_form(raw: bytes) -> tuple[bytes, bytes]:
    """Split ``http(s)://authority/rest`` into the lower-cased, validated authority and the rest."""
    prefix = raw[:8].lower()
    if prefix.startswith(b"http://"):
        start = 7
    elif prefix == b"https://":
        start = 8
    elif raw == b"*":
        raise TargetRejected("asterisk-form request target not accepted")
    else:
        raise TargetRejected("request target must be origin-form or absolute-form")
    end_match = _AUTHORITY_END.search(raw, start)
    end = len(raw) if end_match is None else end_match.start()
    authority = raw[start:end].lower()
    _check_authority(authority)
    return authority, raw[end:]


def _check_authority(authority: bytes) -> None:
    """Accept ``host[:port]`` with a reg-name, IPv4 or bracketed IPv6 host; refuse userinfo."""
    if b"@" in authority:
        raise TargetRejected("userinfo in request target")
    if authority.startswith(b"["):
        close = authority.find(b"]")
        host, port_part = authority[: close + 1], authority[close + 1 :]
        inner = host[1:-1]
        if close < 0 or not inner or inner.translate(None, _IPV6_BYTES):
            raise TargetRejected("invalid host in request target")
        try:
            ipaddress.IPv6Address(inner.decode("ascii"))
        except ValueError:
            raise TargetRejected("invalid host in request target") from None
    else:
        colon = authority.find(b":")
        host, port_part = (authority, b"") if colon < 0 else (authority[:colon], authority[colon:])
        if not host or host.translate(None, _REG_NAME_BYTES):
            raise TargetRejected("invalid host in request target")
    if port_part:
        port = port_part[1:]
        if port_part[:1] != b":" or not port.isdigit() or len(port) > 5 or int(port) > 65535:
            raise TargetRejected("invalid port in request target")


def _normalize_slow(raw_path: bytes) -> bytes:
    if len(raw_path) > MAX_PATH_LENGTH:
        raise TargetRejected("request target too long", 414)
    if raw_path[:1] != b"/":
        raise TargetRejected("path must start with /")
    _check_path_bytes(raw_path)
    if b"%" not in raw_path:
        return _remove_dot_segments(raw_path)
    decoded = _decode_unreserved(raw_path)
    if b"%25" in decoded and _REENCODED.search(decoded) is not None:
        raise TargetRejected("double-encoded dot, slash, backslash, semicolon or control character in path")
    return _remove_dot_segments(decoded)


def _check_path_bytes(raw_path: bytes) -> None:
    """Refuse any raw byte outside pchar + "/" (rule 4), naming the common attacks in the reason."""
    bad = raw_path.translate(None, _PATH_BYTES)
    if not bad:
        return
    if b"\\" in bad:
        raise TargetRejected("backslash in path")
    if b";" in bad:
        raise TargetRejected("path parameters (;) not accepted")
    if b"#" in bad:
        raise TargetRejected("fragment in request target")
    raise TargetRejected("invalid character in path")


def _decode_unreserved(raw_path: bytes) -> bytes:
    """Decode escapes of unreserved characters, upper-case the others, refuse forbidden ones (rules 3-5).

    Single pass over the escapes, so the output of one decoding is never decoded again.
    """
    head, *chunks = raw_path.split(b"%")
    out = [head]
    for chunk in chunks:
        replacement = _ESCAPES.get(chunk[:2])
        if replacement is None:
            if chunk[:2] in _FORBIDDEN_ESCAPES:
                raise TargetRejected("forbidden percent-encoding in path")
            raise TargetRejected("malformed percent-encoding in path")
        out.append(replacement)
        out.append(chunk[2:])
    return b"".join(out)


def _remove_dot_segments(path: bytes) -> bytes:
    """Merge empty segments and resolve ``.``/``..`` (rules 6-7); refuse climbing above the root.

    Slashes merge before ``..`` is applied, so ``/a//..`` is ``/``: the segment list is the one a
    slash-merging upstream would see, and that upstream gets this exact result anyway.
    """
    segments = path.split(b"/")[1:]
    out: list[bytes] = []
    for segment in segments:
        if segment == b"..":
            if not out:
                raise TargetRejected("path climbs above the root")
            out.pop()
        elif segment and segment != b".":
            out.append(segment)
    if not out:
        return b"/"
    trailing = segments[-1] in (b"", b".", b"..")
    return b"/" + b"/".join(out) + (b"/" if trailing else b"")
