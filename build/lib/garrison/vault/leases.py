"""Leases (Vault's expiration manager): every dynamic secret is handed out with a lease, and the lease,
not the client, decides when the secret dies.

A lease is kept in the barrier storage at ``sys/expire/id/<lease_id>`` (Vault's own path), so it is
encrypted like any other entry and survives a restart: at unseal every stored lease is loaded and
the ones already due are revoked first. The manager keeps a heap of due times in memory and one task
that sleeps until the earliest of them (an added or renewed lease wakes it), so nothing polls. The
clock is injected: tests advance it and call ``wake()``.

Revocation belongs to the engine that made the secret (``LeaseEngine``, by the lease's mount). A
revocation that fails is never dropped: the lease stays stored, is logged, and is tried again with
exponential back-off (``RETRY_BASE`` doubling up to ``RETRY_MAX``), across restarts too. What a lease
stores for its engine (``internal``) holds no secret: a database lease names the role, not its password.

As in Vault, a lease belongs to the token that obtained it: revoking the token (or its parent) revokes
its leases (``TokenStore.on_revoke``), and so does its expiry, which the same task looks at when the
token is due to expire (tokens themselves expire lazily, when next used).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import json
import secrets
import string
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from garrison.telemetry import logging as log
from garrison.vault.storage import BarrierStorage

__all__ = ["EngineFailed", "Lease", "LeaseEngine", "LeaseError", "LeaseManager"]

LEASE_PREFIX = "sys/expire/id/"
# <token digest>/<lease id>: the leases a token obtained (a storage path, not a secret)
BY_TOKEN_PREFIX = "sys/expire/token/"  # noqa: S105
RETRY_BASE = 1.0  # seconds before the first retry of a failed revocation
RETRY_MAX = 300.0  # the longest wait between two retries
MAX_WAIT = 60.0  # the task looks at the clock at least this often (a wall clock set forward)
_ALPHABET = string.ascii_letters + string.digits
_CHECK_KEY = "\x00token:"  # heap keys of token checks (no lease id starts with NUL)


class LeaseError(Exception):
    """A lease request refused (400), e.g. an unknown or expired lease."""


class EngineFailed(Exception):
    """The engine could not revoke the secret; the lease is kept and retried."""


class LeaseEngine(Protocol):
    async def revoke_lease(self, lease: Lease) -> None: ...

    async def renew_lease(self, lease: Lease, expire_time: float) -> None: ...


@dataclass
class Lease:
    lease_id: str  # <path>/<random>, e.g. database/creds/orders/Xy...
    issue_time: float
    expire_time: float
    max_expire_time: float  # no renewal goes past this
    default_ttl: float  # what a renewal without an increment grants
    internal: dict[str, Any] = field(default_factory=dict)  # for the engine; never a secret
    last_renewal_time: float | None = None
    attempts: int = 0  # failed revocations so far
    retry_time: float | None = None  # when the next revocation is tried after a failure
    token: str = ""  # digest of the token that obtained the secret: its revocation revokes the lease
    token_expire: float | None = None  # that token's expiry when the lease was made (checked then)

    @property
    def mount(self) -> str:
        return self.lease_id.split("/", 1)[0]

    @property
    def due(self) -> float:
        return self.retry_time if self.retry_time is not None else self.expire_time

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> Lease:
        return cls(**json.loads(raw))


class LeaseManager:
    def __init__(
        self,
        storage: BarrierStorage,
        clock: Callable[[], float],
        engines: Mapping[str, LeaseEngine],
        token_expiry: Callable[[str], Awaitable[float | None]] | None = None,
        *,
        retry_base: float = RETRY_BASE,
        retry_max: float = RETRY_MAX,
    ) -> None:
        self.storage = storage
        self.clock = clock
        self.engines = engines
        # A token's current expiry (inf: none), or None when it is gone (revoked or expired).
        self.token_expiry = token_expiry
        self.retry_base, self.retry_max = retry_base, retry_max
        self._heap: list[tuple[float, str]] = []
        self._due: dict[str, float] = {}  # lease id -> the due time its live heap entry carries
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()  # renewals and revocations of leases, one at a time
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Load every stored lease and start the expiry task (at unseal)."""
        for path in await self.storage.list(LEASE_PREFIX):
            raw = await self.storage.get(path)
            if raw is not None:
                lease = Lease.from_bytes(raw)
                self._schedule(lease)
                self._schedule_token_check(lease)
        self._task = asyncio.create_task(self._run(), name="vault-leases")
        log.log("vault.leases.loaded", leases=len(self._due))

    def stop(self) -> None:
        """Stop the expiry task (at seal); leases stay stored and resume at the next unseal."""
        if self._task is not None:
            self._task.cancel()
            self._task = None

    def wake(self) -> None:
        self._wake.set()

    async def create(
        self,
        path: str,
        ttl: float,
        max_ttl: float,
        default_ttl: float,
        internal: dict[str, Any],
        token: str = "",
        token_expire: float | None = None,
    ) -> Lease:
        now = self.clock()
        lease_id = f"{path}/{''.join(secrets.choice(_ALPHABET) for _ in range(24))}"
        lease = Lease(lease_id, now, now + ttl, now + max_ttl, default_ttl, internal)
        lease.token, lease.token_expire = token, token_expire
        puts = {LEASE_PREFIX + lease_id: lease.to_bytes()}
        if token:
            puts[f"{BY_TOKEN_PREFIX}{token}/{lease_id}"] = b""
        await self.storage.write(puts)
        self._schedule(lease)
        self._schedule_token_check(lease)
        return lease

    async def revoke_token(self, token: str) -> None:
        """Revoke every lease ``token`` obtained (the token is revoked or expired); failures are retried."""
        prefix = f"{BY_TOKEN_PREFIX}{token}/"
        async with self._lock:
            for path in await self.storage.list(prefix):
                lease = await self.lookup(path[len(prefix) :])
                if lease is not None:
                    await self._revoke(lease, raise_failure=False)
                else:
                    await self.storage.delete(path)

    async def lookup(self, lease_id: str) -> Lease | None:
        if not lease_id or "\x00" in lease_id:
            return None
        raw = await self.storage.get(LEASE_PREFIX + lease_id)
        return Lease.from_bytes(raw) if raw is not None else None

    async def list_keys(self, prefix: str) -> list[str]:
        """The names one level below ``prefix``, folders with a trailing ``/`` (as a Vault LIST)."""
        base = LEASE_PREFIX + prefix
        keys = {
            path[len(base) :].split("/", 1)[0] + ("/" if "/" in path[len(base) :] else "")
            for path in await self.storage.list(base)
        }
        return sorted(keys)

    async def renew(self, lease_id: str, increment: float) -> tuple[Lease, list[str]]:
        async with self._lock:
            lease = await self.lookup(lease_id)
            now = self.clock()
            if lease is None or lease.expire_time <= now or lease.retry_time is not None:
                raise LeaseError("lease not found")
            ttl = increment or lease.default_ttl
            warnings: list[str] = []
            if now + ttl > lease.max_expire_time:
                capped = max(0.0, lease.max_expire_time - now)
                warnings.append(
                    f'TTL of "{_duration(ttl)}" exceeded the effective max_ttl of "{_duration(capped)}"; '
                    "TTL value is capped accordingly"
                )
                ttl = capped
            if ttl <= 0:
                raise LeaseError("past the max TTL, cannot renew")
            expire = now + ttl
            engine = self._engine(lease)
            try:
                await engine.renew_lease(lease, expire)
            except EngineFailed as exc:
                raise LeaseError(f"failed to renew entry: {exc}") from None
            lease.expire_time, lease.last_renewal_time = expire, now
            await self.storage.put(LEASE_PREFIX + lease_id, lease.to_bytes())
            self._schedule(lease)
            return lease, warnings

    async def revoke(self, lease_id: str) -> None:
        """Revoke now; a failure keeps the lease for retries and is raised (EngineFailed)."""
        async with self._lock:
            lease = await self.lookup(lease_id)
            if lease is None:
                return  # as Vault: revoking an unknown lease is not an error
            await self._revoke(lease, raise_failure=True)

    async def revoke_prefix(self, prefix: str, force: bool = False) -> int:
        """Every lease under ``prefix``; ``force`` drops the leases even when the engine fails."""
        paths = await self.storage.list(LEASE_PREFIX + prefix)
        async with self._lock:
            for path in paths:
                lease = await self.lookup(path[len(LEASE_PREFIX) :])
                if lease is None:
                    continue
                if force:
                    with contextlib.suppress(EngineFailed):
                        await self._engine(lease).revoke_lease(lease)
                    await self._forget(lease)
                    log.warn("vault.lease.force_revoked", lease_id=lease.lease_id)
                else:
                    await self._revoke(lease, raise_failure=True)
        return len(paths)

    def _engine(self, lease: Lease) -> LeaseEngine:
        engine = self.engines.get(lease.mount)
        if engine is None:
            raise EngineFailed(f"no engine for the lease's mount {lease.mount!r}")
        return engine

    async def _revoke(self, lease: Lease, raise_failure: bool) -> None:
        try:
            await self._engine(lease).revoke_lease(lease)
        except EngineFailed as exc:
            lease.attempts += 1
            delay = min(self.retry_max, self.retry_base * 2 ** (lease.attempts - 1))
            lease.retry_time = self.clock() + delay
            await self.storage.put(LEASE_PREFIX + lease.lease_id, lease.to_bytes())
            self._schedule(lease)
            log.error(
                "vault.lease.revoke_failed",
                lease_id=lease.lease_id,
                attempts=lease.attempts,
                retry_in=round(delay, 3),
                error=str(exc),
            )
            if raise_failure:
                raise
            return
        await self._forget(lease)
        log.log("vault.lease.revoked", lease_id=lease.lease_id, attempts=lease.attempts + 1)

    async def _forget(self, lease: Lease) -> None:
        deletes = [LEASE_PREFIX + lease.lease_id]
        if lease.token:
            deletes.append(f"{BY_TOKEN_PREFIX}{lease.token}/{lease.lease_id}")
        await self.storage.write({}, deletes)
        self._due.pop(lease.lease_id, None)

    def _schedule(self, lease: Lease) -> None:
        due = lease.due
        self._due[lease.lease_id] = due
        heapq.heappush(self._heap, (due, lease.lease_id))
        self._wake.set()

    def _schedule_token_check(self, lease: Lease, when: float | None = None) -> None:
        """Look at the lease's token when it is due to expire (a renewed token is looked at again later)."""
        when = lease.token_expire if when is None else when
        if not lease.token or when is None or self.token_expiry is None or when == float("inf"):
            return
        key = _CHECK_KEY + lease.token
        if key in self._due and self._due[key] <= when:
            return
        self._due[key] = when
        heapq.heappush(self._heap, (when, key))
        self._wake.set()

    async def _check_token(self, token: str) -> None:
        assert self.token_expiry is not None
        self._due.pop(_CHECK_KEY + token, None)
        try:
            expiry = await self.token_expiry(token)  # an expired token is revoked (and its leases) here
            if expiry is None:
                await self.revoke_token(token)  # gone already: make sure its leases follow
            else:
                probe = Lease("", 0, 0, 0, 0, token=token, token_expire=expiry)
                self._schedule_token_check(probe)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.error("vault.lease.token_check_failed", error=type(exc).__name__)
            self._due[_CHECK_KEY + token] = retry = self.clock() + self.retry_base
            heapq.heappush(self._heap, (retry, _CHECK_KEY + token))

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            now = self.clock()
            while self._heap and self._heap[0][0] <= now:
                due, lease_id = heapq.heappop(self._heap)
                if self._due.get(lease_id) != due:
                    continue  # renewed, retried or revoked since: a newer entry stands for it
                if lease_id.startswith(_CHECK_KEY):
                    await self._check_token(lease_id[len(_CHECK_KEY) :])
                else:
                    await self._expire(lease_id)
            wait = min(MAX_WAIT, self._heap[0][0] - now) if self._heap else MAX_WAIT
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.0, wait))

    async def _expire(self, lease_id: str) -> None:
        try:
            async with self._lock:
                lease = await self.lookup(lease_id)
                if lease is None or lease.due > self.clock():
                    return
                await self._revoke(lease, raise_failure=False)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # storage trouble: the task must live on; the lease is retried
            log.error("vault.lease.expiry_failed", lease_id=lease_id, error=type(exc).__name__)
            retry = self.clock() + self.retry_base
            self._due[lease_id] = retry
            heapq.heappush(self._heap, (retry, lease_id))


def _duration(seconds: float) -> str:
    """``36000`` -> ``10h``, ``7199`` -> ``1h59m59s``: as Vault's lease warnings write durations."""
    hours, rest = divmod(int(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    text = "".join(f"{n}{unit}" for n, unit in ((hours, "h"), (minutes, "m"), (secs, "s")) if n)
    return text or "0s"
