"""The issuer's signing keys, fetched from a JWKS URL (or found through OIDC discovery) and cached.

Every key is pinned to exactly one asymmetric algorithm when the JWKS is parsed (RFC 8725 §3.1): the
verifier then accepts a token only if its ``alg`` equals the pin, which is what defeats algorithm
confusion (HS256 "signed" with the public key, ``alg: none``, an RS key used for PS or the reverse).

Fetching is bounded on every axis an attacker or a broken issuer could stretch: a timeout, a body size
cap, a key count cap, no redirects, https unless the URL is on loopback, and refetches for unknown
``kid`` values rate-limited to one per ``min_refetch_interval`` with concurrent callers sharing the one
fetch in flight (PyJWKClient refetched per unknown kid: a denial of service). A failed refresh keeps the
previous key set, and so does a key set with no usable key: an issuer's glitch must not wipe the keys.

Until the first key set arrives the cache has nothing to verify with, which is the issuer's outage, not
the client's fault: ``has_keys`` is false (the verifier answers 503, ``/ready`` says not ready) and the
fetch is retried on a short ``Backoff`` (1 s, doubling, capped, jittered) instead of the failure
schedule, so a gateway started before its issuer serves within about a second of the issuer's return.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import random
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, SECP384R1, EllipticCurvePublicKey
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm
from jwt.exceptions import PyJWTError

from garrison.config.model import is_loopback_host
from garrison.telemetry import logging as events

log = logging.getLogger(__name__)  # only for the traceback of an unexpected failure

PublicKey = EllipticCurvePublicKey | Ed25519PublicKey | RSAPublicKey

ALLOWED_ALGORITHMS = frozenset({"ES256", "ES384", "EdDSA", "RS256", "PS256"})
MAX_KID_LENGTH = 256
MAX_KEYS = 100
MIN_RSA_BITS = 2048
_EC_CURVES = {"ES256": ("P-256", SECP256R1), "ES384": ("P-384", SECP384R1)}
_CURVE_TO_ALG = {"P-256": "ES256", "P-384": "ES384"}
# Only the public members are ever handed to the parser: a JWKS that leaks private members ("d", ...)
# must not turn into private key objects in our memory.
_PUBLIC_MEMBERS = {"EC": ("kty", "crv", "x", "y"), "OKP": ("kty", "crv", "x"), "RSA": ("kty", "n", "e")}
# The longest wait between fetches while no key set has been loaded (never beyond refresh_interval).
STARTUP_BACKOFF_CAP = 30.0


class JwksError(Exception):
    """A JWKS or discovery document could not be fetched or is unusable (the message names no secret)."""


@dataclass(frozen=True, slots=True)
class PinnedKey:
    """One verification key and the only algorithm it may verify."""

    kid: str
    alg: str
    key: PublicKey = field(repr=False)


@dataclass(frozen=True, slots=True)
class Backoff:
    """Waits between fetch attempts: ``base`` doubling per failure, at most ``cap``.

    Each wait is stretched by up to ``jitter`` (a fraction, drawn with ``rand``): gateways started together
    while their issuer was down would otherwise all retry in the same instant when it comes back, and
    once their phases differ, equal waits at the cap keep them apart.
    """

    base: float = 1.0
    cap: float = STARTUP_BACKOFF_CAP
    jitter: float = 0.2
    rand: Callable[[], float] = field(default=random.random, repr=False, compare=False)

    def delay(self, attempt: int) -> float:
        """The wait before retry number ``attempt`` (0: the first retry after the first failure)."""
        nominal = self.base * 2.0 ** min(attempt, 32)  # bounded exponent: a days-long outage cannot overflow
        return min(self.cap, nominal * (1.0 + self.jitter * self.rand()))


def is_loopback_url(url: str) -> bool:
    return is_loopback_host(urlsplit(url).hostname or "")


def check_url(url: str, allow_insecure_http: bool) -> str:
    """``url`` if it is an absolute https URL (or http on loopback / when allowed), else JwksError."""
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname or parts.username or parts.password:
        raise JwksError("the key set URL must be an absolute http(s) URL without credentials")
    if parts.scheme == "http" and not (allow_insecure_http or is_loopback_url(url)):
        raise JwksError("the key set URL must use https (http only on loopback or with allow_insecure_http)")
    return url


def _pin_algorithm(jwk: Mapping[str, Any]) -> str | None:
    """The one algorithm this JWK may verify, or None when it is not allowed or ambiguous."""
    kty, alg, crv = jwk.get("kty"), jwk.get("alg"), jwk.get("crv")
    if alg is not None:
        if alg not in ALLOWED_ALGORITHMS:
            return None
        if kty == "EC":
            return alg if alg in _EC_CURVES and _EC_CURVES[alg][0] == crv else None
        if kty == "OKP":
            return alg if alg == "EdDSA" and crv == "Ed25519" else None
        if kty == "RSA":
            return alg if alg in ("RS256", "PS256") else None
        return None
    if kty == "EC":
        return _CURVE_TO_ALG.get(crv) if isinstance(crv, str) else None
    if kty == "OKP":
        return "EdDSA" if crv == "Ed25519" else None
    if kty == "RSA":
        return "RS256"
    return None


def _load_public_key(jwk: Mapping[str, Any], alg: str) -> PublicKey | None:
    kty = jwk["kty"]
    members = {name: jwk[name] for name in _PUBLIC_MEMBERS[kty] if name in jwk}
    if not all(isinstance(value, str) for value in members.values()):
        return None
    try:
        if kty == "EC":
            ec_key = ECAlgorithm.from_jwk(members)
            curve = _EC_CURVES[alg][1]
            if isinstance(ec_key, EllipticCurvePublicKey) and isinstance(ec_key.curve, curve):
                return ec_key
        elif kty == "OKP":
            okp_key = OKPAlgorithm.from_jwk(members)
            if isinstance(okp_key, Ed25519PublicKey):
                return okp_key
        else:
            rsa_key = RSAAlgorithm.from_jwk(members)
            if isinstance(rsa_key, RSAPublicKey) and rsa_key.key_size >= MIN_RSA_BITS:
                return rsa_key
    except (PyJWTError, ValueError, TypeError, OverflowError):
        return None
    return None


def parse_jwks(document: Any) -> dict[str, PinnedKey]:
    """The usable signature keys of a JWKS document, by kid. Raises JwksError if it is not a JWKS.

    Ignored: symmetric keys, keys for another use or without "verify" in key_ops, keys without a kid
    (tokens must name their key), disallowed or ambiguous algorithms, weak RSA keys, malformed keys, and
    every key whose kid appears more than once (which of them a token meant is ambiguous).
    """
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise JwksError("the key set is not a JSON object with a 'keys' list")
    entries: list[Any] = document["keys"]
    if len(entries) > MAX_KEYS:
        raise JwksError(f"the key set has more than {MAX_KEYS} keys")
    keys: dict[str, PinnedKey] = {}
    seen: set[str] = set()
    for jwk in entries:
        if not isinstance(jwk, dict):
            continue
        kid = jwk.get("kid")
        if not isinstance(kid, str) or not 0 < len(kid) <= MAX_KID_LENGTH:
            continue
        if kid in seen:
            keys.pop(kid, None)
            continue
        seen.add(kid)
        if jwk.get("kty") not in _PUBLIC_MEMBERS or jwk.get("use", "sig") != "sig":
            continue
        key_ops = jwk.get("key_ops")
        if key_ops is not None and (not isinstance(key_ops, list) or "verify" not in key_ops):
            continue
        alg = _pin_algorithm(jwk)
        if alg is None:
            continue
        key = _load_public_key(jwk, alg)
        if key is not None:
            keys[kid] = PinnedKey(kid=kid, alg=alg, key=key)
    return keys


class JwksCache:
    """Keys from ``jwks_uri`` or from the discovery document of ``issuer`` (exactly one of the two).

    ``key_for`` is the synchronous hot-path lookup. ``key_for_unknown`` may refetch, at most once per
    ``min_refetch_interval`` and sharing a fetch already in flight. ``start`` fetches once and schedules
    a refresh every ``refresh_interval`` (sooner after a failure; on ``startup_backoff`` while no key
    set has been loaded); ``stop`` cancels and closes everything. ``clock`` and ``sleep`` are injected
    so that tests drive the schedule without waiting.
    """

    def __init__(
        self,
        *,
        jwks_uri: str | None = None,
        issuer: str | None = None,
        refresh_interval: float = 300.0,
        min_refetch_interval: float = 10.0,
        timeout: float = 5.0,
        max_bytes: int = 1 << 20,
        allow_insecure_http: bool = False,
        verify: ssl.SSLContext | bool = True,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        startup_backoff: Backoff | None = None,
    ) -> None:
        if (jwks_uri is None) == (issuer is None):
            raise ValueError("give exactly one of jwks_uri and issuer")
        self._allow_insecure_http = allow_insecure_http
        self._discovery_url: str | None = None
        self._issuer = issuer
        self._jwks_uri: str | None = None
        if issuer is not None:
            discovery = issuer.rstrip("/") + "/.well-known/openid-configuration"
            self._discovery_url = check_url(discovery, allow_insecure_http)
        else:
            assert jwks_uri is not None
            self._jwks_uri = check_url(jwks_uri, allow_insecure_http)
        self.refresh_interval = refresh_interval
        self.min_refetch_interval = min_refetch_interval
        self._timeout = timeout
        self._max_bytes = max_bytes
        self._verify = verify
        self._clock = clock
        self._sleep = sleep
        self.startup_backoff = startup_backoff or Backoff(cap=min(STARTUP_BACKOFF_CAP, refresh_interval))
        self._keys: dict[str, PinnedKey] = {}
        self._next_attempt: float | None = None  # when the schedule fetches next (clock time)
        self._last_fetch_started: float | None = None
        self._inflight: asyncio.Task[bool] | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._client: httpx.AsyncClient | None = None
        self.fetch_count = 0
        self.last_error: str | None = None

    # -- hot path ------------------------------------------------------------------------------------

    def key_for(self, kid: str) -> PinnedKey | None:
        return self._keys.get(kid)

    async def key_for_unknown(self, kid: str) -> PinnedKey | None:
        """The key for ``kid``, refetching the set first if the rate limit allows (or joining a fetch)."""
        key = self._keys.get(kid)
        if key is not None or not 0 < len(kid) <= MAX_KID_LENGTH:
            return key
        if self._inflight is None and not self._refetch_allowed():
            return None
        await self.refresh()
        return self._keys.get(kid)

    @property
    def kids(self) -> frozenset[str]:
        return frozenset(self._keys)

    @property
    def has_keys(self) -> bool:
        """False until a key set with a usable key has been loaded (a fetch never empties it again)."""
        return bool(self._keys)

    def retry_after(self) -> int:
        """Whole seconds until the schedule's next fetch (at least 1): the 503's ``Retry-After``."""
        if self._next_attempt is None:
            return 1  # the first fetch or a retry is under way
        return max(1, math.ceil(self._next_attempt - self._clock()))

    def load(self, document: Any) -> None:
        """Replace the key set with the keys of a JWKS ``document`` (pushed or inline; tests)."""
        self._keys = parse_jwks(document)

    def adopt(self, previous: JwksCache) -> None:
        """Start from ``previous``'s keys when both read the same source (a config reload).

        A reload builds a new cache; without this, a reload while the issuer is down would throw away
        keys that are still good and turn every JWT route into a 503 until the issuer is back.
        """
        same_source = (previous._discovery_url, previous._issuer) == (self._discovery_url, self._issuer)
        if same_source and (self._discovery_url is not None or previous._jwks_uri == self._jwks_uri):
            self._keys = previous._keys

    # -- lifecycle -----------------------------------------------------------------------------------

    async def start(self) -> None:
        """Fetch once (a failure is kept in ``last_error``, not raised) and start the refresh schedule."""
        if self._loop_task is not None:
            return
        self._client = httpx.AsyncClient(
            timeout=self._timeout, follow_redirects=False, trust_env=False, verify=self._verify
        )
        ok = await self.refresh()
        self._loop_task = asyncio.create_task(self._refresh_loop(ok), name="jwks-refresh")

    async def stop(self) -> None:
        tasks = [task for task in (self._loop_task, self._inflight) if task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._loop_task = self._inflight = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def refresh(self) -> bool:
        """Fetch the key set now (or join the fetch in flight). True when the set was replaced."""
        if self._inflight is None:
            self._last_fetch_started = self._clock()
            self.fetch_count += 1
            self._inflight = asyncio.create_task(self._fetch_and_swap(), name="jwks-fetch")
            self._inflight.add_done_callback(self._clear_inflight)
        # shield: a caller that is cancelled (its request timed out) does not cancel everyone's fetch.
        return await asyncio.shield(self._inflight)

    # -- internals -----------------------------------------------------------------------------------

    def _refetch_allowed(self) -> bool:
        last = self._last_fetch_started
        return last is None or self._clock() - last >= self.min_refetch_interval

    def _clear_inflight(self, task: asyncio.Task[bool]) -> None:
        if self._inflight is task:
            self._inflight = None

    async def _refresh_loop(self, last_ok: bool) -> None:
        failures = 0 if last_ok else 1
        while True:
            delay = self._next_delay(failures)
            self._next_attempt = self._clock() + delay
            await self._sleep(delay)
            self._next_attempt = None
            failures = 0 if await self.refresh() else failures + 1

    def _next_delay(self, failures: int) -> float:
        if not self._keys:
            # Nothing to verify with: every JWT route is down until a key set arrives, so retry soon.
            return self.startup_backoff.delay(max(failures - 1, 0))
        if failures:  # keys are kept meanwhile: back off from min_refetch_interval up to refresh_interval
            step = max(self.min_refetch_interval, 1.0)
            return min(self.refresh_interval, step * 2.0 ** min(failures - 1, 32))
        return self.refresh_interval

    async def _fetch_and_swap(self) -> bool:
        try:
            if self._jwks_uri is None:
                self._jwks_uri = await self._discover()
            keys = parse_jwks(await self._get_json(self._jwks_uri))
            if not keys:
                raise JwksError("the key set has no usable signature key")
        except JwksError as exc:
            self.last_error = str(exc)
            self._log_failure(str(exc))
            return False
        except Exception:  # a bug must not kill the schedule or leak an unretrieved task exception
            self.last_error = "unexpected error"
            log.exception("JWKS refresh failed unexpectedly, keeping %d keys", len(self._keys))
            return False
        if not self._keys:
            events.log("gateway.jwks.loaded", keys=len(keys))
        self._keys = keys  # one reference swap: key_for never sees a half-built set
        self.last_error = None
        return True

    def _log_failure(self, reason: str) -> None:
        if self._keys:
            events.warn("gateway.jwks.refresh_failed", error=reason, kept_keys=len(self._keys))
        else:
            # Not "keeping 0 keys": with no key set at all, every JWT route answers 503 until one arrives.
            events.warn("gateway.jwks.unavailable", error=reason, message="no key set yet: JWT routes 503")

    async def _discover(self) -> str:
        assert self._discovery_url is not None
        document = await self._get_json(self._discovery_url)
        if not isinstance(document, dict):
            raise JwksError("the discovery document is not a JSON object")
        if document.get("issuer") != self._issuer:
            raise JwksError("the discovery document names another issuer")
        jwks_uri = document.get("jwks_uri")
        if not isinstance(jwks_uri, str):
            raise JwksError("the discovery document has no jwks_uri")
        return check_url(jwks_uri, self._allow_insecure_http)

    async def _get_json(self, url: str) -> Any:
        if self._client is None:
            raise JwksError("the key set cache is not started")
        try:
            async with self._client.stream("GET", url, headers={"accept": "application/json"}) as response:
                if response.status_code != 200:
                    raise JwksError(f"{url} answered {response.status_code}")
                declared = response.headers.get("content-length")
                if declared is not None and (not declared.isdigit() or int(declared) > self._max_bytes):
                    raise JwksError(f"{url} sent a body larger than {self._max_bytes} bytes")
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > self._max_bytes:
                        raise JwksError(f"{url} sent a body larger than {self._max_bytes} bytes")
        except httpx.HTTPError as exc:
            raise JwksError(f"fetching {url} failed: {type(exc).__name__}") from None
        try:
            return json.loads(body)
        except (ValueError, RecursionError):
            raise JwksError(f"{url} did not send JSON") from None
