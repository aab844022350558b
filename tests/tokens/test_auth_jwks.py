"""JwksCache: key pinning (pure), and fetching from a real JWKS / discovery server on 127.0.0.1.

The server counts requests per path and can swap its key set or misbehave (status, garbage, oversize,
hang, redirect). A fake clock drives the refetch rate limit, so the flood tests need no sleeping.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any

import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from jwt.algorithms import get_default_algorithms

from garrison.tokens.jwks import Backoff, JwksCache, JwksError, parse_jwks
from garrison.tokens.jwt import JwtVerifier, KeysUnavailable, TokenRejected

ISSUER_AUD = "api://orders"


# -- keys ----------------------------------------------------------------------------------------------


class Key:
    def __init__(self, alg: str, kid: str | None = None, with_alg: bool = True) -> None:
        self.alg = alg
        self.kid = kid or f"{alg.lower()}-{uuid.uuid4().hex[:8]}"
        self.private: Any
        if alg in ("ES256", "ES384"):
            self.private = ec.generate_private_key(ec.SECP256R1() if alg == "ES256" else ec.SECP384R1())
        elif alg == "EdDSA":
            self.private = ed25519.Ed25519PrivateKey.generate()
        else:
            self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.jwk: dict[str, Any] = get_default_algorithms()[alg].to_jwk(
            self.private.public_key(), as_dict=True
        )
        self.jwk["kid"] = self.kid
        if with_alg:
            self.jwk["alg"] = alg

    def token(self, issuer: str, now: float | None = None, **extra: Any) -> str:
        issued = int(now if now is not None else time.time())
        payload = {"iss": issuer, "aud": ISSUER_AUD, "sub": "u1", "iat": issued, "exp": issued + 300, **extra}
        return pyjwt.encode(
            payload, self.private, algorithm=self.alg, headers={"kid": self.kid, "typ": "at+jwt"}
        )


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_jwk(private: Any, **extra: Any) -> dict[str, Any]:
    public = private.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        jwk = get_default_algorithms()["RS256"].to_jwk(public, as_dict=True)
    elif isinstance(public, ec.EllipticCurvePublicKey):
        jwk = get_default_algorithms()["ES256"].to_jwk(public, as_dict=True)
    else:
        jwk = get_default_algorithms()["EdDSA"].to_jwk(public, as_dict=True)
    jwk.update(extra)
    return jwk


# -- parse_jwks: pinning, pure -------------------------------------------------------------------------


def test_pinning_infers_only_unambiguous_algorithms(rsa_key: rsa.RSAPrivateKey) -> None:
    p256 = ec.generate_private_key(ec.SECP256R1())
    p384 = ec.generate_private_key(ec.SECP384R1())
    p521 = ec.generate_private_key(ec.SECP521R1())
    ed = ed25519.Ed25519PrivateKey.generate()
    keys = parse_jwks(
        {
            "keys": [
                public_jwk(p256, kid="p256"),
                public_jwk(p384, kid="p384"),
                public_jwk(p521, kid="p521"),  # ES512 is not allowed
                public_jwk(ed, kid="ed"),
                public_jwk(rsa_key, kid="rsa"),
                public_jwk(rsa_key, kid="rsa-ps", alg="PS256"),
            ]
        }
    )
    assert {kid: key.alg for kid, key in keys.items()} == {
        "p256": "ES256",
        "p384": "ES384",
        "ed": "EdDSA",
        "rsa": "RS256",
        "rsa-ps": "PS256",
    }
    assert isinstance(keys["p256"].key, ec.EllipticCurvePublicKey)
    assert "key=" not in repr(keys["p256"])


def test_pinning_ignores_unusable_keys(rsa_key: rsa.RSAPrivateKey) -> None:
    p256 = ec.generate_private_key(ec.SECP256R1())
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    good = public_jwk(p256, kid="good")
    broken_x = dict(good, kid="broken", x="AAAA")
    entries: list[Any] = [
        good,
        {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0", "alg": "HS256"},
        public_jwk(rsa_key, kid="enc", use="enc"),
        public_jwk(rsa_key, kid="ops", key_ops=["encrypt"]),
        public_jwk(rsa_key, kid="hs", alg="HS256"),
        public_jwk(rsa_key, kid="none", alg="none"),
        public_jwk(rsa_key, kid="rs512", alg="RS512"),
        public_jwk(rsa_key, kid="rsa-as-es", alg="ES256"),
        public_jwk(p256, kid="curve-mismatch", alg="ES384"),
        public_jwk(p256, kid="ec-as-eddsa", alg="EdDSA"),
        public_jwk(ed448.Ed448PrivateKey.generate(), kid="ed448"),
        public_jwk(weak, kid="weak"),
        public_jwk(rsa_key),  # no kid
        broken_x,
        dict(good, kid="x-not-str", x=5),
        public_jwk(rsa_key, kid="k" * 300),
        "not a dict",
        {"kid": "no-kty"},
    ]
    assert set(parse_jwks({"keys": entries})) == {"good"}


def test_pinning_keeps_verify_key_ops_and_drops_private_members(rsa_key: rsa.RSAPrivateKey) -> None:
    private_jwk = get_default_algorithms()["RS256"].to_jwk(rsa_key, as_dict=True)
    keys = parse_jwks({"keys": [dict(private_jwk, kid="leaky", key_ops=["verify"])]})
    assert isinstance(keys["leaky"].key, rsa.RSAPublicKey)


def test_duplicate_kid_is_ambiguous(rsa_key: rsa.RSAPrivateKey) -> None:
    p256 = ec.generate_private_key(ec.SECP256R1())
    keys = parse_jwks({"keys": [public_jwk(p256, kid="dup"), public_jwk(rsa_key, kid="dup")]})
    assert keys == {}


@pytest.mark.parametrize("document", [[], {"keys": {}}, {"nokeys": []}, "x", {"keys": [{}] * 101}])
def test_not_a_jwks(document: Any) -> None:
    with pytest.raises(JwksError):
        parse_jwks(document)


@pytest.mark.parametrize(
    ("url", "insecure", "ok"),
    [
        ("https://idp.example/jwks", False, True),
        ("http://127.0.0.1:8080/jwks", False, True),
        ("http://[::1]/jwks", False, True),
        ("http://localhost/jwks", False, True),
        ("http://idp.example/jwks", False, False),
        ("http://idp.example/jwks", True, True),
        ("ftp://idp.example/jwks", True, False),
        ("https://user:pw@idp.example/jwks", False, False),
        ("/jwks", False, False),
    ],
)
def test_url_rules(url: str, insecure: bool, ok: bool) -> None:
    if ok:
        JwksCache(jwks_uri=url, allow_insecure_http=insecure)
        return
    with pytest.raises(JwksError):
        JwksCache(jwks_uri=url, allow_insecure_http=insecure)


def test_issuer_url_rules_and_one_source() -> None:
    with pytest.raises(JwksError):
        JwksCache(issuer="http://idp.example")
    with pytest.raises(ValueError):
        JwksCache()
    with pytest.raises(ValueError):
        JwksCache(jwks_uri="https://a/jwks", issuer="https://a")


# -- a real JWKS server --------------------------------------------------------------------------------


class JwksServer:
    """Serves /jwks and /.well-known/openid-configuration on 127.0.0.1:0; counts requests per path."""

    def __init__(self) -> None:
        self.keys: list[Key] = []
        self.mode = "ok"  # ok | status | garbage | huge | huge_unsized | hang | redirect | slow
        self.hits: collections.Counter[str] = collections.Counter()
        self.discovery: dict[str, Any] | None = None
        self.port = 0
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> JwksServer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._server is not None
        self._server.close()
        if self._handlers:
            # Let handlers finish (and close their sockets) before cancelling the ones that hang:
            # a task cancelled before it first runs never reaches its `finally`.
            await asyncio.wait(list(self._handlers), timeout=2)
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()

    def _body(self, path: str) -> tuple[str, bytes, bool]:
        if path == "/.well-known/openid-configuration":
            document = self.discovery or {"issuer": self.base, "jwks_uri": self.base + "/jwks"}
            return "200 OK", json.dumps(document).encode(), True
        if path != "/jwks":
            return "404 Not Found", b"", True
        mode = self.mode
        if mode == "status":
            return "500 Internal Server Error", b"{}", True
        if mode == "garbage":
            return "200 OK", b"<html>", True
        if mode in ("huge", "huge_unsized"):
            return "200 OK", b'{"keys": [], "pad": "' + b"x" * (2 << 20) + b'"}', mode == "huge"
        if mode == "redirect":
            return "302 Found", b"", True
        return "200 OK", json.dumps({"keys": [key.jwk for key in self.keys]}).encode(), True

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            path = head.split(b" ", 2)[1].decode()
            self.hits[path] += 1
            if self.mode == "hang" and path == "/jwks":
                await reader.read()
                return
            if self.mode == "slow" and path == "/jwks":
                await asyncio.sleep(0.2)
            status, body, sized = self._body(path)
            lines = [f"HTTP/1.1 {status}", "Content-Type: application/json", "Connection: close"]
            if sized:
                lines.append(f"Content-Length: {len(body)}")
            if status.startswith("302"):
                lines.append("Location: /elsewhere")
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            self._handlers.discard(task)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class ScriptedSleep:
    """Stands in for ``asyncio.sleep`` in the refresh schedule: records each wait, blocks the schedule
    until the test grants it more sleeps, then advances the fake clock by the wait. No real waiting."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.delays: list[float] = []
        self._granted = 0
        self._changed = asyncio.Condition()

    async def __call__(self, delay: float) -> None:
        async with self._changed:
            self.delays.append(delay)
            self._changed.notify_all()
            await self._changed.wait_for(lambda: self._granted > 0)
            self._granted -= 1
        self.clock.now += delay

    async def grant(self, sleeps: int) -> None:
        async with self._changed:
            self._granted += sleeps
            self._changed.notify_all()

    async def until_asked(self, count: int) -> list[float]:
        """The waits so far, once the schedule has asked for ``count`` of them (the last one pending)."""
        async with self._changed:
            await self._changed.wait_for(lambda: len(self.delays) >= count)
            return list(self.delays)


def run(coro: Callable[[], Awaitable[None]], timeout: float = 10.0) -> None:
    async def main() -> None:
        await asyncio.wait_for(coro(), timeout=timeout)
        others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        assert others == [], others  # stop() left nothing running

    asyncio.run(main())


@pytest.fixture(scope="module")
def keys() -> dict[str, Key]:
    return {name: Key(alg) for name, alg in [("a", "ES256"), ("b", "EdDSA"), ("c", "ES256"), ("d", "PS256")]}


# -- fetching ------------------------------------------------------------------------------------------


@pytest.mark.process
def test_fetch_discovery_once_then_jwks(keys: dict[str, Key]) -> None:
    async def main() -> None:
        async with JwksServer() as server:
            server.keys = [keys["a"], keys["b"]]
            cache = JwksCache(issuer=server.base)
            await cache.start()
            try:
                assert cache.kids == {keys["a"].kid, keys["b"].kid}
                assert cache.key_for(keys["b"].kid).alg == "EdDSA"  # type: ignore[union-attr]
                assert await cache.refresh()
                assert server.hits == {"/.well-known/openid-configuration": 1, "/jwks": 2}
                assert cache.fetch_count == 2
                verifier = JwtVerifier(cache, server.base, [ISSUER_AUD])
                assert verifier.verify(keys["a"].token(server.base), time.time()).subject == "u1"
            finally:
                await cache.stop()

    run(main)


@pytest.mark.parametrize(
    "discovery",
    [
        {"issuer": "http://127.0.0.1:1", "jwks_uri": "JWKS"},  # names another issuer
        {"issuer": "SELF", "jwks_uri": "http://idp.example/jwks"},  # http off loopback
        {"issuer": "SELF"},  # no jwks_uri
    ],
)
@pytest.mark.process
def test_bad_discovery_documents(keys: dict[str, Key], discovery: dict[str, str]) -> None:
    async def main() -> None:
        async with JwksServer() as server:
            server.keys = [keys["a"]]
            server.discovery = {
                name: (
                    server.base if value == "SELF" else server.base + "/jwks" if value == "JWKS" else value
                )
                for name, value in discovery.items()
            }
            cache = JwksCache(issuer=server.base)
            await cache.start()
            try:
                assert cache.kids == frozenset()
                assert cache.last_error is not None
                assert server.hits["/jwks"] == 0
            finally:
                await cache.stop()

    run(main)


@pytest.mark.process
@pytest.mark.parametrize("mode", ["status", "garbage", "huge", "huge_unsized", "hang", "redirect"])
def test_failed_refresh_keeps_previous_keys(keys: dict[str, Key], mode: str) -> None:
    async def main() -> None:
        async with JwksServer() as server:
            server.keys = [keys["a"]]
            # Only the hanging server needs a short timeout (run() bounds the whole test); the others
            # get a long one, so a loaded CI machine cannot turn a slow connect into a failure.
            cache = JwksCache(jwks_uri=server.base + "/jwks", timeout=0.3 if mode == "hang" else 10.0)
            await cache.start()
            try:
                assert cache.kids == {keys["a"].kid}
                server.mode = mode
                server.keys = [keys["b"]]
                assert not await cache.refresh()
                assert cache.kids == {keys["a"].kid}
                assert cache.last_error is not None
                server.mode = "ok"
                assert await cache.refresh()
                assert cache.kids == {keys["b"].kid} and cache.last_error is None
            finally:
                await cache.stop()

    run(main)


@pytest.mark.process
def test_start_with_issuer_down_recovers_on_demand(keys: dict[str, Key]) -> None:
    async def main() -> None:
        clock = FakeClock()
        async with JwksServer() as server:
            server.mode = "status"
            cache = JwksCache(jwks_uri=server.base + "/jwks", clock=clock)
            await cache.start()  # does not raise: the gateway starts and refuses tokens until keys come
            try:
                assert cache.kids == frozenset() and cache.last_error
                server.mode = "ok"
                server.keys = [keys["a"]]
                assert await cache.key_for_unknown(keys["a"].kid) is None  # rate limit: too soon
                clock.now += 10
                assert await cache.key_for_unknown(keys["a"].kid) is not None
            finally:
                await cache.stop()

    run(main)


def test_backoff_doubles_from_one_second_to_the_cap() -> None:
    low = Backoff(cap=30, rand=lambda: 0.0)
    assert [low.delay(attempt) for attempt in range(8)] == [1, 2, 4, 8, 16, 30, 30, 30]
    high = Backoff(cap=30, jitter=0.2, rand=lambda: 0.999)
    for attempt, nominal in enumerate([1, 2, 4, 8, 16]):
        assert nominal < high.delay(attempt) < nominal * 1.2  # jitter only stretches, never below 1 s
    assert high.delay(5) == 30 and high.delay(100_000) == 30  # capped, and no overflow in a long outage
    assert JwksCache(jwks_uri="http://127.0.0.1:9/jwks", refresh_interval=5).startup_backoff.cap == 5


@pytest.mark.process
def test_no_keys_retries_on_the_short_backoff_then_follows_the_normal_rules(keys: dict[str, Key]) -> None:
    async def main() -> None:
        clock = FakeClock()
        sleep = ScriptedSleep(clock)
        async with JwksServer() as server:
            server.mode = "status"
            cache = JwksCache(
                jwks_uri=server.base + "/jwks",
                clock=clock,
                sleep=sleep,
                startup_backoff=Backoff(cap=30, rand=lambda: 0.0),
            )
            verifier = JwtVerifier(cache, server.base, [ISSUER_AUD])
            await cache.start()
            try:
                assert await sleep.until_asked(1) == [1]
                assert not cache.has_keys and cache.retry_after() == 1
                with pytest.raises(KeysUnavailable):
                    verifier.verify(keys["a"].token(server.base), time.time())
                await sleep.grant(6)  # six more failed fetches while the issuer stays down
                assert await sleep.until_asked(7) == [1, 2, 4, 8, 16, 30, 30]
                assert server.hits["/jwks"] == 7 and not cache.has_keys
                clock.now += 12  # the pending wait of 30 s is 12 s old: Retry-After says what is left
                assert cache.retry_after() == 18
                with pytest.raises(KeysUnavailable) as info:
                    verifier.verify(keys["a"].token(server.base), time.time())
                assert info.value.retry_after == 18
                server.mode, server.keys = "ok", [keys["a"]]
                await sleep.grant(1)  # the issuer is back: the next retry loads the keys ...
                assert (await sleep.until_asked(8))[
                    -1
                ] == cache.refresh_interval  # ... then the usual schedule
                assert cache.has_keys and verifier.verify(keys["a"].token(server.base), time.time())
                server.mode = "status"
                await sleep.grant(1)  # a later refresh fails: the keys stay and the failure schedule holds
                assert (await sleep.until_asked(9))[-1] == cache.min_refetch_interval
                assert cache.kids == {keys["a"].kid} and cache.last_error is not None
                with pytest.raises(TokenRejected) as unknown:
                    verifier.verify(keys["b"].token(server.base), time.time())
                assert (
                    unknown.value.reason == "kid_unknown"
                )  # keys known: an unknown kid is the token's fault
            finally:
                await cache.stop()

    run(main)


@pytest.mark.process
def test_a_key_set_without_usable_keys_changes_nothing(keys: dict[str, Key]) -> None:
    async def main() -> None:
        async with JwksServer() as server:
            cache = JwksCache(jwks_uri=server.base + "/jwks", min_refetch_interval=0)
            await cache.start()
            try:
                assert not cache.has_keys and cache.last_error == "the key set has no usable signature key"
                server.keys = [keys["a"]]
                assert await cache.refresh() and cache.has_keys
                server.keys = []  # an issuer's glitch (or a set of only unusable keys) does not wipe the keys
                assert not await cache.refresh()
                assert cache.kids == {keys["a"].kid}
            finally:
                await cache.stop()

    run(main)


def test_a_reloaded_cache_adopts_the_keys_of_the_same_source(keys: dict[str, Key]) -> None:
    old = JwksCache(jwks_uri="http://127.0.0.1:9/jwks")
    old.load({"keys": [keys["a"].jwk]})
    same, other = (
        JwksCache(jwks_uri="http://127.0.0.1:9/jwks"),
        JwksCache(jwks_uri="http://127.0.0.1:9/other"),
    )
    by_discovery = JwksCache(issuer="http://127.0.0.1:9")
    for cache in (same, other, by_discovery):
        cache.adopt(old)
    assert same.kids == {keys["a"].kid}
    assert not other.has_keys and not by_discovery.has_keys  # another source: its keys are not these


@pytest.mark.process
def test_scheduled_refresh_picks_up_announced_rotation(keys: dict[str, Key]) -> None:
    async def main() -> None:
        async with JwksServer() as server:
            server.keys = [keys["a"]]
            cache = JwksCache(jwks_uri=server.base + "/jwks", refresh_interval=0.05)
            await cache.start()
            verifier = JwtVerifier(cache, server.base, [ISSUER_AUD])
            try:
                old = keys["a"].token(server.base)
                assert verifier.verify(old, time.time())
                server.keys = [keys["a"], keys["c"]]  # announced: published before use
                deadline = time.monotonic() + 3
                while keys["c"].kid not in cache.kids:
                    assert time.monotonic() < deadline, "the refresh schedule did not run"
                    await asyncio.sleep(0.01)
                assert verifier.verify(keys["c"].token(server.base), time.time())  # sync path, no refetch
                assert verifier.verify(old, time.time())
                server.keys = [keys["c"]]  # the old key is retired
                while keys["a"].kid in cache.kids:
                    assert time.monotonic() < deadline, "the retired key was not dropped"
                    await asyncio.sleep(0.01)
                with pytest.raises(TokenRejected) as info:
                    verifier.verify(keys["a"].token(server.base), time.time())
                assert info.value.reason == "kid_unknown"
            finally:
                await cache.stop()

    run(main)


@pytest.mark.process
def test_unannounced_rotation_is_picked_up_without_failures(keys: dict[str, Key]) -> None:
    async def main() -> None:
        clock = FakeClock()
        async with JwksServer() as server:
            server.keys = [keys["a"]]
            cache = JwksCache(jwks_uri=server.base + "/jwks", clock=clock)
            await cache.start()
            verifier = JwtVerifier(cache, server.base, [ISSUER_AUD])
            try:
                clock.now += 10  # the last fetch is older than min_refetch_interval
                server.keys = [keys["a"], keys["d"]]  # new kid, used at once
                tokens = [keys[name].token(server.base, jti=str(i)) for i in range(50) for name in ("a", "d")]
                results = await asyncio.gather(*(verifier.verify_async(t, time.time()) for t in tokens))
                assert len(results) == 100 and all(r.subject == "u1" for r in results)
                assert server.hits["/jwks"] == 2  # one refetch, shared by every concurrent caller
            finally:
                await cache.stop()

    run(main)


@pytest.mark.process
def test_flood_of_random_kids_costs_one_fetch_per_interval(keys: dict[str, Key]) -> None:
    async def main() -> None:
        clock = FakeClock()
        async with JwksServer() as server:
            server.keys = [keys["a"]]
            server.mode = "slow"  # each fetch takes 0.2 s: the whole flood arrives while it is in flight
            cache = JwksCache(jwks_uri=server.base + "/jwks", clock=clock)
            await cache.start()
            verifier = JwtVerifier(cache, server.base, [ISSUER_AUD])
            signer = keys["a"]

            def forged() -> str:
                kid = uuid.uuid4().hex
                return pyjwt.encode(
                    {"iss": server.base, "aud": ISSUER_AUD, "sub": "x", "exp": int(time.time()) + 60},
                    signer.private,
                    algorithm="ES256",
                    headers={"kid": kid, "typ": "at+jwt"},
                )

            async def flood() -> None:
                results = await asyncio.gather(
                    *(verifier.verify_async(forged(), time.time()) for _ in range(500)),
                    return_exceptions=True,
                )
                assert all(isinstance(r, TokenRejected) and r.reason == "kid_unknown" for r in results)

            try:
                assert server.hits["/jwks"] == 1
                await flood()  # within min_refetch_interval of the initial fetch: no fetch at all
                assert server.hits["/jwks"] == 1
                clock.now += 10
                await flood()  # concurrent: all 500 share one fetch
                assert server.hits["/jwks"] == 2
                for _ in range(500):  # sequential, same interval: no more fetches
                    with pytest.raises(TokenRejected):
                        await verifier.verify_async(forged(), time.time())
                assert server.hits["/jwks"] == 2 == cache.fetch_count
                assert verifier.verify(signer.token(server.base), time.time())  # real tokens unaffected
            finally:
                await cache.stop()

    run(main, timeout=20)


@pytest.mark.process
def test_cancelled_caller_does_not_cancel_the_shared_fetch(keys: dict[str, Key]) -> None:
    async def main() -> None:
        async with JwksServer() as server:
            server.mode = "slow"
            cache = JwksCache(jwks_uri=server.base + "/jwks", min_refetch_interval=0)
            await cache.start()
            try:
                server.keys = [keys["b"]]
                impatient = asyncio.create_task(cache.key_for_unknown(keys["b"].kid))
                await asyncio.sleep(0.05)
                impatient.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await impatient
                assert await cache.key_for_unknown(keys["b"].kid) is not None  # joined the same fetch
                assert server.hits["/jwks"] == 2
            finally:
                await cache.stop()

    run(main)


@pytest.mark.process
def test_stop_during_a_fetch_closes_everything(keys: dict[str, Key]) -> None:
    async def main() -> None:
        async with JwksServer() as server:
            server.keys = [keys["a"]]
            cache = JwksCache(jwks_uri=server.base + "/jwks", min_refetch_interval=0)
            await cache.start()
            server.mode = "hang"
            pending = asyncio.create_task(cache.refresh())
            await asyncio.sleep(0.05)
            await cache.stop()
            with pytest.raises(asyncio.CancelledError):
                await pending
            assert cache.key_for(keys["a"].kid) is not None

    run(main)
