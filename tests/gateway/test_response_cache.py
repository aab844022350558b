"""The gateway's response cache: keys, Vary, byte bounds, freshness and what is never stored."""

from __future__ import annotations

import pytest

from garrison.gateway.cache import ENTRY_OVERHEAD, CachedResponse, ResponseCache
from garrison.gateway.cache_policy import CacheControl, CacheRequest, parse_cache_control

Headers = list[tuple[bytes, bytes]]
TTL = 5.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def cache(clock: Clock) -> ResponseCache:
    return ResponseCache(max_bytes=64 * 1024, max_entry_bytes=8 * 1024, clock=clock)


def request(
    path: bytes = b"/items",
    *,
    method: bytes = b"GET",
    subject: bytes = b"",
    headers: Headers | None = None,
    host: bytes = b"api.example",
    query: bytes = b"",
) -> CacheRequest:
    return CacheRequest.from_headers(method, host, path, query, subject, headers or [])


def store(
    cache: ResponseCache,
    req: CacheRequest,
    body: bytes = b"hello",
    headers: Headers | None = None,
    status: int = 200,
    ttl: float = TTL,
) -> CachedResponse | None:
    """Runs one response through start_fill/add/commit as the proxy would."""
    fill = cache.start_fill(req, status, headers if headers is not None else [], ttl)
    if fill is None:
        return None
    if body and not fill.add(body):
        return None
    return fill.commit()


# -- Cache-Control parsing ------------------------------------------------------------------------
def test_parse_cache_control_directives_case_quotes_and_commas() -> None:
    cc = parse_cache_control([b'Public, MAX-AGE="60", no-cache="set-cookie, x-a"', b"s-maxage=30 , junk"])
    assert cc == CacheControl(public=True, no_cache=True, max_age=60, s_maxage=30)


def test_parse_cache_control_ignores_junk_and_empty_parts() -> None:
    cc = parse_cache_control([b',,  ,=5, no store, x-ext="a,b", private'])
    assert cc == CacheControl(private=True)


@pytest.mark.parametrize("value", [b"max-age=abc", b"max-age=", b"max-age", b"max-age=-1", b'max-age="5'])
def test_malformed_max_age_means_do_not_cache(value: bytes) -> None:
    assert parse_cache_control([value]).malformed


def test_repeated_max_age_takes_the_shorter_and_huge_values_are_capped() -> None:
    assert parse_cache_control([b"max-age=60", b"max-age=10"]).max_age == 10
    assert parse_cache_control([b"max-age=" + b"9" * 5000]).max_age == 2**31


def test_malformed_cache_control_is_not_stored(cache: ResponseCache) -> None:
    assert store(cache, request(), headers=[(b"Cache-Control", b"public, max-age=1x")]) is None
    assert len(cache) == 0


# -- hits, misses, replay -------------------------------------------------------------------------
def test_miss_then_hit_replays_filtered_headers_with_length_and_age(
    cache: ResponseCache, clock: Clock
) -> None:
    upstream = [
        (b"Content-Type", b"text/plain"),
        (b"Content-Length", b"5"),
        (b"Connection", b"keep-alive, x-hop"),
        (b"X-Hop", b"1"),
        (b"Transfer-Encoding", b"chunked"),
        (b"Age", b"100"),
        (b"X-Cache", b"HIT"),
        (b"Proxy-Foo", b"1"),
        (b"ETag", b'"v1"'),
    ]
    assert cache.lookup(request()) is None
    store(cache, request(), b"hello", upstream)
    clock.now += 2.5
    entry = cache.lookup(request())
    assert entry is not None and entry.body == b"hello" and entry.status == 200
    assert entry.header_lines == b'Content-Type: text/plain\r\nETag: "v1"\r\n'
    assert entry.age(clock.now) == 2
    assert entry.replay_headers(clock.now) == entry.header_lines + (
        b"content-length: 5\r\nage: 2\r\nx-cache: HIT\r\n"
    )
    assert (cache.hits, cache.misses, cache.stores) == (1, 1, 1)


def test_ttl_expiry_is_checked_on_lookup_and_frees_the_bytes(cache: ResponseCache, clock: Clock) -> None:
    store(cache, request())
    clock.now += TTL - 0.001
    assert cache.lookup(request()) is not None
    clock.now += 0.001
    assert cache.lookup(request()) is None
    assert len(cache) == 0 and cache.size_bytes == 0


@pytest.mark.parametrize(
    ("cache_control", "lifetime"),
    [
        (b"max-age=2", 2.0),
        (b"max-age=60", TTL),  # never longer than the route's ttl
        (b"max-age=60, s-maxage=1", 1.0),
        (b"max-age=0, s-maxage=3", 3.0),  # s-maxage overrides max-age for a shared cache
    ],
)
def test_upstream_can_shorten_but_not_lengthen_the_ttl(
    cache: ResponseCache, cache_control: bytes, lifetime: float
) -> None:
    entry = store(cache, request(), headers=[(b"cache-control", cache_control)])
    assert entry is not None and entry.expires_at - entry.stored_at == lifetime


def test_max_age_zero_and_past_expires_are_not_stored(cache: ResponseCache) -> None:
    assert store(cache, request(), headers=[(b"cache-control", b"max-age=0")]) is None
    assert store(cache, request(), headers=[(b"expires", b"0")]) is None
    date = b"Tue, 15 Nov 1994 08:12:31 GMT"
    assert store(cache, request(), headers=[(b"date", date), (b"expires", date)]) is None
    later = b"Tue, 15 Nov 1994 08:12:33 GMT"
    entry = store(cache, request(), headers=[(b"date", date), (b"expires", later)])
    assert entry is not None and entry.expires_at - entry.stored_at == 2.0


# -- what is never stored -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "header",
    [
        (b"Cache-Control", b"no-store"),
        (b"Cache-Control", b"private"),
        (b"Cache-Control", b'private="x-user"'),
        (b"Cache-Control", b"no-cache"),
        (b"Set-Cookie", b"session=1"),
        (b"Vary", b"*"),
        (b"Vary", b"accept, *"),
        (b"Vary", b"X-Forwarded-For"),
        (b"Vary", b"x-garrison-scopes"),
    ],
)
def test_response_directives_that_forbid_storing(cache: ResponseCache, header: tuple[bytes, bytes]) -> None:
    assert store(cache, request(), headers=[header]) is None
    assert len(cache) == 0


@pytest.mark.parametrize("status", [201, 206, 302, 304, 500, 502])
def test_only_heuristically_cacheable_statuses(cache: ResponseCache, status: int) -> None:
    assert store(cache, request(), status=status) is None


def test_other_methods_neither_look_up_nor_store(cache: ResponseCache) -> None:
    post = request(method=b"POST")
    assert post.bypass and post.no_store
    assert store(cache, post) is None


def test_request_no_store_is_not_stored(cache: ResponseCache) -> None:
    assert store(cache, request(headers=[(b"Cache-Control", b"no-store")])) is None


@pytest.mark.parametrize("value", [b"no-cache", b"max-age=0", b"max-age=oops"])
def test_request_no_cache_bypasses_lookup_but_stores_the_fresh_answer(
    cache: ResponseCache, value: bytes
) -> None:
    store(cache, request(), b"old")
    fresh = request(headers=[(b"cache-control", value)])
    assert cache.lookup(fresh) is None
    store(cache, fresh, b"new")
    entry = cache.lookup(request())
    assert entry is not None and entry.body == b"new" and len(cache) == 1


def test_request_max_age_refuses_older_entries(cache: ResponseCache, clock: Clock) -> None:
    store(cache, request())
    clock.now += 3
    assert cache.lookup(request(headers=[(b"cache-control", b"max-age=2")])) is None
    assert cache.lookup(request(headers=[(b"cache-control", b"max-age=3")])) is not None


def test_authorization_on_unauthenticated_route_not_stored_unless_public(cache: ResponseCache) -> None:
    creds = [(b"Authorization", b"Bearer passthrough")]
    assert store(cache, request(headers=creds)) is None
    assert store(cache, request(headers=creds), headers=[(b"cache-control", b"public")]) is not None
    assert (
        store(cache, request(b"/b", headers=creds), headers=[(b"cache-control", b"s-maxage=5")]) is not None
    )
    # An authenticated route keys by subject, so the credentials do not stop storing.
    assert store(cache, request(b"/c", subject=b"alice", headers=creds)) is not None


# -- keys -----------------------------------------------------------------------------------------
def test_two_subjects_never_see_each_others_entry(cache: ResponseCache) -> None:
    store(cache, request(subject=b"alice"), b"alice's")
    assert cache.lookup(request(subject=b"bob")) is None
    assert cache.lookup(request(subject=b"")) is None
    store(cache, request(subject=b"bob"), b"bob's")
    alice, bob = cache.lookup(request(subject=b"alice")), cache.lookup(request(subject=b"bob"))
    assert alice is not None and alice.body == b"alice's"
    assert bob is not None and bob.body == b"bob's"


def test_host_and_query_are_part_of_the_key(cache: ResponseCache) -> None:
    store(cache, request(host=b"a.example", query=b"page=1"))
    assert cache.lookup(request(host=b"b.example", query=b"page=1")) is None
    assert cache.lookup(request(host=b"a.example", query=b"page=2")) is None
    assert cache.lookup(request(host=b"a.example", query=b"page=1")) is not None


def test_head_and_get_are_separate_entries(cache: ResponseCache) -> None:
    head = request(method=b"HEAD")
    entry = store(cache, head, b"", [(b"Content-Length", b"1234")])
    assert entry is not None and entry.body == b"" and entry.content_length == 1234
    assert cache.lookup(request()) is None
    store(cache, request(), b"body")
    get, again = cache.lookup(request()), cache.lookup(head)
    assert get is not None and get.body == b"body" and get.content_length == 4
    assert again is entry


def test_204_replays_without_content_length(cache: ResponseCache, clock: Clock) -> None:
    entry = store(cache, request(), b"", status=204)
    assert entry is not None and entry.content_length is None
    assert b"content-length" not in entry.replay_headers(clock.now)


# -- Vary -----------------------------------------------------------------------------------------
def test_vary_accept_encoding_picks_the_right_variant(cache: ResponseCache) -> None:
    vary = [(b"Vary", b"Accept-Encoding")]
    gzip = [(b"Accept-Encoding", b"gzip")]
    store(cache, request(headers=gzip), b"gzipped", vary)
    store(cache, request(), b"identity", vary)
    hit = cache.lookup(request(headers=[(b"accept-encoding", b"gzip")]))
    assert hit is not None and hit.body == b"gzipped"
    plain = cache.lookup(request())
    assert plain is not None and plain.body == b"identity"
    assert cache.lookup(request(headers=[(b"accept-encoding", b"br")])) is None
    assert len(cache) == 2


def test_vary_joins_all_request_lines_in_order(cache: ResponseCache) -> None:
    vary = [(b"vary", b"accept-language, Accept"), (b"Vary", b"ACCEPT")]
    langs = [(b"accept-language", b"fr"), (b"accept", b"text/html"), (b"accept-language", b"en")]
    store(cache, request(headers=langs), b"fr,en", vary)
    assert cache.lookup(request(headers=list(reversed(langs)))) is None
    hit = cache.lookup(request(headers=langs))
    assert hit is not None and hit.body == b"fr,en"


def test_vary_list_change_drops_old_variants_and_their_bytes(cache: ResponseCache) -> None:
    store(
        cache, request(headers=[(b"accept-encoding", b"gzip")]), b"g" * 100, [(b"vary", b"accept-encoding")]
    )
    store(cache, request(), b"i" * 100, [(b"vary", b"accept-encoding")])
    assert len(cache) == 2
    only = store(cache, request(headers=[(b"accept", b"json")]), b"j", [(b"vary", b"accept")])
    assert only is not None
    assert len(cache) == 1 and cache.size_bytes == only.size
    # ...and back to no Vary at all: the variant goes too.
    plain = store(cache, request(), b"p")
    assert plain is not None and len(cache) == 1 and cache.size_bytes == plain.size
    assert cache.lookup(request(headers=[(b"accept", b"json")])) is plain


# -- bounds ---------------------------------------------------------------------------------------
def test_lru_byte_bound_evicts_least_recently_used_first(clock: Clock) -> None:
    body = b"x" * 1000
    probe = ResponseCache(max_bytes=10**6, max_entry_bytes=10**6, clock=clock)
    one = store(probe, request(b"/0"), body)
    assert one is not None and one.size >= len(body) + ENTRY_OVERHEAD
    cache = ResponseCache(max_bytes=3 * one.size, max_entry_bytes=one.size, clock=clock)
    for path in (b"/1", b"/2", b"/3"):
        store(cache, request(path), body)
    assert cache.lookup(request(b"/1")) is not None  # /2 is now the least recently used
    store(cache, request(b"/4"), body)
    assert cache.lookup(request(b"/2")) is None
    assert all(cache.lookup(request(p)) is not None for p in (b"/1", b"/3", b"/4"))
    assert cache.evictions == 1 and len(cache) == 3 and cache.size_bytes <= cache.max_bytes


def test_replacing_an_entry_does_not_leak_bytes(cache: ResponseCache) -> None:
    store(cache, request(), b"a" * 500)
    entry = store(cache, request(), b"b" * 10)
    assert entry is not None and len(cache) == 1 and cache.size_bytes == entry.size


def test_oversize_body_is_abandoned_while_streaming(clock: Clock) -> None:
    cache = ResponseCache(max_bytes=100_000, max_entry_bytes=2_000, clock=clock)
    fill = cache.start_fill(request(), 200, [], TTL)
    assert fill is not None
    assert fill.add(b"x" * 1000)
    assert not fill.add(b"x" * 1000)
    assert not fill.add(b"x")  # stays abandoned
    assert fill.commit() is None
    assert len(cache) == 0 and cache.size_bytes == 0


def test_failed_upstream_drops_the_fill_and_a_fill_commits_once(cache: ResponseCache) -> None:
    dropped = cache.start_fill(request(), 200, [], TTL)
    assert dropped is not None and dropped.add(b"partial")
    del dropped  # the upstream failed mid-body: nothing is stored
    assert len(cache) == 0
    fill = cache.start_fill(request(), 200, [], TTL)
    assert fill is not None and fill.add(b"whole")
    assert fill.commit() is not None
    assert fill.commit() is None and cache.stores == 1
