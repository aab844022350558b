"""Failed client authentication at /token, /introspect and /revoke, behind the login's throttle.

RFC 6749 §2.3.1 asks a server that takes client passwords to protect itself from guessing. Every
client authentication goes through ``IdentityServer.authenticate_client`` (authserver.py), which
hands it to ``ClientAuthGuard.authenticate``. Failures are counted by ``throttle.Throttle`` — the
same atomic, count-before-check throttle as passwords and one-time codes, in the same table — on

- ``client:<client_id>`` for a registered confidential client: ``max_failures``, reset by a success;
- the client's address (``ip_key``, shared with the sign-in pages): ``ip_max_failures``.

A client id that is not registered, or is a public client's (it has no secret to guess, and its id
is public), counts on the address only, so a stream of made-up client ids adds no rows. A locked key
is refused with exactly the ``invalid_client`` a wrong secret gets, without checking anything.

What differs from the sign-in pages is when the database is touched. The token endpoint is on every
service's hot path and its client_credentials path is database-free by design; reserving an attempt
costs two write transactions, several times the whole request. So a key is reserved before its
check only while it is *suspect*: it failed in this process within ``max(window, lock_for)``, or the
table said it has failures or a lock when this process last looked (at start, then every few seconds,
``refresh``). A key that is not suspect is checked first; a failure marks it suspect at once — before
this request yields to any other — and is then counted. The secret check of a registered client never
yields, so parallel guesses behind the first one all find the key suspect and are reserved: a process
checks at most ``max_failures + 1`` wrong guesses per lock, and a replica that has not yet seen a key
fail elsewhere may check one more. Successes of clients nobody attacks never touch the database.

A request may carry one client credential and name one client (RFC 6749 §2.3, §5.2): otherwise it is
refused as ``invalid_request`` before anything is checked, so a good credential for one client can
never reset the counters of another that is being guessed in the same request.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, TypeVar

from authlib.oauth2.rfc6749 import InvalidClientError, InvalidRequestError
from authlib.oauth2.rfc6749.util import extract_basic_authorization
from authlib.oauth2.rfc7523 import JWTBearerClientAssertion
from authlib.oauth2.rfc7523.client import ASSERTION_TYPE
from sqlalchemy.util import await_only

from garrison.identity.throttle import (
    CLIENT_PREFIX,
    IP_PREFIX,
    Locked,
    Reservation,
    Throttle,
    client_key,
    ip_key,
)
from garrison.telemetry import logging as log

T = TypeVar("T")
MAX_SUSPECTS = 50_000  # keys remembered as suspect; beyond that every key is (fail closed)
_ASSERTIONS = JWTBearerClientAssertion()  # only to read an assertion's claims exactly as Authlib does


class Suspects:
    """Throttle keys whose attempts must be reserved before they are checked, each until a moment.

    Bounded: when ``capacity`` keys are remembered and expired ones make no room, every key is
    suspect until the newest mark ends — slower (every attempt reserves), never weaker.
    """

    def __init__(self, capacity: int = MAX_SUSPECTS) -> None:
        self.capacity = capacity
        self._until: dict[str, datetime] = {}
        self._all_until: datetime | None = None

    def __len__(self) -> int:
        return len(self._until)

    def any(self, keys: list[str], now: datetime) -> bool:
        if self._all_until is not None and now < self._all_until:
            return True
        return any((until := self._until.get(key)) is not None and now < until for key in keys)

    def mark(self, key: str, until: datetime, now: datetime) -> None:
        if key in self._until or len(self._until) < self.capacity:
            self._until[key] = max(until, self._until.get(key, until))
            return
        if self._all_until is None or self._all_until <= now:  # full: look for room once, not per key
            self._forget_expired(now)
            if len(self._until) < self.capacity:
                self._until[key] = until
                return
        self._all_until = max(until, self._all_until or until)

    def forget(self, key: str) -> None:
        self._until.pop(key, None)

    def _forget_expired(self, now: datetime) -> None:
        for key in [key for key, until in self._until.items() if until <= now]:
            del self._until[key]


def _basic_credential(request: Any) -> tuple[str | None, bool]:
    """The client id of an HTTP Basic credential, and whether it carries a secret (as Authlib reads it)."""
    client_id, secret = extract_basic_authorization(request.headers)
    return (client_id, True) if client_id and secret else (None, False)


def _assertion_subject(request: Any) -> tuple[str | None, bool]:
    """The unverified ``sub`` of a ``private_key_jwt`` assertion (what Authlib looks the client up by),
    and whether an assertion was sent at all."""
    form = request.form
    if form.get("client_assertion_type") != ASSERTION_TYPE or not form.get("client_assertion"):
        return None, False
    try:
        _, claims = _ASSERTIONS.extract_assertion(form["client_assertion"])
    except InvalidClientError:
        return None, True
    subject = claims.get("sub")
    return (subject if isinstance(subject, str) else None), True


def claimed_client(request: Any) -> str | None:
    """The one client this request names, read the way Authlib's methods read it; ``invalid_request``
    when it carries more than one credential or names two clients."""
    basic_id, has_basic = _basic_credential(request)
    subject, has_assertion = _assertion_subject(request)
    has_post_secret = bool(request.form.get("client_id") and request.form.get("client_secret"))
    if has_basic + has_assertion + has_post_secret > 1:
        raise InvalidRequestError("Use one client authentication method per request.")
    named = {name for name in (basic_id, request.form.get("client_id"), subject) if name}
    if len(named) > 1:
        raise InvalidRequestError("The request names more than one client.")
    return next(iter(named), None)


class ClientAuthGuard:
    """Client authentication behind the throttle (see the module docstring). ``is_confidential`` says
    whether a client id is registered with a credential (from memory: it must not touch the database)."""

    def __init__(
        self,
        throttle: Throttle,
        is_confidential: Callable[[str], bool],
        suspects: Suspects | None = None,
    ) -> None:
        self.throttle = throttle
        self.is_confidential = is_confidential
        self.suspects = suspects if suspects is not None else Suspects()
        settings = throttle.settings
        self.horizon = timedelta(seconds=max(settings.window, settings.lock_for))

    def authenticate(self, request: Any, check: Callable[[], T], endpoint: str, methods: list[str]) -> T:
        """``check()`` (Authlib's client authentication) behind the throttle. Runs inside
        ``greenlet_spawn``: the database is reached through ``await_only``."""
        client_id = claimed_client(request)
        counted = client_id if client_id is not None and self.is_confidential(client_id) else None
        keys = [ip_key(request.client_ip)] + ([client_key(counted)] if counted is not None else [])
        reservation = None
        if self.suspects.any(keys, self.throttle.clock()):
            reservation = self._reserve(keys, counted, request, endpoint, methods)
        try:
            client = check()
        except Exception:  # a wrong credential, or anything else: counted as a failure (fail closed)
            self._failed(keys, reservation, counted, request, endpoint)
            raise
        if counted is not None:  # its count is reset below: a failure from now on marks it again
            self.suspects.forget(client_key(counted))
        if reservation is not None:
            await_only(self.throttle.succeeded(reservation))
        return client

    async def refresh(self) -> None:
        """Mark the keys the table holds failures or locks for (other replicas', the sign-in pages', or
        from before a restart). service.py calls it at start and every few seconds."""
        capacity = self.suspects.capacity
        active = await self.throttle.active([CLIENT_PREFIX, IP_PREFIX], limit=capacity + 1)
        clock = self.throttle.clock()
        for key, until in active:
            self.suspects.mark(key, until, clock)

    def _reserve(
        self, keys: list[str], counted: str | None, request: Any, endpoint: str, methods: list[str]
    ) -> Reservation:
        result = await_only(self.throttle.reserve(keys))
        if isinstance(result, Reservation):
            return result
        log.warn(
            "identity.client_auth.refused",
            reason="locked",
            locked=result.key.split(":")[0],
            client_id=counted,
            ip=request.client_ip,
            endpoint=endpoint,
        )
        raise refused_like_a_wrong_secret(methods)

    def _failed(
        self,
        keys: list[str],
        reservation: Reservation | None,
        counted: str | None,
        request: Any,
        endpoint: str,
    ) -> None:
        now = self.throttle.clock()
        for key in keys:  # before anything yields: the next guess on these keys is reserved first
            self.suspects.mark(key, now + self.horizon, now)
        if reservation is None:  # checked first (the key was not suspect): count it now
            late = await_only(self.throttle.reserve(keys))
            reservation = late if isinstance(late, Reservation) else None
        lockouts: list[Locked] = []
        if reservation is not None:
            lockouts = await_only(self.throttle.failed(reservation))
        log.warn(
            "identity.client_auth.failed",
            client_id=counted,
            ip=request.client_ip,
            endpoint=endpoint,
            lockout_started=bool(lockouts),
        )


def refused_like_a_wrong_secret(methods: list[str]) -> InvalidClientError:
    """The error Authlib gives when no method authenticates the client (a wrong secret): a locked key
    must answer exactly that, so the answer says nothing about the lock or the secret."""
    return InvalidClientError(
        status_code=401 if "client_secret_basic" in methods else 400,
        description=f"The client cannot authenticate with methods: {methods}",
    )


__all__ = ["ClientAuthGuard", "Suspects", "claimed_client", "refused_like_a_wrong_secret"]
