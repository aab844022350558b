"""``audit.responses``: what alerts may do, through the components' admin APIs.

A detection rule names its responses (``block_ip``, ``revoke_tokens``, ``quarantine_service``,
``lock_account``); this section says how each runs: for how long (``for``: every action but token
revocation expires), whether it only reports (``dry_run``), where the admin APIs are, and the bounds
that keep a burst of alerts from turning into a burst of admin calls (concurrency per action,
retries with back-off, a cap on actions in flight and on pending undos).

Where the admin APIs are: by default the ones this file describes (``gateway.admin.listen``,
``identity.admin.listen``, ``mesh.ca.admin.listen``, with https when that listener has ``tls``); a
listener on port 0 has no address to derive, so name it here (``gateways``, ``identity_admin``,
``ca_admin``). Several gateway replicas without a shared Redis blocklist each need their URL in
``gateways``; the workers of one gateway (``workers: N``) share one admin listener, which applies a
block to every worker, so one URL covers them.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from garrison.config.common import Cidr, Strict
from garrison.config.units import Duration

__all__ = ["MAX_RESPONSE_SECONDS", "ResponseActionConfig", "ResponsesConfig"]

MAX_RESPONSE_SECONDS = 24 * 3600.0  # the identity provider's own cap on a lockout; a day for every action

AdminUrl = Annotated[str, Field(pattern=r"^https?://[^/?#\s]+/?$")]


class ResponseActionConfig(Strict):
    """One action's settings."""

    enabled: bool = Field(
        True, description="Run this action when a rule names it (off: recorded as skipped)."
    )
    for_: Duration = Field(
        900.0,
        alias="for",
        gt=0,
        le=MAX_RESPONSE_SECONDS,
        description="How long the action lasts (at most 24h). Ignored by `revoke_tokens`: a revoked "
        "token family stays revoked.",
    )
    dry_run: bool = Field(False, description="Record what this action would do, and do nothing.")
    concurrency: int = Field(4, ge=1, le=64, description="Calls of this action running at once.")


class ResponsesConfig(Strict):
    """Automated responses, executed through the components' admin APIs (docs/audit.md, Responses)."""

    dry_run: bool = Field(False, description="Record what each response would do, and do nothing.")
    block_ip: ResponseActionConfig = Field(
        default_factory=ResponseActionConfig, description="Block the actor's IP at every gateway."
    )
    revoke_tokens: ResponseActionConfig = Field(
        default_factory=ResponseActionConfig,
        description="Revoke the actor's (user's, else client's) refresh-token families and their "
        "access tokens at the identity provider. Does not expire.",
    )
    quarantine_service: ResponseActionConfig = Field(
        default_factory=ResponseActionConfig,
        description="Quarantine the actor's service at the mesh CA; the collector lifts it at expiry.",
    )
    lock_account: ResponseActionConfig = Field(
        default_factory=ResponseActionConfig,
        description="Lock the actor's account (username) at the identity provider.",
    )
    never_block: list[Cidr] = Field(
        default_factory=list,
        description="Addresses `block_ip` never blocks (recorded as skipped): your own offices, "
        "monitoring, the proxies in front of the gateway. Loopback is not exempt by default (the "
        "demo's attacker is on loopback); blocking a loopback address is logged as a warning.",
    )
    gateways: list[AdminUrl] | None = Field(
        None,
        description="Admin URLs of every gateway (one per replica that does not share a Redis "
        "blocklist). Unset: this file's `gateway.admin.listen`.",
    )
    identity_admin: AdminUrl | None = Field(
        None, description="Admin URL of the identity provider. Unset: this file's `identity.admin.listen`."
    )
    ca_admin: AdminUrl | None = Field(
        None, description="Admin URL of the mesh CA. Unset: this file's `mesh.ca.admin.listen`."
    )
    attempts: int = Field(
        3, ge=1, le=10, description="Tries per admin call (network errors and 5xx answers are retried)."
    )
    backoff: Duration = Field(
        0.5, gt=0, le=60, description="Wait before the second try; doubled before each further one."
    )
    timeout: Duration = Field(5.0, gt=0, le=60, description="Longest wait for one admin call.")
    max_active: int = Field(
        256,
        ge=1,
        le=100_000,
        description="Actions scheduled or running at once; an alert's actions beyond it are recorded "
        "as failed (`busy`) and not run.",
    )
    max_pending_undos: int = Field(
        10_000,
        ge=1,
        le=1_000_000,
        description="Actions in force that the collector must undo at expiry (quarantines); a new "
        "one beyond it is not run (recorded as failed).",
    )
