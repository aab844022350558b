"""A workload's identity from the Garrison CA: its key, its certificate, and TLS contexts that follow them.

Shared (not in ``mesh/``) because the sidecar, the gateway (``spiffe://<td>/gateway``) and Python
services without a sidecar all hold one. ``WorkloadIdentity``:

- generates its private key locally (in a short-lived child, ``pki/keygen.py``, so that this process
  never imports ``cryptography``: the key comes back over a pipe and never leaves the host), joins the CA once
  with a one-time join token (``GARRISON_JOIN_TOKEN`` or an argument), and keeps the certificate, key
  and trust bundle under a directory (files 0600, replaced atomically), so a restart renews with the
  certificate it holds instead of needing a new token;
- renews over mTLS at about half the certificate's life, with jitter so a fleet started together does
  not renew together; a failed renewal is retried with capped exponential back-off (a revoked workload
  does not knock every few seconds) and logged once per change of trouble; the clock and the sleep
  are injectable;
- keeps one server and one client ``ssl.SSLContext``. A renewal loads the new certificate INTO the
  live contexts (``load_cert_chain``): new handshakes use it, open connections are untouched. A trust
  bundle change cannot be applied in place (OpenSSL cannot forget a CA), so new contexts are built and
  announced through ``on_contexts``; ``server_context()``/``client_context()`` return the current ones;
- follows the CA's ``/v1/state`` long-poll and tells ``on_state`` callbacks which identities are revoked
  and which services quarantined;
- a certificate that lapsed (renewal impossible) raises ``JoinTokenNeeded``.

Peers are verified as SPIFFE says: the chain against the trust bundle (OpenSSL), then the peer's
SPIFFE ID (its single URI SAN) compared by us (``check_hostname`` is off: a workload has no DNS name
in its certificate). ``require_spiffe_id`` and ``connect`` do that for "connect to X, require Y".
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import random
import ssl
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from garrison.pki.ca_client import CaClient, CaUnreachable
from garrison.pki.certinfo import CertificateInfo, leaf_info
from garrison.pki.workload_tls import (
    Files,
    PeerIdentityMismatch,
    client_context,
    require_spiffe_id,
    server_context,
    write_private,
)
from garrison.pki.workload_types import (
    ContextsCallback,
    JoinTokenNeeded,
    MeshState,
    StateCallback,
    WorkloadError,
    connect,
    state_of,
)
from garrison.telemetry import logging as log

__all__ = [
    "JOIN_TOKEN_ENV",
    "ContextsCallback",
    "JoinTokenNeeded",
    "MeshState",
    "PeerIdentityMismatch",
    "StateCallback",
    "WorkloadError",
    "WorkloadIdentity",
    "connect",
    "require_spiffe_id",
]

JOIN_TOKEN_ENV = "GARRISON_JOIN_TOKEN"  # noqa: S105 - the variable's name, not a token

Clock = Callable[[], dt.datetime]
Sleep = Callable[[float], Awaitable[None]]


LONG_POLL_TIMEOUT = 40.0  # the CA answers within 25 s; more than that is a lost connection
STATE_RETRY = 1.0  # seconds between attempts to reach the CA's state after a failure
RENEW_RETRY = 1.0  # the first wait after a failed renewal; doubled after each further failure
RENEW_RETRY_MAX = 300.0  # ... up to this (but never past a tenth of the certificate's remaining life)
KEYGEN_TIMEOUT = 60.0  # python -m garrison.pki.keygen: a key and a CSR, normally well under a second


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class WorkloadIdentity:
    """One workload identity: see the module docstring."""

    def __init__(
        self,
        ca_url: str,
        directory: Path,
        *,
        ca_bundle: bytes | Path | None = None,
        join_token: str | None = None,
        clock: Clock | None = None,
        sleep: Sleep | None = None,
        jitter: Callable[[], float] | None = None,
        follow_state: bool = True,
    ) -> None:
        """``ca_bundle``: the roots to verify the CA with on the first join (``state_dir/ca/bundle.pem``;
        later the bundle the CA hands out is used); ``jitter`` returns a fraction in [0, 1) (default:
        random) spreading renewals between 45 % and 55 % of the lifetime; ``follow_state`` off: no
        ``/v1/state`` long-poll. Nothing happens before ``start()``."""
        self._ca = CaClient(ca_url) if ca_url else None
        self._directory = directory
        self._files: Files = (directory / "identity.pem", None)
        self._bootstrap = ca_bundle
        self._join_token = join_token
        self._clock = clock or utc_now
        self._sleep = sleep or asyncio.sleep
        self._jitter = jitter or random.random  # spreading renewals: not a secret
        self._follow = follow_state
        self._certificate: CertificateInfo | None = None
        self._renew_fraction = 0.5
        self._bundle = b""
        self._server: ssl.SSLContext | None = None
        self._client: ssl.SSLContext | None = None
        self._state: MeshState | None = None
        self._state_callbacks: list[StateCallback] = []
        self._context_callbacks: list[ContextsCallback] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._trouble: str | None = None  # why renewals fail now (logged when it changes), None: fine
        self.lapsed: JoinTokenNeeded | None = None  # set when the certificate expired unrenewed

    def __repr__(self) -> str:
        spiffe_id = self.spiffe_id if self._certificate is not None else "(none yet)"
        return f"WorkloadIdentity({spiffe_id!r}, directory={str(self._directory)!r})"

    @classmethod
    def from_files(cls, cert: Path, key: Path, bundle: Path) -> WorkloadIdentity:
        """A static identity from files (tests, tools): no CA, no renewal, no state."""
        identity = cls("", cert.parent, follow_state=False)
        identity._files = (cert, key)
        identity._certificate = leaf_info(cert.read_bytes())
        identity._build_contexts(bundle.read_bytes())
        return identity

    @property
    def spiffe_id(self) -> str:
        """This workload's SPIFFE ID (``spiffe://<td>/svc/<service>``)."""
        found = self._current().spiffe_id
        assert found is not None  # checked when loaded
        return found

    @property
    def directory(self) -> Path:
        """Where the identity is saved: ``identity.pem`` (chain and key, 0600) and ``bundle.pem``."""
        return self._directory

    @property
    def trust_domain_id(self) -> str:
        """``spiffe://<trust domain>`` of this workload."""
        return "/".join(self.spiffe_id.split("/")[:3])

    @property
    def not_after(self) -> dt.datetime:
        """When the current certificate expires."""
        return self._current().not_after

    @property
    def state(self) -> MeshState | None:
        """The last state the CA published (None before the first answer)."""
        return self._state

    def server_context(self) -> ssl.SSLContext:
        """The server context: requires a client certificate verified against the bundle. A context
        handed out once keeps working: after a bundle change its new handshakes move to the current
        one (its SNI callback), so a listener need not be re-created."""
        assert self._server is not None, "start() first"
        return self._server

    def client_context(self) -> ssl.SSLContext:
        """The current client context (ask again for each new connection: a bundle change replaces
        it). It presents our certificate and verifies the server's chain; the caller checks the
        server's SPIFFE ID (``require_spiffe_id``, or use ``connect``)."""
        assert self._client is not None, "start() first"
        return self._client

    def on_state(self, callback: StateCallback) -> None:
        """Call ``callback`` with every new ``MeshState`` (and at once if one is known)."""
        self._state_callbacks.append(callback)
        if self._state is not None:
            callback(self._state)

    def on_contexts(self, callback: ContextsCallback) -> None:
        """Call ``callback(server, client)`` when the contexts are replaced (trust bundle change)."""
        self._context_callbacks.append(callback)

    async def start(self) -> None:
        """Load the saved certificate (renewing if past half-life) or join; then renew and follow
        the CA's state in the background. Raises ``JoinTokenNeeded`` without a usable certificate
        or token."""
        if self._ca is None:
            return
        if not self._load_saved():
            token = self._join_token or os.environ.get(JOIN_TOKEN_ENV)
            if not token:
                raise JoinTokenNeeded(
                    f"no valid certificate in {self._directory}: a new join token is needed "
                    f"(garrison ca join-token --service NAME), given as {JOIN_TOKEN_ENV}"
                )
            await self._join(token)
        self._tasks.append(asyncio.create_task(self._renewals(), name="workload-renewals"))
        if self._follow:
            self._tasks.append(asyncio.create_task(self._follow_state(), name="workload-state"))

    async def renew(self) -> None:
        """Renew now (the background task calls this at about half-life): a new key, a new
        certificate with the same SPIFFE ID, loaded into the live contexts."""
        assert self._ca is not None
        key, csr = await new_key_and_request()
        answer = await self._ca.request(
            "POST",
            "/v1/renew",
            self.client_context(),
            body={"csr": csr},
            expect_ca=self.trust_domain_id + "/ca",
        )
        if answer.status != 200:
            raise WorkloadError(f"the CA refused the renewal of {self.spiffe_id}: {answer.message()}")
        self._install(answer.json(), key)

    async def close(self) -> None:
        """Stop the background tasks. The contexts stay usable until the certificate expires."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    # -- joining and keeping the certificate ----------------------------------------------------

    def _current(self) -> CertificateInfo:
        assert self._certificate is not None, "start() first"
        return self._certificate

    def _load_saved(self) -> bool:
        identity_file, bundle_file = self._files[0], self._directory / "bundle.pem"
        if not identity_file.exists() or not bundle_file.exists():
            return False
        certificate = _workload_certificate(identity_file.read_bytes())
        if certificate.not_after <= self._clock():
            log.warn("workload.certificate_lapsed", directory=str(self._directory))
            return False
        self._certificate = certificate
        self._renew_fraction = 0.45 + 0.1 * self._jitter()
        self._build_contexts(bundle_file.read_bytes())
        return True

    async def _join(self, token: str) -> None:
        assert self._ca is not None
        bootstrap = self._bootstrap
        if bootstrap is None:
            raise WorkloadError("joining needs the CA's trust bundle (ca_bundle: state_dir/ca/bundle.pem)")
        roots = bootstrap.read_bytes() if isinstance(bootstrap, Path) else bootstrap
        context = ssl.create_default_context(cadata=roots.decode("ascii"))
        context.check_hostname = False  # the CA's SPIFFE ID is checked instead
        key, csr = await new_key_and_request()
        answer = await self._ca.request("POST", "/v1/join", context, body={"token": token, "csr": csr})
        if answer.status == 403:
            raise JoinTokenNeeded(f"the CA refused the join: {answer.message()}")
        if answer.status != 200:
            raise WorkloadError(f"the CA refused the join ({answer.status}): {answer.message()}")
        self._install(answer.json(), key)
        log.log("workload.joined", spiffe_id=self.spiffe_id)

    def _install(self, issued: dict[str, object], key_pem: bytes) -> None:
        """Save the new certificate with its key (one file, 0600, atomic), then load it into the
        live contexts; a new bundle builds new contexts instead."""
        chain, bundle = str(issued["certificate_chain"]).encode(), str(issued["trust_bundle"]).encode()
        try:
            certificate = _workload_certificate(chain)
        except ValueError as exc:
            raise WorkloadError(f"the CA answered an unusable certificate: {exc}") from None
        write_private(self._files[0], chain + key_pem)
        self._certificate = certificate
        self._renew_fraction = 0.45 + 0.1 * self._jitter()
        if self._server is None or self._client is None or bundle != self._bundle:
            self._build_contexts(bundle)
        else:
            self._server.load_cert_chain(*self._files)  # in place: new handshakes, new certificate
            self._client.load_cert_chain(*self._files)

    def _build_contexts(self, bundle: bytes) -> None:
        replaced = self._server is not None
        if self._ca is not None:
            write_private(self._directory / "bundle.pem", bundle)
        self._bundle = bundle
        self._server = server_context(self._files, bundle)
        self._server.sni_callback = self._to_current
        self._client = client_context(self._files, bundle)
        if replaced:
            for callback in self._context_callbacks:
                callback(self._server, self._client)

    def _to_current(
        self, connection: ssl.SSLObject | ssl.SSLSocket, name: str | None, context: ssl.SSLContext
    ) -> None:
        if self._server is not None and context is not self._server:
            connection.context = self._server

    async def _renewals(self) -> None:
        failures = 0
        while True:
            certificate = self._current()
            lifetime = certificate.not_after - certificate.not_before
            due = certificate.not_before + lifetime * self._renew_fraction
            delay = (due - self._clock()).total_seconds()
            if delay > 0 and not failures:  # while failing, the back-off decides when to try
                await self._sleep(delay)
                if self._current() is not certificate:
                    continue  # renewed meanwhile (renew() called directly)
            try:
                await self.renew()
            except (CaUnreachable, WorkloadError) as exc:
                remaining = (certificate.not_after - self._clock()).total_seconds()
                if remaining <= 0:
                    self.lapsed = JoinTokenNeeded(
                        f"the certificate of {self.spiffe_id} expired unrenewed ({exc}): "
                        "a new join token is needed"
                    )
                    log.error("workload.certificate_lapsed", spiffe_id=self.spiffe_id, message=str(exc))
                    return
                self._troubled("unreachable" if isinstance(exc, CaUnreachable) else "refused", exc)
                await self._sleep(self._retry_delay(failures, remaining))
                failures += 1
            else:
                failures = 0
                self._troubled(None, None)

    def _retry_delay(self, failures: int, remaining: float) -> float:
        """Capped exponential back-off with jitter (half to all of the step, so a fleet refused
        together spreads out), never longer than a tenth of what is left of the certificate."""
        step = min(RENEW_RETRY * 2.0**failures, RENEW_RETRY_MAX)
        return min(step * (0.5 + 0.5 * self._jitter()), max(remaining / 10, 0.1))

    def _troubled(self, trouble: str | None, exc: Exception | None) -> None:
        """Log renewals' trouble when it changes (refused, unreachable, over), not at every retry."""
        if trouble == self._trouble:
            return
        if trouble is None:
            log.log("workload.renewal_recovered", spiffe_id=self.spiffe_id, after=self._trouble)
        else:
            log.warn("workload.renewal_failed", spiffe_id=self.spiffe_id, trouble=trouble, message=str(exc))
        self._trouble = trouble

    async def _follow_state(self) -> None:
        assert self._ca is not None
        version = -1
        while True:
            try:
                answer = await self._ca.request(
                    "GET",
                    f"/v1/state?after={version}",
                    self.client_context(),
                    expect_ca=self.trust_domain_id + "/ca",
                    timeout=LONG_POLL_TIMEOUT,
                )
                if answer.status != 200:
                    raise CaUnreachable(answer.message())
                state = state_of(answer.json())
            except (CaUnreachable, ValueError, KeyError) as exc:
                log.warn("workload.state_unavailable", message=str(exc))
                await asyncio.sleep(STATE_RETRY)
                continue
            version = state.version
            self._apply_state(state)

    def _apply_state(self, state: MeshState) -> None:
        if state.trust_bundle and state.trust_bundle != self._bundle:
            self._build_contexts(state.trust_bundle)
        if state != self._state:
            self._state = state
            for callback in self._state_callbacks:
                callback(state)


def _workload_certificate(pem: bytes) -> CertificateInfo:
    certificate = leaf_info(pem)
    if certificate.spiffe_id is None:
        raise ValueError("the certificate is not an X.509-SVID (no single SPIFFE ID)")
    return certificate


async def new_key_and_request() -> tuple[bytes, str]:
    """A new private key and its CSR, both PEM, from ``python -m garrison.pki.keygen`` (see there
    why a child). Its environment lacks the join token: it needs nothing but the interpreter."""
    environment = {name: value for name, value in os.environ.items() if name != JOIN_TOKEN_ENV}
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "garrison.pki.keygen",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=environment,
    )
    try:
        async with asyncio.timeout(KEYGEN_TIMEOUT):
            out, err = await child.communicate()
    except TimeoutError:
        child.kill()
        await child.wait()
        raise WorkloadError(f"generating a key took over {KEYGEN_TIMEOUT:.0f} s") from None
    at = out.find(b"-----BEGIN CERTIFICATE REQUEST-----")
    if child.returncode != 0 or at <= 0:
        reason = err.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no output"]
        raise WorkloadError(
            f"could not generate a key (garrison.pki.keygen, exit {child.returncode}): {reason[0]}"
        )
    return out[:at], out[at:].decode("ascii")
