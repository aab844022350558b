"""One request/response exchange, and the header rewriting on both sides of it.

Kept apart from the socket code so that the rules (which client headers survive, what the upstream
is told about the client, how a response is re-framed) are plain functions over bytes.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from garrison.proxy.exchange import ProxyExchange
from garrison.proxy.http1 import (
    GATEWAY_SET,
    HOP_BY_HOP,
    OWNED_PREFIX,
    BadFraming,
    check_transfer_encoding,
    connection_tokens,
    parse_content_length,
    status_line,
)
from garrison.tokens.forwarded import forwarded_element

STATUS_LINES = {status: status_line(status) for status in range(100, 600)}

if TYPE_CHECKING:
    from garrison.gateway.cache import CacheFill, ResponseCache
    from garrison.gateway.cache_policy import CacheRequest
    from garrison.gateway.ratelimit import RateDecision
    from garrison.gateway.runtime import Route, Runtime
    from garrison.proxy.upstream.target import Target

_HOST_RE = re.compile(rb"([a-z0-9._~!$&'()*+,;=-]+|\[[0-9a-f:.]+\])(:[0-9]{1,5})?")

# Response headers the gateway never passes on: framing it redoes, security headers it owns, and
# the upstream's software banner.
RESPONSE_DROP = HOP_BY_HOP | {
    b"content-length",
    b"strict-transport-security",
    b"x-content-type-options",
    b"x-request-id",
    b"traceparent",
    b"server",
    b"x-powered-by",
}


# "keep-alive" and "close", the usual Connection values, name no header to drop.
_PLAIN_CONNECTION = frozenset((b"keep-alive", b"close"))


class Rejected(Exception):
    """A request refused before it reaches an upstream."""

    def __init__(
        self,
        status: int,
        code: str,
        extra_headers: bytes = b"",
        client_ip: str | None = None,
        blocked: str | None = None,
    ) -> None:
        super().__init__(code)
        self.status = status
        self.code = code
        self.extra_headers = extra_headers
        self.client_ip = client_ip  # the resolved client, when known, for the access log
        self.blocked = blocked  # refused by the blocklist or IP rules: which (a gateway.blocked event)


class Exchange(ProxyExchange):
    """One request and its response at the edge: the generic proxy fields (proxy/exchange.py) plus
    the route and what its stages decide. A plain class: most fields keep their class-level
    default, so creating one per request sets only what the request head decided."""

    # Edge state with defaults (instance attributes shadow these once set).
    extra_response_headers = b""  # e.g. RateLimit-* from the route's rate limiter
    identity_headers = b""  # X-Garrison-* lines for the upstream, once authenticated
    preflight: bytes | None = None  # head of the gateway's own answer to a CORS preflight
    log_subject = b"null"  # JSON value for the access log
    client = ""  # the authenticated client, what `rate_limit: {key: client}` counts
    rate_decision: RateDecision | None = None  # the tightest of the route's limits so far
    # Response caching, on routes with `cache`: the request's raw headers, its cache key and the
    # cache it will be stored in (a miss), and the entry being filled while the body streams.
    request_headers: list[tuple[bytes, bytes]] | None = None
    cache_request: CacheRequest | None = None
    cache: ResponseCache | None = None
    cache_fill: CacheFill | None = None
    client_headers: ClientHeaders | None = None  # what the head said (User-Agent, Referer: audit events)

    # Not keyword-only: build_exchange passes all of them by position (cheaper, on every request);
    # other callers may name them.
    def __init__(
        self,
        method: bytes,
        path: bytes,
        request_line: bytes,
        host: bytes,
        http11: bool,
        keep_alive: bool,
        start: float,
        route: Route,
        client_ip: str,
        request_id: bytes,
        trace_id: bytes,
        body_mode: int,
        content_length: int,
        head_rest: bytes,
        trace_lines: bytes,
        authorization: list[bytes],
        api_key: list[bytes],
        query: bytes,
        expect_continue: bool = False,
    ) -> None:
        self.method = method
        self.path = path
        self.request_line = request_line
        self.host = host
        self.http11 = http11
        self.keep_alive = keep_alive
        self.start = start
        self.route = route
        self.client_ip = client_ip
        self.request_id = request_id
        self.trace_id = trace_id
        self.body_mode = body_mode
        self.content_length = content_length
        self.head_rest = head_rest  # everything after the request line except Host
        self.trace_lines = trace_lines  # x-request-id and traceparent, sent both ways
        self.authorization = authorization
        self.api_key = api_key
        self.query = query
        self.body_buffer = []
        if expect_continue:
            self.expect_continue = True

    def upstream_head(self, target: Target, preserve_host: bool) -> bytes:
        host = self.host if preserve_host else target.host_header
        return b"%shost: %s\r\n%s%s" % (self.request_line, host, self.identity_headers, self.head_rest)


class ClientHeaders:
    """What the gateway learnt from the client's header block while filtering it.

    Class-level defaults: a typical request sets only ``kept`` and ``host``."""

    host: bytes | None = None
    content_length: int | None = None
    chunked = False
    forwarded_for: tuple[bytes, ...] | list[bytes] = ()
    forwarded: tuple[bytes, ...] | list[bytes] = ()
    forwarded_proto: bytes | None = None
    request_id: bytes | None = None
    traceparent: bytes | None = None
    expect_continue = False
    user_agent: bytes | None = None  # for the audit events (gateway/audit.py); forwarded as any header
    referer: bytes | None = None

    def __init__(self) -> None:
        self.kept: list[bytes] = []
        self.authorization: list[bytes] = []  # kept and forwarded too; read by a route's auth
        self.api_key: list[bytes] = []  # X-API-Key values
        # Lines carrying an API key (X-API-Key, Authorization: ApiKey): forwarded only to routes
        # that do not consume the key themselves, so a Garrison key never reaches an upstream.
        self.api_key_lines: list[bytes] = []
        self.origin: bytes | None = None  # Origin, for CORS
        self.cors_method: bytes | None = None  # Access-Control-Request-Method (preflights)
        self.cors_headers = b""  # Access-Control-Request-Headers


def filter_request_headers(raw: list[tuple[bytes, bytes]], allow_underscores: bool) -> ClientHeaders:
    """Drop hop-by-hop, gateway-set and gateway-owned headers; check framing; keep the rest rendered."""
    result = ClientHeaders()
    named_by_connection: set[bytes] = set()
    kept_names: list[bytes] = []
    for name, value in raw:
        lname = name.lower()
        if lname in GATEWAY_SET or lname in HOP_BY_HOP:
            _note_special(result, lname, value, named_by_connection)
            continue
        if lname.startswith(OWNED_PREFIX):
            continue
        if b"_" in lname:
            # "X_Garrison_Subject" and "X_Forwarded_For" collide with ours in CGI-style frameworks.
            if not allow_underscores:
                continue
            dashed = lname.replace(b"_", b"-")
            if dashed in GATEWAY_SET or dashed in HOP_BY_HOP or dashed.startswith(OWNED_PREFIX):
                continue
        line = b"%s: %s\r\n" % (name, value)
        if lname == b"authorization":
            result.authorization.append(value)
            if value[:7].lower() == b"apikey ":
                result.api_key_lines.append(line)
                continue
        elif lname == b"x-api-key":
            result.api_key.append(value)
            result.api_key_lines.append(line)
            continue
        elif lname == b"origin":
            result.origin = value
        elif lname == b"access-control-request-method":
            result.cors_method = value
        elif lname == b"access-control-request-headers":
            result.cors_headers = value
        elif lname == b"user-agent":
            result.user_agent = value
        elif lname == b"referer":
            result.referer = value
        kept_names.append(lname)
        result.kept.append(line)
    if named_by_connection:
        # A client may drop its own optional headers with Connection, never the gateway's.
        result.kept = [
            line for line, n in zip(result.kept, kept_names, strict=True) if n not in named_by_connection
        ]
    return result


def _note_special(result: ClientHeaders, lname: bytes, value: bytes, named: set[bytes]) -> None:
    if lname == b"host":
        if result.host is not None:
            raise Rejected(400, "bad_request")
        result.host = value
    elif lname == b"content-length":
        try:
            result.content_length = parse_content_length(value)
        except BadFraming:
            raise Rejected(400, "bad_request") from None
    elif lname == b"transfer-encoding":
        try:
            if result.chunked:
                raise BadFraming("duplicate Transfer-Encoding")
            check_transfer_encoding(value)
        except BadFraming:
            raise Rejected(400, "bad_request") from None
        result.chunked = True
    elif lname == b"connection":
        named.update(connection_tokens(value))
    elif lname == b"x-forwarded-for":
        result.forwarded_for = [*result.forwarded_for, value]
    elif lname == b"forwarded":
        result.forwarded = [*result.forwarded, value]
    elif lname == b"x-forwarded-proto":
        result.forwarded_proto = value
    elif lname == b"x-request-id":
        result.request_id = value
    elif lname == b"traceparent":
        result.traceparent = value
    elif lname == b"expect":
        if value.lower() != b"100-continue":
            raise Rejected(417, "bad_request")
        result.expect_continue = True


def valid_host(host: bytes) -> bool:
    return _HOST_RE.fullmatch(host) is not None


def host_without_port(host: bytes) -> bytes:
    if host.startswith(b"["):
        return host[: host.find(b"]") + 1]
    return host.rsplit(b":", 1)[0] if b":" in host else host


def forwarding_headers(
    runtime: Runtime, peer: str, client_ip: str, headers: ClientHeaders, host: bytes
) -> bytes:
    """X-Forwarded-* and Forwarded as the upstream should see them."""
    trusted_peer = runtime.trusted.is_trusted(peer)
    proto = runtime.scheme
    xff = peer.encode()
    forwarded = forwarded_element(client_ip if not trusted_peer else peer, proto, host)
    if trusted_peer:
        if headers.forwarded_for:
            xff = b", ".join(headers.forwarded_for) + b", " + xff
        if headers.forwarded:
            forwarded = b", ".join(headers.forwarded) + b", " + forwarded
        if headers.forwarded_proto in (b"http", b"https"):
            proto = headers.forwarded_proto.decode()
    return b"x-forwarded-for: %s\r\nx-forwarded-proto: %s\r\nx-forwarded-host: %s\r\nforwarded: %s\r\n" % (
        xff,
        proto.encode(),
        host,
        forwarded,
    )


def response_head(
    exchange: Exchange,
    status: int,
    headers: list[tuple[bytes, bytes]],
    upstream_chunked: bool,
    security_headers: bytes,
    referrer_policy_line: bytes,
) -> bytes:
    """The response head sent to the client; sets ``exchange.rechunk`` / ``close_after``."""
    drop = RESPONSE_DROP
    lines = [STATUS_LINES.get(status) or status_line(status)]
    append = lines.append
    content_length: bytes | None = None
    has_referrer_policy = False
    named: set[bytes] | None = None
    for name, value in headers:
        lname = name.lower()
        if lname in drop:
            if lname == b"content-length":
                content_length = value
            elif lname == b"connection" and value.lower() not in _PLAIN_CONNECTION:
                # Any other value may name headers that are then hop-by-hop too.
                tokens = [t for t in connection_tokens(value) if t not in drop]
                if tokens:
                    named = (named or set()).union(tokens)
            continue
        if lname == b"referrer-policy":
            has_referrer_policy = True
        append(b"%s: %s\r\n" % (name, value))
    if named:
        lines = [lines[0], *(line for line in lines[1:] if line.split(b":", 1)[0].lower() not in named)]
    no_body = exchange.method == b"HEAD" or status in (204, 304)
    if no_body:
        if content_length is not None and status != 204:
            lines.append(b"content-length: %s\r\n" % content_length)
    elif content_length is not None and not upstream_chunked:
        lines.append(b"content-length: %s\r\n" % content_length)
    elif exchange.http11:
        exchange.rechunk = True
        lines.append(b"transfer-encoding: chunked\r\n")
    else:
        exchange.close_after = True  # HTTP/1.0 client, unknown length: the close ends the body
    lines.append(security_headers)
    lines.append(exchange.extra_response_headers)
    if not has_referrer_policy:
        lines.append(referrer_policy_line)
    lines.append(exchange.trace_lines)
    if exchange.close_after or not exchange.keep_alive:
        lines.append(b"connection: close\r\n")
    elif not exchange.http11:
        lines.append(b"connection: keep-alive\r\n")
    lines.append(b"\r\n")
    return b"".join(lines)
