"""Failed client authentication at /token, /introspect and /revoke, behind the login's throttle.

RFC 6749 §2.3.1 asks a server that takes client passwords to protect itself from guessing. Every
client authentication goes through ``IdentityServer.authenticate_client`` (authserver.py), which
hands it to ``ClientAuthGuard.authenticate``. Failures are counted by ``throttle.Throttle`` — the
same atomic counter as passwords and one-time codes, in the same table — on

- ``client:<client_id>`` for a registered confidential client: ``max_failures``, reset by a success;
- the client's address (``ip_key``, shared with the sign-in pages): ``ip_max_failures``.

A client id that is not registered, or is a public client's (it has no secret to guess, and its id
is public), counts on the address only, so a stream of made-up client ids adds no rows.

Unlike a password, a client credential costs nothing to check (an HMAC, or one signature), and
services send many good requests in parallel. So it is checked *first*, and what the throttle
orders is the answer, not the check:

- a wrong credential is counted atomically (``Throttle.reserve`` then ``failed``; the failure that
  reaches a limit locks the key for ``lock_for``);
- a right credential is not counted — twenty parallel good requests never lock their own client —
  but on a key with failures it asks ``Throttle.admit``, which holds the client's row, so the
  answer comes after every failure counted before it. A locked key, or one whose failures reached
  the limit, gets exactly the ``invalid_client`` a wrong secret gets. So however a guesser
  parallelises, at most ``max_failures`` guesses per lock could have been let through.

The token endpoint is on every service's hot path and its client_credentials path is database-free
by design. So each process remembers the keys with recent failures (``Suspects``): those that failed
here within ``max(window, lock_for)``, and those the table showed failures or a lock for when this
process last looked (at start, then every few seconds: ``refresh``), with the locks it knows of. A
failure marks its keys at once, before this request yields to any other; the secret check of a
registered client never yields. A right credential asks the table only when its *client* has
failures; an address lock is applied from memory (it only ends with time), so good clients behind
an address with failures — one stale secret behind a shared NAT — pay nothing. The price: the
address limit is not ordered like the client's (a right guess racing failures in flight from its
own address may pass it), another replica's locks are seen within seconds, and a replica that has
not yet seen a client fail may let one right guess through before it reads the table.

A request may carry one client credential and name one client (RFC 6749 §2.3, §5.2): otherwise it is
refused as ``invalid_request`` before anything is checked, so a good credential for one client can
never clear the count of another that is guessed in the same request.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NoReturn, TypeVar

from authlib.oauth2.rfc6749 import InvalidClientError, InvalidRequestError
from authlib.oauth2.rfc6749.util import extract_basic_authorization
from authlib.oauth2.rfc7523 import JWTBearerClientAssertion
from authlib.oauth2.rfc7523.client import ASSERTION_TYPE
from sqlalchemy.util import await_only

from garrison.identity.auditing import IdentityAudit
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


@dataclass(slots=True)
class Mark:
    """Why a key is suspect: failures until ``until``, and a lock this process knows of."""

    until: datetime
    locked_until: datetime | None = None


class Suspects:
    """Throttle keys with recent failures, as far as this process knows, each until a moment; and the
    locks among them. Bounded: when ``capacity`` keys are remembered and expired ones make no room,
    every key is treated as a client with failures until the newest mark ends — slower (every good
    request asks the table), never weaker.
    """

    def __init__(self, capacity: int = MAX_SUSPECTS) -> None:
        self.capacity = capacity
        self._marks: dict[str, Mark] = {}
        self._all_until: datetime | None = None

    def __len__(self) -> int:
        return len(self._marks)

    def overflowing(self, now: datetime) -> bool:
        return self._all_until is not None and now < self._all_until

    def suspect(self, key: str, now: datetime) -> bool:
        mark = self._marks.get(key)
        return self.overflowing(now) or (mark is not None and now < mark.until)

    def locked(self, key: str, now: datetime) -> bool:
        mark = self._marks.get(key)
        return mark is not None and mark.locked_until is not None and now < mark.locked_until

    def mark(self, key: str, until: datetime, now: datetime, locked_until: datetime | None = None) -> None:
        if locked_until is not None:
            until = max(until, locked_until)
        if (mark := self._marks.get(key)) is not None:
            mark.until = max(mark.until, until)
            mark.locked_until = max(filter(None, (mark.locked_until, locked_until)), default=None)
            return
        if len(self._marks) >= self.capacity and not self.overflowing(now):
            self._forget_expired(now)  # full: look for room once per overflow, not once per key
        if len(self._marks) < self.capacity:
            self._marks[key] = Mark(until, locked_until)
        else:
            self._all_until = max(until, self._all_until or until)

    def forget(self, key: str) -> None:
        self._marks.pop(key, None)

    def _forget_expired(self, now: datetime) -> None:
        for key in [key for key, mark in self._marks.items() if mark.until <= now]:
            del self._marks[key]


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
        self.audit = IdentityAudit()  # the provider's audit events (service.py sets the real one)
        settings = throttle.settings
        self.horizon = timedelta(seconds=max(settings.window, settings.lock_for))

    def authenticate(self, request: Any, check: Callable[[], T], endpoint: str, methods: list[str]) -> T:
        """``check()`` (Authlib's client authentication) behind the throttle. Runs inside
        ``greenlet_spawn``: the database is reached through ``await_only``."""
        client_id = claimed_client(request)
        counted = client_id if client_id is not None and self.is_confidential(client_id) else None
        keys = [ip_key(request.client_ip)] + ([client_key(counted)] if counted is not None else [])
        try:
            client = check()
        except Exception:  # a wrong credential, or anything else: counted as a failure (fail closed)
            self._failed(keys, counted, request, endpoint)
            raise
        now, address = self.throttle.clock(), keys[0]
        if counted is not None and self.suspects.suspect(client_key(counted), now):
            self._admit(keys, counted, request, endpoint, methods)  # holds the client's row
        elif self.suspects.overflowing(now):
            self._admit(keys, counted, request, endpoint, methods)
        elif self.suspects.locked(address, now):  # an address lock only ends with time: no need to ask
            self._refuse(address, counted, request, endpoint, methods)
        return client

    async def refresh(self) -> None:
        """Mark the keys the table holds failures or locks for (other replicas', the sign-in pages', or
        from before a restart). service.py calls it at start and every few seconds."""
        capacity = self.suspects.capacity
        active = await self.throttle.active([CLIENT_PREFIX, IP_PREFIX], limit=capacity + 1)
        now = self.throttle.clock()
        for key, until, locked_until in active:
            self.suspects.mark(key, until, now, locked_until)

    def _admit(
        self, keys: list[str], counted: str | None, request: Any, endpoint: str, methods: list[str]
    ) -> None:
        """A right credential of a client with failures: answered after them, refused if locked."""
        locked = await_only(self.throttle.admit(keys))
        if locked is None:
            if counted is not None:  # its count was reset: a failure from now on marks it again
                self.suspects.forget(client_key(counted))
            return
        now = self.throttle.clock()
        self.suspects.mark(locked.key, now + self.horizon, now, locked.until)
        self._refuse(locked.key, counted, request, endpoint, methods)

    def _refuse(
        self, key: str, counted: str | None, request: Any, endpoint: str, methods: list[str]
    ) -> NoReturn:
        """A right credential on a locked key: audited as such, answered as a wrong one."""
        self.throttle.refused(key)
        locked = key.split(":")[0]
        log.warn(
            "identity.client_auth.refused",
            reason="locked",
            locked=locked,
            client_id=counted,
            ip=request.client_ip,
            endpoint=endpoint,
        )
        self.audit.emit(
            "client.auth", "denied", client=counted, reason="locked", locked=locked, endpoint=endpoint
        )
        raise refused_like_a_wrong_secret(methods)

    def _failed(self, keys: list[str], counted: str | None, request: Any, endpoint: str) -> None:
        """Count a failure on every key (atomically; the one that reaches a limit locks it)."""
        now = self.throttle.clock()
        for key in keys:  # before anything yields: right credentials on these keys now ask the table
            self.suspects.mark(key, now + self.horizon, now)
        counted_on = await_only(self.throttle.reserve(keys))
        lockouts: list[Locked] = []
        if isinstance(counted_on, Reservation):
            lockouts = await_only(self.throttle.failed(counted_on))
        for lock in lockouts if isinstance(counted_on, Reservation) else [counted_on]:
            self.suspects.mark(lock.key, now + self.horizon, now, lock.until)
        locked = counted_on.key.split(":")[0] if isinstance(counted_on, Locked) else None
        log.warn(
            "identity.client_auth.failed",
            client_id=counted,
            ip=request.client_ip,
            endpoint=endpoint,
            locked=locked,
            lockout_started=bool(lockouts),
        )
        self.audit.emit(
            "client.auth",
            "failure",
            client=counted,
            reason="locked" if locked else "bad_credentials",
            claimed_client=None if counted is not None else self._claimed(request),
            endpoint=endpoint,
            lockout_started=bool(lockouts),
        )

    @staticmethod
    def _claimed(request: Any) -> str | None:
        """The client id an unregistered (or public) caller named, for the audit only."""
        try:
            return claimed_client(request)
        except InvalidRequestError:
            return None


def refused_like_a_wrong_secret(methods: list[str]) -> InvalidClientError:
    """The error Authlib gives when no method authenticates the client (a wrong secret): a locked key
    must answer exactly that, so the answer says nothing about the lock or the secret."""
    return InvalidClientError(
        status_code=401 if "client_secret_basic" in methods else 400,
        description=f"The client cannot authenticate with methods: {methods}",
    )


__all__ = ["ClientAuthGuard", "Suspects", "claimed_client", "refused_like_a_wrong_secret"]
